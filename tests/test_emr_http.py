"""`p8 emr` against moto's AWS server over real HTTP: the README's sequence and what the server
holds after each command, then each way a real account tripped it (issue 16's cases 1-8)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from helpers import p8
from motoserver import REGION, MotoServer

from p8lib import emr, s3
from p8lib.featurize import WEIGHTS_FILE
from p8lib.packaged import BOOTSTRAP

ROLE_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:*"}
        ],
    }
)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "server.log")
    yield server
    server.stop()


@pytest.fixture()
def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """A fresh account on the server; this process's boto3 talks to it too — through a default
    session of its own: boto3 caches the credentials it resolves in its default session, and
    the other tests' S3 server takes other ones."""
    moto.reset()
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    return moto


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return emr.build_wheel(tmp_path_factory.mktemp("wheel"))


def _default_roles(moto: MotoServer) -> None:
    """What `aws emr create-default-roles` makes: two roles and the instances' profile."""
    iam = moto.client("iam")
    for role in ("EMR_DefaultRole", "EMR_EC2_DefaultRole"):
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=ROLE_POLICY)
    iam.create_instance_profile(InstanceProfileName="EMR_EC2_DefaultRole")
    iam.add_role_to_instance_profile(
        InstanceProfileName="EMR_EC2_DefaultRole", RoleName="EMR_EC2_DefaultRole"
    )


def _ready(moto: MotoServer, bucket: str, wheel: Path) -> None:
    _default_roles(moto)
    emr.package(bucket, emr.Aws(out=lambda _: None), wheel=wheel)


def _one_line_error(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p8: error: ") and "<" not in lines[0], lines
    return lines[0]


def test_the_readme_sequence_over_http(aws: MotoServer, tmp_path: Path) -> None:
    env, bucket = aws.env(), "fruits-readme"
    _default_roles(aws)
    # 1. package: the region comes from AWS_DEFAULT_REGION (no --region), the wheel is built.
    package = p8("emr", "package", "--bucket", bucket, env=env)
    assert package.returncode == 0, package.stderr
    s3c = aws.client("s3")
    assert s3c.get_bucket_location(Bucket=bucket)["LocationConstraint"] == REGION
    block = s3c.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ["BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"], True
    )
    rules = s3c.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    keys = [f"p8/{emr.wheel_name()}", "p8/bootstrap.sh", "p8/run_p8.py"]
    keys += ["jupyter/jovyan/P8_AWS.ipynb", "jupyter/jovyan/P8_local.ipynb"]
    for key in keys:
        assert s3c.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256", key
    body = s3c.get_object(Bucket=bucket, Key="p8/bootstrap.sh")["Body"].read()
    assert body == BOOTSTRAP.read_bytes()

    images = tmp_path / "Test" / "Apple 6"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(b"\xff\xd8 not really")
    upload = p8("upload", str(tmp_path / "Test"), f"s3://{bucket}/data/Test", env=env)
    assert upload.returncode == 0, upload.stderr

    up = p8("emr", "up", "--bucket", bucket, env=env)
    assert up.returncode == 0, up.stderr
    cluster_id = up.stdout.strip().removeprefix("export P8_CLUSTER_ID=")
    _assert_cluster_as_requested(
        aws, cluster_id, emr.cluster_request(emr.ClusterSpec(bucket=bucket))
    )

    args = ["run", "--images", f"s3://{bucket}/data/Test", "--output", f"s3://{bucket}/out"]
    submit = p8(
        "emr", "submit", "--cluster-id", cluster_id, "--bucket", bucket, "--", *args, env=env
    )
    assert submit.returncode == 0, submit.stderr
    (step,) = aws.client("emr").list_steps(ClusterId=cluster_id)["Steps"]
    command = step["Config"]["Args"]
    assert command[:2] == ["bash", "-c"] and shlex.split(command[2]) == [
        *["aws", "s3", "cp", f"s3://{bucket}/p8/run_p8.py", "/tmp/run_p8.py", "&&"],
        *["spark-submit", "--master", "yarn", "--deploy-mode", "client", "/tmp/run_p8.py"],
        *[args[0], "--master", "yarn", *args[1:]],
    ]
    status = p8("emr", "status", "--cluster-id", cluster_id, env=env)
    assert status.returncode == 0, status.stderr
    (live,) = aws.client("emr").list_steps(ClusterId=cluster_id)["Steps"]
    state = aws.client("emr").describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
    assert status.stdout.splitlines()[0] == f"{cluster_id} p8-fruits: {state}"
    assert f"step {live['Id']} p8 run: {live['Status']['State']}" in status.stdout

    down = p8("emr", "down", "--cluster-id", cluster_id, env=env)
    assert down.returncode == 0, down.stderr
    cluster = aws.client("emr").describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Status"]["State"] == "TERMINATED"


def _assert_cluster_as_requested(moto: MotoServer, cluster_id: str, request: dict) -> None:
    client = moto.client("emr")
    cluster = client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["ReleaseLabel"] == request["ReleaseLabel"]
    assert {a["Name"] for a in cluster["Applications"]} == {
        a["Name"] for a in request["Applications"]
    }
    classes = {c["Classification"] for c in cluster["Configurations"]}
    assert classes == {c["Classification"] for c in request["Configurations"]}
    assert cluster["LogUri"] == request["LogUri"]
    assert {(t["Key"], t["Value"]) for t in cluster["Tags"]} == {
        (t["Key"], t["Value"]) for t in request["Tags"]
    }
    (action,) = client.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]
    script = request["BootstrapActions"][0]["ScriptBootstrapAction"]
    assert (action["ScriptPath"], action["Args"]) == (script["Path"], script["Args"])
    attributes = cluster["Ec2InstanceAttributes"]
    assert "Ec2KeyName" not in attributes and not attributes["AdditionalMasterSecurityGroups"]
    assert attributes["IamInstanceProfile"] == request["JobFlowRole"]


def test_a_second_ssh_cluster_of_the_same_name_works_and_down_removes_each_group(
    aws: MotoServer, wheel: Path
) -> None:
    """Case 3. Also the fleets and auto-termination, which moto does not describe back."""
    _ready(aws, "fruits-ssh", wheel)
    ec2 = aws.client("ec2")
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    spec = emr.ClusterSpec(
        bucket="fruits-ssh", ssh_cidr="203.0.113.7/32", key_name="me", subnet=subnet
    )
    first, second = emr.Aws(), emr.Aws()
    ids = [emr.up(spec, first), emr.up(spec, second)]
    assert all(ids) and ids[0] != ids[1]
    sent = next(p for _, op, p in first.sent if op == "RunJobFlow")
    expected = emr.cluster_request(spec)
    assert sent["Instances"]["InstanceFleets"] == expected["Instances"]["InstanceFleets"]
    assert sent["AutoTerminationPolicy"] == expected["AutoTerminationPolicy"]

    def groups(cluster_id: str) -> list[dict]:
        tag = [{"Name": "tag:p8:cluster-id", "Values": [cluster_id]}]
        return ec2.describe_security_groups(Filters=tag)["SecurityGroups"]

    (group,) = groups(str(ids[0]))
    (rule,) = group["IpPermissions"]
    assert (rule["FromPort"], rule["ToPort"]) == (22, 22)
    assert [r["CidrIp"] for r in rule["IpRanges"]] == ["203.0.113.7/32"]
    master = aws.client("emr").describe_cluster(ClusterId=ids[0])["Cluster"]
    assert master["Ec2InstanceAttributes"]["AdditionalMasterSecurityGroups"] == [group["GroupId"]]

    said: list[str] = []
    emr.down(str(ids[0]), emr.Aws(), log=said.append)
    assert groups(str(ids[0])) == [] and len(groups(str(ids[1]))) == 1
    assert said and "security group" in said[0]
    emr.down(str(ids[1]), emr.Aws(), log=said.append)
    assert groups(str(ids[1])) == []


@pytest.mark.parametrize("bucket", ["Fruits_Moto", "fruits..moto", "192.168.5.4", "ab", "fruits-"])
def test_bucket_names_s3_refuses_are_refused_before_any_request(
    aws: MotoServer, bucket: str
) -> None:
    """Case 5: exit 2, one line, nothing created."""
    submit = ["submit", "--cluster-id", "j-1", "--bucket", bucket, "--", "run"]
    for command in (["package", "--bucket", bucket], ["up", "--bucket", bucket], submit):
        result = p8("emr", *command, env=aws.env())
        assert "--bucket" in _one_line_error(result, 2)
    assert aws.client("s3").list_buckets()["Buckets"] == []


def test_every_value_in_the_step_command_is_quoted(aws: MotoServer, wheel: Path) -> None:
    """Case 5: a path with spaces and shell syntax reaches p8 as one argument, runs nothing."""
    _ready(aws, "fruits-quote", wheel)
    aws.client("s3").put_object(Bucket="fruits-quote", Key="in put/a.jpg", Body=b"x")
    cluster_id = str(emr.up(emr.ClusterSpec(bucket="fruits-quote"), emr.Aws()))
    odd = "s3://fruits-quote/out put; touch /tmp/p8-pwned $(id)"
    args = ["run", "--images", "s3://fruits-quote/in put", "--output", odd]
    emr.submit(cluster_id, "fruits-quote", args, emr.Aws())
    (step,) = aws.client("emr").list_steps(ClusterId=cluster_id)["Steps"]
    tokens = shlex.split(step["Config"]["Args"][2])
    assert tokens[tokens.index("--output") + 1] == odd
    assert tokens[tokens.index("--images") + 1] == "s3://fruits-quote/in put"


def test_a_bucket_these_credentials_cannot_use_is_explained(tmp_path: Path) -> None:
    """Case 6: 403 on HeadBucket (wrong credentials here; another account's bucket alike)."""
    server = MotoServer(tmp_path / "auth.log", auth=True)
    try:
        result = p8("emr", "package", "--bucket", "fruits-theirs", env=server.env())
    finally:
        server.stop()
    line = _one_line_error(result, 1)
    assert "exists but these credentials cannot use it (403)" in line and "--bucket" in line


@pytest.mark.parametrize("command", ["down", "status", "submit"])
def test_an_unknown_cluster_is_one_clear_line(aws: MotoServer, command: str) -> None:
    """Case 6: no HTML page, the id and the region named."""
    extra = ["--bucket", "fruits-x", "--", "run", "--images", "s3://fruits-x/in"]
    args = ["emr", command, "--cluster-id", "j-NOPE", *(extra if command == "submit" else [])]
    line = _one_line_error(p8(*args, env=aws.env()), 1)
    assert f"no cluster j-NOPE in {REGION}" in line


def test_up_refuses_a_bucket_never_packaged_and_missing_roles(aws: MotoServer, wheel: Path) -> None:
    """Case 7: nothing starts billing when bootstrap would fail."""
    aws.client("s3").create_bucket(
        Bucket="fruits-empty", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    _default_roles(aws)
    line = _one_line_error(p8("emr", "up", "--bucket", "fruits-empty", env=aws.env()), 1)
    assert f"s3://fruits-empty/p8/{emr.wheel_name()} not found" in line
    assert "p8 emr package --bucket fruits-empty" in line

    aws.reset()
    emr.package("fruits-noroles", emr.Aws(out=lambda _: None), wheel=wheel)
    line = _one_line_error(p8("emr", "up", "--bucket", "fruits-noroles", env=aws.env()), 1)
    assert "EMR_DefaultRole not found" in line and "aws emr create-default-roles" in line
    assert aws.client("emr").list_clusters()["Clusters"] == []


def test_submit_needs_a_live_cluster_and_images_to_read(aws: MotoServer, wheel: Path) -> None:
    """Case 7: a terminated cluster, an empty --images prefix: exit 1 before the step."""
    _ready(aws, "fruits-submit", wheel)
    cluster_id = str(emr.up(emr.ClusterSpec(bucket="fruits-submit"), emr.Aws()))
    base = ["emr", "submit", "--cluster-id", cluster_id, "--bucket", "fruits-submit", "--"]
    run = ["run", "--images", "s3://fruits-submit/data/Test", "--output", "s3://fruits-submit/o"]
    line = _one_line_error(p8(*base, *run, env=aws.env()), 1)
    assert "s3://fruits-submit/data/Test holds nothing" in line
    joined = ["run", "--images=s3://fruits-submit/data/Test", "--output=s3://fruits-submit/o"]
    line = _one_line_error(p8(*base, *joined, env=aws.env()), 1)
    assert "s3://fruits-submit/data/Test holds nothing" in line
    aws.client("emr").terminate_job_flows(JobFlowIds=[cluster_id])
    line = _one_line_error(p8(*base, *run, env=aws.env()), 1)
    assert f"cluster {cluster_id} is TERMINATED" in line
    assert aws.client("emr").list_steps(ClusterId=cluster_id)["Steps"] == []


def test_weights_must_carry_the_name_keras_looks_for(aws: MotoServer) -> None:
    """Case 8: a differently named upload would be copied and never used."""
    for weights in ("s3://fruits-w/models/w.h5", f"/local/{WEIGHTS_FILE}"):
        result = p8("emr", "up", "--bucket", "fruits-w", "--weights", weights, env=aws.env())
        assert WEIGHTS_FILE in _one_line_error(result, 2)
    good = f"s3://fruits-w/models/{WEIGHTS_FILE}"
    request = emr.cluster_request(emr.ClusterSpec(bucket="fruits-w", weights=good))
    assert request["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"][-2:] == [
        "--weights",
        good,
    ]


def test_one_region_rule_for_every_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Case 2: botocore's rule (AWS_DEFAULT_REGION, else the profile) everywhere; AWS_REGION,
    which botocore 1.35 does not read, is not read by p8 either."""
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # see the `aws` fixture
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    assert s3.client().meta.region_name == "eu-west-3"
    assert emr.Aws().region_name() == "eu-west-3"
    assert emr.Aws(region="ap-south-1").region_name() == "ap-south-1"
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_DEFAULT_REGION", "AWS_PROFILE")}
    env.update(AWS_REGION="eu-west-3", AWS_CONFIG_FILE="/nonexistent")
    result = subprocess.run(
        [sys.executable, "-m", "p8lib.cli", "emr", "status", "--cluster-id", "j-1"],
        env=env,
        capture_output=True,
        text=True,
    )
    line = _one_line_error(result, 1)
    assert "AWS_DEFAULT_REGION" in line and "AWS_REGION " not in line
    assert "AWS_DEFAULT_REGION" in p8("emr", "up", "--help").stdout

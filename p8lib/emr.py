"""Amazon EMR through boto3: package, up, submit, status, down, cost.

Every request is validated against botocore's own service model before it is sent; with
``dry_run`` it is printed instead (as JSON, exactly as it would be sent) and nothing reaches AWS.
The cluster request starts from ``emr_config/cluster.json``; options override its fields.
"""

from __future__ import annotations

import ipaddress
import json
import math
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p8lib import __version__
from p8lib.aws import Aws, check_bucket_name, error_code
from p8lib.aws import validate as validate  # re-exported: emr.validate
from p8lib.errors import P8Error, UsageError
from p8lib.featurize import WEIGHTS_FILE
from p8lib.packaged import BOOTSTRAP, CHECKOUT, CLUSTER_JSON, NOTEBOOKS

PREFIX = "p8"
# The PySpark kernel's notebooks persist here (jupyter-s3-conf); JupyterHub's default user.
JUPYTER_PREFIX = "jupyter/jovyan"
ENTRY = "run_p8.py"
ENTRY_SOURCE = b"import sys\n\nfrom p8lib.cli import main\n\nsys.exit(main())\n"


def wheel_name(version: str = __version__) -> str:
    """The file name pip gives the p8lib wheel."""
    return f"p8lib-{version}-py3-none-any.whl"


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """The knobs of ``p8 emr up``; None keeps what cluster.json says."""

    bucket: str
    name: str | None = None
    release: str | None = None
    master_type: str | None = None
    core_types: tuple[str, ...] | None = None
    core_count: int | None = None
    task_types: tuple[str, ...] | None = None
    task_count: int = 0
    on_demand: bool = False
    idle_timeout_minutes: int | None = None
    subnet: str | None = None
    key_name: str | None = None
    ssh_cidr: str | None = None
    weights: str | None = None

    def __post_init__(self) -> None:
        check_bucket_name(self.bucket)
        for name in ("core_count", "idle_timeout_minutes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.task_count < 0:
            raise UsageError(f"--task-count must be 0 or more, got {self.task_count}")
        if self.ssh_cidr is not None:
            try:
                network = ipaddress.ip_network(self.ssh_cidr, strict=False)
            except ValueError:
                raise UsageError(f"--ssh-cidr is not a CIDR block: {self.ssh_cidr!r}") from None
            if network.prefixlen < (24 if network.version == 4 else 64):
                raise UsageError(
                    f"refusing to open SSH to {self.ssh_cidr}: give your own address "
                    "(e.g. 203.0.113.7/32), or leave SSH closed and use SSM Session Manager"
                )
            if not (self.key_name and self.subnet):
                raise UsageError("--ssh-cidr needs --key-name and --subnet")
        if self.weights is not None and (
            not self.weights.startswith("s3://") or not self.weights.endswith(f"/{WEIGHTS_FILE}")
        ):
            # bootstrap.sh copies it into Keras's cache as it is named: another name is ignored.
            raise UsageError(
                f"--weights must be an s3:// URI of a file named {WEIGHTS_FILE} (the name Keras "
                f"looks for in its cache), got {self.weights!r}"
            )


def _fleet(name: str, kind: str, types: Sequence[str], count: int, spot: bool) -> dict[str, Any]:
    fleet: dict[str, Any] = {
        "Name": name,
        "InstanceFleetType": kind,
        "InstanceTypeConfigs": [
            {"InstanceType": t, "WeightedCapacity": 1}
            | ({"BidPriceAsPercentageOfOnDemandPrice": 100} if spot else {})
            for t in types
        ],
    }
    if spot:
        fleet["TargetSpotCapacity"] = count
        fleet["LaunchSpecifications"] = {
            "SpotSpecification": {
                "TimeoutDurationMinutes": 20,
                "TimeoutAction": "SWITCH_TO_ON_DEMAND",
                "AllocationStrategy": "price-capacity-optimized",
            }
        }
    else:
        fleet["TargetOnDemandCapacity"] = count
    return fleet


def cluster_request(spec: ClusterSpec, *, config: Path = CLUSTER_JSON) -> dict[str, Any]:
    """The RunJobFlow request: cluster.json with ``${bucket}``/``${wheel}`` filled, overridden."""
    if not config.is_file():
        raise UsageError(f"cluster configuration not found: {config}")
    text = config.read_text().replace("${bucket}", spec.bucket).replace("${wheel}", wheel_name())
    request: dict[str, Any] = json.loads(text)
    if spec.name:
        request["Name"] = spec.name
    if spec.release:
        request["ReleaseLabel"] = spec.release
    if spec.idle_timeout_minutes:
        request["AutoTerminationPolicy"] = {"IdleTimeout": 60 * spec.idle_timeout_minutes}
    fleets = {f["InstanceFleetType"]: f for f in request["Instances"]["InstanceFleets"]}
    if spec.master_type:
        fleets["MASTER"]["InstanceTypeConfigs"] = [{"InstanceType": spec.master_type}]
    core = fleets["CORE"]
    core_types = spec.core_types or tuple(c["InstanceType"] for c in core["InstanceTypeConfigs"])
    core_count = spec.core_count or core.get("TargetSpotCapacity") or core["TargetOnDemandCapacity"]
    if spec.core_types or spec.core_count or spec.on_demand:
        fleets["CORE"] = _fleet("core", "CORE", core_types, core_count, not spec.on_demand)
    fleets.pop("TASK", None)
    if spec.task_count:
        task_types = spec.task_types or core_types
        fleets["TASK"] = _fleet("task", "TASK", task_types, spec.task_count, not spec.on_demand)
    request["Instances"]["InstanceFleets"] = [
        fleets[k] for k in ("MASTER", "CORE", "TASK") if k in fleets
    ]
    if spec.subnet:
        request["Instances"]["Ec2SubnetIds"] = [spec.subnet]
    if spec.key_name:
        request["Instances"]["Ec2KeyName"] = spec.key_name
    if spec.weights:
        for action in request.get("BootstrapActions", []):
            if action["ScriptBootstrapAction"]["Path"].endswith("/bootstrap.sh"):
                action["ScriptBootstrapAction"]["Args"] += ["--weights", spec.weights]
    return request


def up(spec: ClusterSpec, aws: Aws, *, config: Path = CLUSTER_JSON) -> str | None:
    """Create the cluster; its id (None in a dry run).

    First checks what the cluster will need: the wheel and bootstrap.sh in the bucket, the
    roles it runs as. SSH stays closed (use SSM Session Manager) unless ``ssh_cidr`` is given:
    then a security group admitting port 22 from that block only is made in the subnet's VPC,
    added to the master and tagged with the cluster id, so `p8 emr down` deletes it.
    """
    request = cluster_request(spec, config=config)
    _check_packaged(spec.bucket, aws)
    _check_roles(request, aws)
    group_id = _ssh_group(spec, request, aws) if spec.ssh_cidr else None
    if group_id:
        request["Instances"]["AdditionalMasterSecurityGroups"] = [group_id]
    response = aws.call("emr", "RunJobFlow", request)
    cluster_id = response["JobFlowId"] if response else None
    if group_id and cluster_id:
        tags = [{"Key": SSH_GROUP_TAG, "Value": cluster_id}]
        aws.call("ec2", "CreateTags", {"Resources": [group_id], "Tags": tags})
    return cluster_id


# The tag that ties an SSH security group to the cluster it was made for.
SSH_GROUP_TAG = "p8:cluster-id"


def _check_packaged(bucket: str, aws: Aws) -> None:
    """The wheel and bootstrap.sh the cluster installs are in the bucket (else exit 1)."""
    for key in (f"{PREFIX}/{wheel_name()}", f"{PREFIX}/bootstrap.sh"):
        try:
            aws.call("s3", "HeadObject", {"Bucket": bucket, "Key": key})
        except P8Error as exc:
            if error_code(exc) not in ("404", "NoSuchKey", "NoSuchBucket"):
                raise
            raise P8Error(
                f"s3://{bucket}/{key} not found: run `p8 emr package --bucket {bucket}` first "
                "(every node installs it at start)"
            ) from None


def _check_roles(request: dict[str, Any], aws: Aws) -> None:
    """The service role and the instance profile the request names exist (else exit 1)."""
    checks = [
        ("GetRole", {"RoleName": request["ServiceRole"]}),
        ("GetInstanceProfile", {"InstanceProfileName": request["JobFlowRole"]}),
    ]
    for operation, params in checks:
        try:
            aws.call("iam", operation, params)
        except P8Error as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
            name = next(iter(params.values()))
            raise P8Error(
                f"IAM {name} not found: create EMR's default roles once with "
                "`aws emr create-default-roles`"
            ) from None


def _ssh_group(spec: ClusterSpec, request: dict[str, Any], aws: Aws) -> str:
    """A new security group admitting SSH from ``spec.ssh_cidr`` only; its id."""
    subnets = aws.call("ec2", "DescribeSubnets", {"SubnetIds": [spec.subnet]})
    vpc = subnets["Subnets"][0]["VpcId"] if subnets else "vpc-FROM-DescribeSubnets"
    group = aws.call(
        "ec2",
        "CreateSecurityGroup",
        {
            # Unique: a second cluster of the same name gets its own group.
            "GroupName": f"{request['Name']}-ssh-{uuid.uuid4().hex[:8]}",
            "Description": f"SSH to the p8 EMR master from {spec.ssh_cidr} only",
            "VpcId": vpc,
        },
    )
    group_id = group["GroupId"] if group else "sg-FROM-CreateSecurityGroup"
    network = ipaddress.ip_network(str(spec.ssh_cidr), strict=False)
    ranges = (
        {"IpRanges": [{"CidrIp": str(network), "Description": "p8 ssh"}]}
        if network.version == 4
        else {"Ipv6Ranges": [{"CidrIpv6": str(network), "Description": "p8 ssh"}]}
    )
    aws.call(
        "ec2",
        "AuthorizeSecurityGroupIngress",
        {
            "GroupId": group_id,
            "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, **ranges}],
        },
    )
    return str(group_id)


_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".cache",
    "results",
    "images",
    "spark-warehouse",
    "metastore_db",
)


def build_wheel(dest: Path) -> Path:
    """``pip wheel`` of this checkout (no dependencies) into ``dest``, built from a copy in a
    temporary folder: the tree gets no ``build/`` or ``*.egg-info``, and a module deleted from it
    is not shipped from an earlier build."""
    if CHECKOUT is None:
        raise UsageError(
            "p8lib is installed from a wheel, not a source checkout: pass that wheel with "
            "`p8 emr package --wheel FILE.whl`, or run it from a checkout"
        )
    with tempfile.TemporaryDirectory(prefix="p8-wheel-") as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(CHECKOUT, source, symlinks=True, ignore=_NOT_SOURCE)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(dest),
            str(source),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise P8Error(f"building the wheel failed: {result.stderr.strip().splitlines()[-1:]}")
    wheels = sorted(dest.glob("p8lib-*.whl"))
    if not wheels:
        raise P8Error(f"pip built no p8lib wheel in {dest}")
    return wheels[-1]


def package(bucket: str, aws: Aws, *, wheel: Path | None = None) -> list[str]:
    """Make the bucket private and encrypted, then upload the wheel, bootstrap.sh, the entry
    script and the notebooks. Returns the s3:// URIs written."""
    check_bucket_name(bucket)
    if wheel is not None and not wheel.is_file():
        raise UsageError(f"--wheel {wheel}: no such file")
    if wheel is not None and wheel.name != wheel_name():
        raise UsageError(
            f"--wheel {wheel} is not {wheel_name()}, this p8lib's wheel "
            "(`up` and bootstrap.sh install the one of this version)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None and not aws.dry_run:
            wheel = build_wheel(Path(tmp))
        files: list[tuple[str, bytes | Path]] = [
            (f"{PREFIX}/{wheel_name()}", wheel or Path(wheel_name())),
            (f"{PREFIX}/bootstrap.sh", BOOTSTRAP),
            (f"{PREFIX}/{ENTRY}", ENTRY_SOURCE),
        ]
        files += [(f"{JUPYTER_PREFIX}/{nb.name}", nb) for nb in sorted(NOTEBOOKS.glob("*.ipynb"))]
        _private_bucket(bucket, aws)
        written = []
        for key, source in files:
            body = source if isinstance(source, bytes) else _read(source, aws.dry_run)
            origin = ENTRY if isinstance(source, bytes) else source
            params = {"Bucket": bucket, "Key": key, "Body": body, "ServerSideEncryption": "AES256"}
            aws.call(
                "s3",
                "PutObject",
                params,
                shown={**params, "Body": f"<{len(body)} bytes of {origin}>"},
            )
            written.append(f"s3://{bucket}/{key}")
    return written


def _read(path: Path, dry_run: bool) -> bytes:
    if path.is_file():
        return path.read_bytes()
    if dry_run:
        return b""
    raise UsageError(f"not found: {path}")


def _private_bucket(bucket: str, aws: Aws) -> None:
    """Create the bucket when missing; block public access and encrypt by default (idempotent)."""
    try:
        aws.call("s3", "HeadBucket", {"Bucket": bucket})
    except P8Error as exc:
        code = error_code(exc)
        if code in ("403", "AccessDenied", "Forbidden"):
            raise P8Error(
                f"bucket {bucket} exists but these credentials cannot use it (403): another "
                "account owns that name, or your credentials lack access; choose another --bucket"
            ) from None
        if code not in ("404", "NoSuchBucket"):
            raise
        params: dict[str, Any] = {"Bucket": bucket}
        region = aws.region_name()
        if region and region != "us-east-1":  # the client's own region, wherever it came from
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        aws.call("s3", "CreateBucket", params)
    block = dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
    )
    aws.call(
        "s3",
        "PutPublicAccessBlock",
        {"Bucket": bucket, "PublicAccessBlockConfiguration": block},
    )
    aws.call(
        "s3",
        "PutBucketEncryption",
        {
            "Bucket": bucket,
            "ServerSideEncryptionConfiguration": {
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        },
    )


def step_request(cluster_id: str, bucket: str, args: Sequence[str]) -> dict[str, Any]:
    """AddJobFlowSteps for ``p8 ARGS`` under spark-submit on YARN (client mode, on the master).

    Every value in the step's shell command is quoted; ``args`` may start with ``p8``.
    """
    args = list(args[1:] if args and args[0] == "p8" else args)
    if args and args[0] not in ("run", "train"):
        raise UsageError(
            f"a step runs `p8 run` or `p8 train`, not {args[0]!r}: -- run --images s3://..."
        )
    if not args:
        raise UsageError(
            "give the p8 command to run after --, e.g. -- run --images s3://... --output s3://..."
        )
    check_bucket_name(bucket)
    if _option(args, "--master") is None:
        args[1:1] = ["--master", "yarn"]
    entry = f"/tmp/{ENTRY}"
    script = (
        f"aws s3 cp {shlex.quote(f's3://{bucket}/{PREFIX}/{ENTRY}')} {entry} && "
        f"spark-submit --master yarn --deploy-mode client {entry} {shlex.join(args)}"
    )
    return {
        "JobFlowId": cluster_id,
        "Steps": [
            {
                "Name": f"p8 {args[0]}",
                "ActionOnFailure": "CONTINUE",
                "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["bash", "-c", script]},
            }
        ],
    }


def _option(args: Sequence[str], name: str) -> str | None:
    """The value given to ``name`` in ``args`` (``--name VALUE`` or ``--name=VALUE``; the last
    one, as argparse reads it), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"{name}="):
            value = arg[len(name) + 1 :]
    return value


def _cluster(cluster_id: str, aws: Aws) -> dict[str, Any] | None:
    """DescribeCluster's ``Cluster`` (None in a dry run); an unknown id is one line, exit 1."""
    try:
        response = aws.call("emr", "DescribeCluster", {"ClusterId": cluster_id})
    except P8Error as exc:
        if error_code(exc) != "InvalidRequestException":
            raise
        where = aws.region_name() or "the default region"
        raise P8Error(
            f"no cluster {cluster_id} in {where}: check --cluster-id (`p8 emr up` printed it) "
            "and --region"
        ) from None
    return response["Cluster"] if response else None


def submit(cluster_id: str, bucket: str, args: Sequence[str], aws: Aws) -> str | None:
    """Add the step; its id (None in a dry run). The cluster must be WAITING or RUNNING and an
    s3:// ``--images`` must hold something."""
    request = step_request(cluster_id, bucket, args)
    cluster = _cluster(cluster_id, aws)
    if cluster is not None and cluster["Status"]["State"] not in ("WAITING", "RUNNING"):
        raise P8Error(
            f"cluster {cluster_id} is {cluster['Status']['State']}: steps run on a WAITING or "
            "RUNNING cluster"
        )
    images = _option(args, "--images")
    if images and images.startswith(("s3://", "s3a://")) and not aws.dry_run:
        from p8lib.s3 import S3Location

        where = S3Location.parse(images)
        prefix = f"{where.prefix}/" if where.prefix else ""  # a bucket root: any key
        params = {"Bucket": where.bucket, "Prefix": prefix, "MaxKeys": 1}
        if not aws.call("s3", "ListObjectsV2", params).get("KeyCount"):
            raise P8Error(f"--images {images} holds nothing: upload the images first")
    response = aws.call("emr", "AddJobFlowSteps", request)
    return response["StepIds"][0] if response else None


def status(cluster_id: str, aws: Aws) -> list[str]:
    """The cluster's state and its steps' states, one line each."""
    info = _cluster(cluster_id, aws)
    steps = aws.call("emr", "ListSteps", {"ClusterId": cluster_id})
    if info is None:
        return []
    state = info["Status"]["State"]
    reason = info["Status"].get("StateChangeReason", {}).get("Message")
    lines = [f"{cluster_id} {info.get('Name', '')}: {state}" + (f" ({reason})" if reason else "")]
    if info.get("MasterPublicDnsName"):
        lines.append(f"master: {info['MasterPublicDnsName']}")
    for step in (steps or {}).get("Steps", []):
        lines.append(f"step {step['Id']} {step['Name']}: {step['Status']['State']}")
    return lines


def down(cluster_id: str, aws: Aws, *, log: Callable[[str], None] = print) -> None:
    """Terminate the cluster; once it is terminated, delete the SSH security group `up` made
    for it (a group cannot go while instances still use it)."""
    _cluster(cluster_id, aws)
    aws.call("emr", "TerminateJobFlows", {"JobFlowIds": [cluster_id]})
    filters = [{"Name": f"tag:{SSH_GROUP_TAG}", "Values": [cluster_id]}]
    groups = aws.call("ec2", "DescribeSecurityGroups", {"Filters": filters})
    group_ids = [g["GroupId"] for g in (groups or {}).get("SecurityGroups", [])]
    if group_ids and not aws.dry_run:
        log(f"waiting for {cluster_id} to terminate, then deleting its SSH security group")
        aws.client("emr").get_waiter("cluster_terminated").wait(ClusterId=cluster_id)
    for group_id in group_ids:
        aws.call("ec2", "DeleteSecurityGroup", {"GroupId": group_id})


# On-demand Linux prices in us-east-1 (USD per hour): EC2 instance, and the EMR charge on top.
# From the AWS EC2 and EMR pricing pages as of 2024-06; check them before budgeting.
PRICES_REGION = "us-east-1"
PRICES_DATE = "2024-06"
# Instance type: (vCPUs, EC2 $/h, EMR $/h).
PRICES: dict[str, tuple[int, float, float]] = {
    "m5.xlarge": (4, 0.192, 0.048),
    "m5.2xlarge": (8, 0.384, 0.096),
    "m5.4xlarge": (16, 0.768, 0.192),
    "m5a.xlarge": (4, 0.172, 0.043),
    "m6i.xlarge": (4, 0.192, 0.048),
    "m6i.2xlarge": (8, 0.384, 0.096),
    "c5.2xlarge": (8, 0.340, 0.085),
    "c6i.2xlarge": (8, 0.340, 0.085),
    "r5.xlarge": (4, 0.252, 0.063),
}
# Spot EC2 price as a share of on-demand: an assumption (it moves with the market); the EMR
# charge is the same on spot.
SPOT_SHARE = 0.35
# Cluster start (provisioning + bootstrap) billed before the first image is read, in hours.
STARTUP_HOURS = 0.2
# Images per second per worker vCPU: with OpenVINO fp32, 23,619 Test images took 138.7-144.2 s
# end to end on 2 cores here (83/s per core); an m5 vCPU is a hyperthread, so 69 is assumed (the
# same discount as before: 48/s per core with Keras gave 40). Measure a run before budgeting.
RATE_PER_VCPU = 69.0


# On an EMR node: the cluster's instance groups (EMR writes this file on every node).
JOB_FLOW_INFO = Path("/mnt/var/lib/info/job-flow.json")


def this_cluster(info: Path = JOB_FLOW_INFO) -> dict[str, Any] | None:
    """The running cluster's shape for :func:`cost` (core/task type and count, spot), read from
    EMR's ``job-flow.json``; None when it can't be read or a type has no price here."""
    try:
        data = json.loads(info.read_text())
        groups = data.get("instanceGroups") or []
        workers = [g for g in groups if str(g.get("instanceRole", "")).upper() in ("CORE", "TASK")]
        if workers:
            kind = workers[0]["instanceType"]
            count = sum(int(g.get("requestedInstanceCount", 0)) for g in workers)
            spot = any(str(g.get("marketType", "")).upper() == "SPOT" for g in workers)
        else:
            kind, count, spot = data["slaveInstanceType"], int(data["instanceCount"]) - 1, False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    master = data.get("masterInstanceType")
    if kind not in PRICES or count < 1:
        return None
    shape = {"core_type": kind, "core_count": count, "spot": spot}
    return shape | ({"master_type": master} if master in PRICES else {})


@dataclass(frozen=True)
class Cost:
    """An estimate: hours billed and dollars, with the lines that make it up."""

    hours: float
    dollars: float
    lines: list[str]


def cost(
    *,
    master_type: str = "m5.xlarge",
    core_type: str = "m5.xlarge",
    core_count: int = 2,
    task_count: int = 0,
    spot: bool = True,
    hours: float | None = None,
    images: int | None = None,
    rate_per_vcpu: float = RATE_PER_VCPU,
) -> Cost:
    """Estimated cost of a run, from ``hours`` or from ``images`` at ``rate_per_vcpu``.

    Examples
    --------
    >>> round(cost(hours=1.0, spot=False).dollars, 3)  # 3 × (0.192 + 0.048)
    0.72
    """
    for kind in (master_type, core_type):
        if kind not in PRICES:
            raise UsageError(f"no price for {kind}: known types are {', '.join(PRICES)}")
    if (hours is None) == (images is None):
        raise UsageError("give either --hours or --images")
    if hours is not None and not 0 < hours < math.inf:
        raise UsageError(f"--hours must be a positive number, got {hours}")
    if images is not None and images < 1:
        raise UsageError(f"--images must be at least 1, got {images}")
    for name, count in (("--core-count", core_count), ("--task-count", task_count)):
        if count < 0:
            raise UsageError(f"{name} must be 0 or more, got {count}")
    workers = core_count + task_count
    if workers < 1:
        raise UsageError("a cluster needs at least one core or task instance")
    vcpus = PRICES[core_type][0] * workers
    if hours is None:
        assert images is not None
        hours = STARTUP_HOURS + images / (rate_per_vcpu * vcpus) / 3600
    share = SPOT_SHARE if spot else 1.0
    _, m_ec2, m_emr = PRICES[master_type]
    _, w_ec2, w_emr = PRICES[core_type]
    master = (m_ec2 + m_emr) * hours
    worker = (w_ec2 * share + w_emr) * hours * workers
    lines = [
        f"prices: {PRICES_REGION}, {PRICES_DATE} (EC2 + EMR per hour; spot = "
        f"{SPOT_SHARE:.0%} of on-demand EC2, assumed)",
        f"master  1 × {master_type} on demand: ${master:.2f}",
        f"workers {workers} × {core_type} {'spot' if spot else 'on demand'}: ${worker:.2f}",
        f"{hours:.2f} h" + (f" for {images} images ({vcpus} worker vCPUs)" if images else ""),
        f"total ${master + worker:.2f}",
    ]
    return Cost(hours=hours, dollars=master + worker, lines=lines)

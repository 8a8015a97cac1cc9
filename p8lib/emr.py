"""Amazon EMR through boto3: package, up, submit, status, down, cost.

Every request is validated against botocore's own service model before it is sent; with
``dry_run`` it is printed instead (as JSON, exactly as it would be sent) and nothing reaches AWS.
The cluster request starts from ``emr_config/cluster.json``; options override its fields.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p8lib import __version__
from p8lib.errors import P8Error, UsageError
from p8lib.packaged import BOOTSTRAP, CHECKOUT, CLUSTER_JSON, NOTEBOOKS

PREFIX = "p8"
# The PySpark kernel's notebooks persist here (jupyter-s3-conf); JupyterHub's default user.
JUPYTER_PREFIX = "jupyter/jovyan"
ENTRY = "run_p8.py"
ENTRY_SOURCE = b"import sys\n\nfrom p8lib.cli import main\n\nsys.exit(main())\n"


def wheel_name(version: str = __version__) -> str:
    """The file name pip gives the p8lib wheel."""
    return f"p8lib-{version}-py3-none-any.whl"


def validate(service: str, operation: str, params: dict[str, Any]) -> None:
    """Raise UsageError unless ``params`` is a valid ``operation`` request for ``service``.

    Uses botocore's parameter validator and the service model shipped with botocore: offline.
    """
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model(service)
    operation_model = model.operation_model(operation)
    report = ParamValidator().validate(params, operation_model.input_shape)
    if report.has_errors():
        raise UsageError(f"invalid {service} {operation} request: {report.generate_report()}")


@dataclass
class Aws:
    """Validates, then sends (or, with ``dry_run``, prints) AWS API requests.

    ``clients`` may hold ready boto3 clients by service name (tests pass stubbed ones).
    """

    region: str | None = None
    dry_run: bool = False
    clients: dict[str, Any] = field(default_factory=dict)
    out: Callable[[str], None] = print
    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def client(self, service: str) -> Any:
        if service not in self.clients:
            import boto3

            self.clients[service] = boto3.client(service, region_name=self.region)
        return self.clients[service]

    def call(
        self, service: str, operation: str, params: dict[str, Any], *, shown: Any = None
    ) -> Any:
        """``operation`` (API name, e.g. ``RunJobFlow``) with ``params``; the response or None."""
        validate(service, operation, params)
        self.sent.append((service, operation, params))
        if self.dry_run:
            request = {"service": service, "operation": operation, "params": shown or params}
            self.out(json.dumps(request, indent=2, default=str))
            return None
        method = "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")
        try:
            return getattr(self.client(service), method)(**params)
        except Exception as exc:
            raise P8Error(_explain(exc, service, operation)) from None


def _explain(exc: Exception, service: str, operation: str) -> str:
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError

    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials: run `aws configure` or set AWS_PROFILE / AWS_ACCESS_KEY_ID"
    if isinstance(exc, NoRegionError):
        return "no AWS region: pass --region or set AWS_REGION"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{service} {operation}: {error.get('Code')}: {error.get('Message')}"
    return f"{service} {operation}: {type(exc).__name__}: {exc}"


def _check_bucket_name(bucket: str) -> None:
    if not bucket or "/" in bucket or bucket.startswith("s3:"):
        raise UsageError(f"--bucket takes a bucket name (no s3://, no /), got {bucket!r}")


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
        _check_bucket_name(self.bucket)
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

    SSH stays closed (use SSM Session Manager) unless ``ssh_cidr`` is given: then a security
    group admitting port 22 from that block only is created in the subnet's VPC and added to
    the master.
    """
    request = cluster_request(spec, config=config)
    if spec.ssh_cidr:
        subnets = aws.call("ec2", "DescribeSubnets", {"SubnetIds": [spec.subnet]})
        vpc = subnets["Subnets"][0]["VpcId"] if subnets else "vpc-FROM-DescribeSubnets"
        group = aws.call(
            "ec2",
            "CreateSecurityGroup",
            {
                "GroupName": f"{request['Name']}-ssh",
                "Description": f"SSH to the p8 EMR master from {spec.ssh_cidr} only",
                "VpcId": vpc,
            },
        )
        group_id = group["GroupId"] if group else "sg-FROM-CreateSecurityGroup"
        network = ipaddress.ip_network(spec.ssh_cidr, strict=False)
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
        request["Instances"]["AdditionalMasterSecurityGroups"] = [group_id]
    response = aws.call("emr", "RunJobFlow", request)
    return response["JobFlowId"] if response else None


# Left out of the copy a wheel is built from: environments, caches, results, earlier builds.
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
    _check_bucket_name(bucket)
    if wheel is not None and (wheel.name != wheel_name() or not wheel.is_file()):
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
    from botocore.exceptions import ClientError

    exists = True
    try:
        aws.call("s3", "HeadBucket", {"Bucket": bucket})
    except P8Error as exc:
        cause = exc.__context__
        if isinstance(cause, ClientError) and cause.response["Error"]["Code"] in (
            "404",
            "NoSuchBucket",
        ):
            exists = False
        else:
            raise
    if not exists:
        params: dict[str, Any] = {"Bucket": bucket}
        if aws.region and aws.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
        aws.call("s3", "CreateBucket", params)
    aws.call(
        "s3",
        "PutPublicAccessBlock",
        {
            "Bucket": bucket,
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        },
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
    """AddJobFlowSteps for ``p8 ARGS`` under spark-submit on YARN (client mode, on the master)."""
    if not args or args[0] not in ("run", "train"):
        raise UsageError(
            "give the p8 command to run after --, e.g. -- run --images s3://... --output s3://..."
        )
    args = list(args)
    if "--master" not in args:
        args[1:1] = ["--master", "yarn"]
    entry = f"/tmp/{ENTRY}"
    script = (
        f"aws s3 cp s3://{bucket}/{PREFIX}/{ENTRY} {entry} && "
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


def submit(cluster_id: str, bucket: str, args: Sequence[str], aws: Aws) -> str | None:
    """Add the step; its id (None in a dry run)."""
    response = aws.call("emr", "AddJobFlowSteps", step_request(cluster_id, bucket, args))
    return response["StepIds"][0] if response else None


def status(cluster_id: str, aws: Aws) -> list[str]:
    """The cluster's state and its steps' states, one line each."""
    cluster = aws.call("emr", "DescribeCluster", {"ClusterId": cluster_id})
    steps = aws.call("emr", "ListSteps", {"ClusterId": cluster_id})
    if cluster is None:
        return []
    info = cluster["Cluster"]
    state = info["Status"]["State"]
    reason = info["Status"].get("StateChangeReason", {}).get("Message")
    lines = [f"{cluster_id} {info.get('Name', '')}: {state}" + (f" ({reason})" if reason else "")]
    if info.get("MasterPublicDnsName"):
        lines.append(f"master: {info['MasterPublicDnsName']}")
    for step in (steps or {}).get("Steps", []):
        lines.append(f"step {step['Id']} {step['Name']}: {step['Status']['State']}")
    return lines


def down(cluster_id: str, aws: Aws) -> None:
    """Terminate the cluster."""
    aws.call("emr", "TerminateJobFlows", {"JobFlowIds": [cluster_id]})


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
# Images per second per worker vCPU: 23,619 Test images took 248 s on 2 cores here (48/s per
# core); an m5 vCPU is a hyperthread, so 40 is assumed. Measure a run before budgeting.
RATE_PER_VCPU = 40.0


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

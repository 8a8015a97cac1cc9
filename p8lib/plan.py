"""How many tasks the featurize stage runs in: planned from the capacity the job can get.

Spark's ``defaultParallelism`` counts the executors registered *now*. On YARN with dynamic
allocation (EMR's default) none is registered when a job is planned, so it says 2 whatever the
cluster. The capacity comes instead, in this order, from:

1. ``--partitions N``: the user's task count, as given;
2. dynamic allocation with a finite ``spark.dynamicAllocation.maxExecutors``: max × cores;
3. dynamic allocation without a maximum, on YARN: the cluster's vcores (ResourceManager REST);
4. static executors (``spark.executor.instances`` × ``spark.executor.cores``);
5. a standalone cluster's ``spark.cores.max``; local mode's ``local[N]`` / ``local[*]``;
6. what is registered at the start (``defaultParallelism``).

Tasks: at least one per core of that capacity, up to 16 per core, ≥ 256 images each (fewer
tasks than cores only when there are fewer than 256 images per core), in whole waves (a
multiple of the cores, so no core waits idle for the last task).
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from xml.etree import ElementTree

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

MIN_IMAGES_PER_TASK = 256
MAX_TASKS_PER_CORE = 16
# End-to-end images per second per core, measured by `make bench` (full Test, 23,619 images in
# 138.7 and 144.2 s on 2 cores with OpenVINO fp32, 2026-11-26 night: 83/s per core): the dry
# run's time estimate. EMR's cost model has its own (emr.RATE_PER_VCPU).
IMAGES_PER_CORE_SECOND = 83.0
LOCAL_RE = re.compile(r"^local(?:\[(\*|\d+)(?:,\d+)?\])?$")
UNLIMITED = 2**31 - 1  # Spark's "infinity" for maxExecutors


@dataclass(frozen=True)
class Capacity:
    """Cores the featurize stage can run on at once, and where that figure came from."""

    cores: int
    source: str


@dataclass(frozen=True)
class Plan:
    """The featurize stage's tasks for ``images`` on ``capacity``."""

    images: int
    tasks: int
    images_per_task: int
    cores: int
    source: str

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.tasks:,} task{'s' if self.tasks != 1 else ''} of ~{self.images_per_task:,} "
            f"image{'s' if self.images_per_task != 1 else ''} "
            f"on {self.cores:,} cores ({self.source})"
        )


def _int(conf: Mapping[str, str], key: str, default: int) -> int:
    value = conf.get(key, "").strip().lower()
    if value in ("infinity", "inf"):
        return UNLIMITED
    try:
        return int(value) if value else default
    except ValueError:
        return default


def capacity(
    conf: Mapping[str, str],
    *,
    master: str,
    registered: int,
    yarn_vcores: Callable[[], int | None] = lambda: None,
) -> Capacity:
    """The cores a job under ``master`` with Spark ``conf`` can use (see the module docstring).

    Examples
    --------
    >>> dyn = {"spark.dynamicAllocation.enabled": "true", "spark.executor.cores": "4"}
    >>> capacity({**dyn, "spark.dynamicAllocation.maxExecutors": "40"}, master="yarn",
    ...          registered=2)
    Capacity(cores=160, source='dynamic allocation: up to 40 executors × 4 cores')
    >>> capacity({}, master="local[3]", registered=3)
    Capacity(cores=3, source='local[3]')
    """
    per_task = max(1, _int(conf, "spark.task.cpus", 1))
    cores = _int(conf, "spark.executor.cores", 1)
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        most = _int(conf, "spark.dynamicAllocation.maxExecutors", UNLIMITED)
        if most < UNLIMITED:
            how = f"dynamic allocation: up to {most} executors × {cores} cores"
            return Capacity(max(1, most * cores // per_task), how)
        vcores = yarn_vcores() if master == "yarn" else None
        if vcores:
            return Capacity(max(1, vcores // per_task), f"YARN cluster: {vcores} vcores")
    elif "spark.executor.instances" in conf and not master.startswith("local"):
        count = _int(conf, "spark.executor.instances", 1)
        return Capacity(max(1, count * cores // per_task), f"{count} executors × {cores} cores")
    if master.startswith("spark://") and "spark.cores.max" in conf:
        most = _int(conf, "spark.cores.max", registered)
        return Capacity(max(1, most // per_task), f"spark.cores.max = {most}")
    local = LOCAL_RE.match(master)
    if local:
        n = local.group(1) or "1"
        return Capacity(os.cpu_count() or 1 if n == "*" else int(n), master)
    return Capacity(max(1, registered), f"defaultParallelism when planned: {registered}")


def plan(n_images: int, where: Capacity, *, partitions: int | None = None) -> Plan:
    """The task count for ``n_images`` on ``where`` (or exactly ``partitions``).

    Examples
    --------
    >>> [plan(n, Capacity(2, "local[2]")).tasks for n in (34, 2000, 8000, 23619)]
    [2, 6, 30, 32]
    >>> plan(100_000, Capacity(160, "yarn")).tasks
    320
    >>> plan(34, Capacity(2, "local[2]"), partitions=50).tasks  # never more tasks than images
    34
    """
    if partitions is not None:
        tasks, source = partitions, f"--partitions {partitions}"
    else:
        cores = where.cores
        tasks = max(cores, min(MAX_TASKS_PER_CORE * cores, n_images // MIN_IMAGES_PER_TASK))
        tasks = tasks // cores * cores  # whole waves: no core idle while one task finishes
        source = where.source
    tasks = max(1, min(tasks, n_images))
    per_task = -(-n_images // tasks) if n_images else 0
    return Plan(n_images, tasks, per_task, where.cores, source)


def hours(plan: Plan, *, rate: float = IMAGES_PER_CORE_SECOND) -> float:
    """Estimated featurizing time at ``rate`` images per core and second, all cores busy."""
    waves = -(-plan.tasks // plan.cores)  # tasks run in waves of `cores`
    per_task_seconds = plan.images_per_task / rate
    return waves * per_task_seconds / 3600


def yarn_vcores_from(address: str | None, *, timeout: float = 5.0) -> int | None:
    """The YARN cluster's total vcores from its ResourceManager's REST API
    (``http://ADDRESS/ws/v1/cluster/metrics``), None when it can't be asked."""
    if not address:
        return None
    url = f"http://{address}/ws/v1/cluster/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            metrics = json.load(response)["clusterMetrics"]
        return int(metrics["totalVirtualCores"]) or None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resource_manager(hadoop_conf: Callable[[str], str | None]) -> str | None:
    """The ResourceManager's web address from Hadoop's configuration (``get(key)``)."""
    address = hadoop_conf("yarn.resourcemanager.webapp.address")
    if address and "${" not in address:
        return address
    host = hadoop_conf("yarn.resourcemanager.hostname")
    return f"{host}:8088" if host else None


def site_conf(folder: Path | None, name: str) -> dict[str, str]:
    """The properties of a Hadoop ``*-site.xml`` in ``folder`` ({} if absent or unreadable)."""
    path = (folder / name) if folder else None
    if path is None or not path.is_file():
        return {}
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return {}
    return {
        (p.findtext("name") or "").strip(): (p.findtext("value") or "").strip()
        for p in root.iter("property")
    }


def spark_defaults(folder: Path | None) -> dict[str, str]:
    """The settings of ``spark-defaults.conf`` in ``folder`` ({} if absent)."""
    path = (folder / "spark-defaults.conf") if folder else None
    if path is None or not path.is_file():
        return {}
    conf = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and not parts[0].startswith("#"):
            conf[parts[0]] = parts[1].strip()
    return conf


def _conf_dir(variable: str, emr_default: str) -> Path | None:
    value = os.environ.get(variable)
    if value:
        return Path(value)
    return Path(emr_default) if Path(emr_default).is_dir() else None


def yarn_vcores() -> int | None:
    """The vcores of the YARN cluster this machine's Hadoop configuration points to."""
    yarn = site_conf(_conf_dir("HADOOP_CONF_DIR", "/etc/hadoop/conf"), "yarn-site.xml")
    return yarn_vcores_from(resource_manager(yarn.get))


def of_session(spark: SparkSession) -> Capacity:
    """The capacity of a running session (its conf, master and registered cores)."""
    sc = spark.sparkContext
    conf = dict(sc.getConf().getAll())
    master, registered = sc.master or "", sc.defaultParallelism
    return capacity(conf, master=master, registered=registered, yarn_vcores=yarn_vcores)


def before_session(master: str, spark_conf: Mapping[str, str]) -> Capacity:
    """The capacity a session for ``master`` would get, without starting one: the machine's
    ``spark-defaults.conf`` ($SPARK_CONF_DIR, EMR's /etc/spark/conf) and ``spark_conf``."""
    conf = {**spark_defaults(_conf_dir("SPARK_CONF_DIR", "/etc/spark/conf")), **spark_conf}
    return capacity(conf, master=master, registered=2, yarn_vcores=yarn_vcores)

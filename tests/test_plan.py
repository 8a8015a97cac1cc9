"""Scale: the featurize plan from the capacity the job can get, the dry run, a flat driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import ROOT

from p8lib import emr, plan
from p8lib.plan import Capacity

YARN_DYNAMIC = {
    "spark.dynamicAllocation.enabled": "true",
    "spark.dynamicAllocation.maxExecutors": "40",
    "spark.executor.cores": "4",
}


def test_a_yarn_cluster_with_dynamic_allocation_gets_a_task_per_core() -> None:
    # What YARN shows at planning time: no executor registered, defaultParallelism = 2.
    where = plan.capacity(YARN_DYNAMIC, master="yarn", registered=2)
    assert where.cores == 160 and "40 executors × 4 cores" in where.source
    tasks = plan.plan(100_000, where)
    assert tasks.tasks >= 160 and tasks.images_per_task >= 256
    assert tasks.tasks * tasks.images_per_task >= 100_000
    # Before: the registered cores alone gave 32 tasks for the whole cluster.
    assert plan.plan(100_000, plan.capacity({}, master="yarn", registered=2)).tasks == 32


@pytest.mark.parametrize("cores", [1, 2, 3, 16, 160, 320, 5000])
def test_at_least_one_task_per_core_from_256_images_a_core(cores: int) -> None:
    for n in (256 * cores, 256 * cores + 255, 100 * 256 * cores):
        tasks = plan.plan(n, Capacity(cores, "test"))
        assert cores <= tasks.tasks <= 16 * cores and tasks.images_per_task >= 256, (n, tasks)
    small = plan.plan(10, Capacity(cores, "test"))
    assert small.tasks == min(10, cores)  # never a task without an image


def test_partitions_override_and_the_other_capacity_sources() -> None:
    where = Capacity(8, "local[8]")
    assert plan.plan(5000, where, partitions=3).tasks == 3
    assert plan.plan(5000, where, partitions=3).source == "--partitions 3"
    static = {"spark.executor.instances": "5", "spark.executor.cores": "2"}
    assert plan.capacity(static, master="yarn", registered=2).cores == 10
    assert plan.capacity({"spark.cores.max": "6"}, master="spark://h:7077", registered=2).cores == 6
    infinite = {**YARN_DYNAMIC, "spark.dynamicAllocation.maxExecutors": "infinity"}
    assert (
        plan.capacity(infinite, master="yarn", registered=2, yarn_vcores=lambda: 320).cores == 320
    )
    unknown = plan.capacity(infinite, master="yarn", registered=2, yarn_vcores=lambda: None)
    assert unknown.cores == 2 and "defaultParallelism" in unknown.source
    halves = {**YARN_DYNAMIC, "spark.task.cpus": "2"}
    assert plan.capacity(halves, master="yarn", registered=2).cores == 80


@pytest.fixture
def resource_manager(tmp_path: Path) -> Iterator[Path]:
    """A loopback HTTP server answering YARN's /ws/v1/cluster/metrics (its documented JSON),
    and a HADOOP_CONF_DIR whose yarn-site.xml points to it."""

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            found = self.path == "/ws/v1/cluster/metrics"
            body = json.dumps({"clusterMetrics": {"totalVirtualCores": 320, "totalNodes": 20}})
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode() if found else b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conf = tmp_path / "hadoop-conf"
    conf.mkdir()
    address = f"127.0.0.1:{server.server_address[1]}"
    (conf / "yarn-site.xml").write_text(
        "<configuration><property><name>yarn.resourcemanager.webapp.address</name>"
        f"<value>{address}</value></property></configuration>"
    )
    yield conf
    server.shutdown()


def test_emr_defaults_without_a_maximum_ask_yarn_for_its_vcores(
    resource_manager: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spark_conf = tmp_path / "spark-conf"
    spark_conf.mkdir()
    # EMR's spark-defaults.conf: dynamic allocation on, no maximum, 4 cores per executor.
    (spark_conf / "spark-defaults.conf").write_text(
        "# EMR\nspark.dynamicAllocation.enabled    true\nspark.executor.cores 4\n"
    )
    monkeypatch.setenv("HADOOP_CONF_DIR", str(resource_manager))
    monkeypatch.setenv("SPARK_CONF_DIR", str(spark_conf))
    where = plan.before_session("yarn", {})
    assert where == Capacity(320, "YARN cluster: 320 vcores")
    assert plan.plan(1_000_000, where).tasks >= 320


def _tree(root: Path, fruits_dir: Path) -> int:
    """A small input with odd names and formats: images at two depths, a .txt, a hidden file."""
    source = sorted((fruits_dir / "Test" / "Banana 1").glob("*.jpg"))[:30]
    for i, path in enumerate(source):
        folder = root / ("Banana 1" if i % 2 else "deep/Lemon #2")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img {i}.JPG").write_bytes(path.read_bytes())
    (root / "notes.txt").write_text("not an image")
    (root / "deep" / ".DS_Store").write_bytes(b"\0")
    return len(source)


def test_dry_run_lists_plans_and_writes_nothing(fruits_dir: Path, tmp_path: Path) -> None:
    images, output = tmp_path / "in put", tmp_path / "out"
    n = _tree(images, fruits_dir)
    cmd = [sys.executable, "-m", "p8lib.cli", "run", "--images", str(images)]
    cmd += ["--output", str(output), "--dry-run", "--master", "local[3]"]
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_CONF_DIR", "HADOOP_CONF_DIR")}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{n} images under file://") and f"(.jpg {n})" in lines[0]
    assert "1 file skipped (not images: .txt 1)" in lines
    assert any("hidden" in line for line in lines)
    assert f"plan: 3 tasks of ~{-(-n // 3)} images on 3 cores (local[3])" in lines
    assert any(line.startswith("time: ~") for line in lines)
    assert any(line.startswith("cost on EMR's default cluster") and "$" in line for line in lines)
    assert not output.exists() and "SparkContext" not in done.stderr
    bad = subprocess.run(
        [*cmd[:-4], "--dry-run", "--partitions", "0"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_the_cost_of_the_cluster_a_dry_run_is_on(tmp_path: Path) -> None:
    info = tmp_path / "job-flow.json"
    groups = [
        {"instanceRole": "Master", "instanceType": "m5.xlarge", "requestedInstanceCount": 1},
        {
            "instanceRole": "Core",
            "instanceType": "m5.2xlarge",
            "requestedInstanceCount": 4,
            "marketType": "SPOT",
        },
    ]
    info.write_text(json.dumps({"masterInstanceType": "m5.xlarge", "instanceGroups": groups}))
    shape = emr.this_cluster(info)
    assert shape == {
        "core_type": "m5.2xlarge",
        "core_count": 4,
        "spot": True,
        "master_type": "m5.xlarge",
    }
    assert emr.cost(images=1_000_000, **shape).dollars > emr.cost(images=10_000, **shape).dollars
    info.write_text("{not json")
    assert emr.this_cluster(info) is None and emr.this_cluster(tmp_path / "absent") is None


@pytest.mark.slow
def test_partitions_are_the_tasks_and_the_plan_is_in_the_manifest(
    spark, sample_dir: Path, tmp_path: Path
) -> None:
    from p8lib.pipeline import run

    out = str(tmp_path / "out")
    result = run(images=str(sample_dir), output=out, k=2, partitions=5, spark=spark)
    assert result.manifest.plan == {
        "images": 34,
        "tasks": 5,
        "images_per_task": 7,
        "cores": result.manifest.plan["cores"],
        "source": "--partitions 5",
    }
    written = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert written["plan"]["tasks"] == 5


@pytest.mark.slow
def test_notebook_views_read_a_few_rows_not_the_table(spark, sample_run) -> None:
    from p8lib import report

    def points(figure: Any) -> int:
        return sum(np.shape(c.get_offsets())[0] for c in figure.axes[0].collections)

    assert points(report.pca_scatter(spark, sample_run, points=7)) == 7
    assert points(report.pca_scatter(spark, sample_run)) == sample_run.images
    grid = report.sample_images(spark, sample_run, n=4)
    assert sum(bool(ax.images) for ax in grid.axes) == 4

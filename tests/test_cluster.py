"""The pipeline on a real Spark standalone cluster: a master and two workers on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT

from p8lib.cluster import LocalCluster, free_port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Master + 2 workers (1 core each), started from pyspark's spark-class, stopped by pid."""
    with LocalCluster(tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="3g") as c:
        yield c


def _p8_run(images: Path, output: Path, master: str, *extra: str, stderr=None):
    cmd = [sys.executable, "-m", "p8lib.cli", "run", "--images", str(images)]
    cmd += ["--output", str(output), "--master", master, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)


def _table(output: Path) -> pd.DataFrame:
    table = pd.read_parquet(output / "features.parquet")
    return table.sort_values("path").reset_index(drop=True)


def test_cluster_gives_the_local_results(cluster, sample_dir, sample_table, tmp_path) -> None:
    proc = _p8_run(sample_dir, tmp_path / "out", cluster.url, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    table = _table(tmp_path / "out")
    sample_table = sample_table.sort_values("path").reset_index(drop=True)
    assert list(table["path"]) == list(sample_table["path"])
    assert list(table["label"]) == list(sample_table["label"])
    np.testing.assert_allclose(
        np.stack(table["features"]), np.stack(sample_table["features"]), atol=1e-4
    )
    # Same k and the same projections up to each component's sign.
    ours, local = np.stack(table["pca_features"]), np.stack(sample_table["pca_features"])
    assert ours.shape == local.shape
    signs = np.sign(np.sum(ours * local, axis=0))
    np.testing.assert_allclose(ours * signs, local, atol=1e-3)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["spark"]["master"] == cluster.url
    # Both workers ran executors of the application.
    for i in range(2):
        assert list((cluster.folder / f"worker-{i}").glob("app-*/*/stderr")), f"worker-{i} idle"


def _active_stages(ui_port: int) -> list[dict[str, Any]]:
    base = f"http://127.0.0.1:{ui_port}/api/v1/applications"
    try:
        with urllib.request.urlopen(base, timeout=2) as r:
            app = json.load(r)[0]["id"]
        with urllib.request.urlopen(f"{base}/{app}/stages?status=active", timeout=2) as r:
            return list(json.load(r))
    except (OSError, IndexError, ValueError):
        return []


def test_a_worker_killed_during_featurization(cluster, fruits_dir, tmp_path) -> None:
    images = tmp_path / "images"
    classes = sorted(p.name for p in (fruits_dir / "Test").iterdir())[:10]
    for name in classes:
        shutil.copytree(fruits_dir / "Test" / name, images / name)
    n_files = sum(1 for _ in images.rglob("*.jpg"))
    ui_port = free_port()
    log = (tmp_path / "driver.log").open("w")
    # Enough tasks that some have finished while others run when the worker is lost.
    extra = ["--conf", f"spark.ui.port={ui_port}", "--partitions", "24"]
    proc = _p8_run(images, tmp_path / "out", cluster.url, *extra, stderr=log)
    killed = False
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        featurizing = "featurizing" in (tmp_path / "driver.log").read_text()
        # Kill once featurization has finished some tasks and is running others.
        if featurizing and any(
            s["numCompleteTasks"] >= 2 and s["numActiveTasks"] >= 1 for s in _active_stages(ui_port)
        ):
            cluster.kill("worker-1")
            killed = True
            break
        time.sleep(0.2)
    assert killed, "featurization ended before a worker could be killed"
    proc.communicate(timeout=600)
    log.close()
    assert proc.returncode == 0, (tmp_path / "driver.log").read_text()[-3000:]
    alive = [w for w in cluster.state()["workers"] if w["state"] == "ALIVE"]
    assert len(alive) == 1
    table = _table(tmp_path / "out")
    # Every image exactly once, every one featurized, despite the lost executor.
    assert len(table) == n_files and table["path"].is_unique
    assert table["features"].notna().all() and table["error"].isna().all()
    assert sorted(table["label"].unique()) == classes
    # Counted from the rows written: the retried tasks' images are not counted twice.
    counts = json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]
    assert counts["images"] == counts["featurized"] == n_files and counts["failed"] == 0


def test_workers_that_register_after_the_plan_all_get_tasks(fruits_dir, tmp_path) -> None:
    """On a cluster manager executors come after the job is planned (YARN with dynamic
    allocation, a standalone cluster whose workers start late): the plan must leave work for
    them. Here the master runs alone until p8 has planned the featurize stage."""
    images = tmp_path / "images"
    for name in sorted(p.name for p in (fruits_dir / "Test").iterdir())[:4]:
        shutil.copytree(fruits_dir / "Test" / name, images / name)
    late = LocalCluster(tmp_path / "cluster", workers=0, cores=1, memory="3g").start()
    try:
        log_path = tmp_path / "driver.log"
        with log_path.open("w") as log:
            proc = _p8_run(images, tmp_path / "out", late.url, stderr=log)
            deadline = time.monotonic() + 120
            while "p8: plan:" not in log_path.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.2)
            assert not late.state().get("workers"), "no worker before the plan"
            for i in range(2):
                late.add_worker(i)
            proc.communicate(timeout=600)
        text = log_path.read_text()
        assert proc.returncode == 0, text[-3000:]
        assert "defaultParallelism when planned" in text  # no executor yet
        for i in range(2):
            logs = list((late.folder / f"worker-{i}").glob("app-*/*/stderr"))
            ran = sum(p.read_text(errors="replace").count("Running task") for p in logs)
            assert ran >= 1, f"worker-{i} ran no task"
    finally:
        late.stop()

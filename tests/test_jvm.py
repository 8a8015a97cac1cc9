"""The driver JVM's options, as the JVM itself reports them: its JIT, and the class archive a
run writes when it exits and the next run maps."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import p8

from p8lib import engine, jvm


def test_suite_session_keeps_c2_for_hot_methods_only(spark) -> None:
    assert jvm.jit_of(spark) == jvm.HOT_ONLY_C2.split()


@pytest.fixture(scope="module")
def two_runs(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two `p8 run`s on the sample, one after the other, with an empty class-archive cache."""
    root = tmp_path_factory.mktemp("archive")
    cache = root / "cache"
    cache.mkdir()
    # The converted network from the usual cache: these tests are about the JVM's archive.
    (cache / "openvino").symlink_to(engine.cache_dir(), target_is_directory=True)
    for name in ("first", "second"):
        done = p8(
            "run", "--images", str(sample_dir), "--output", str(root / name),
            env={"P8_CACHE_DIR": str(cache)},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "cds" not in done.stdout + done.stderr, "the JVM's archive messages are off"
    return root


def _spark_record(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["spark"]


def test_a_run_writes_the_class_archive_the_next_run_maps(two_runs: Path) -> None:
    folder = two_runs / "cache" / "jvm"
    archives = list(folder.glob("*.jsa"))
    assert len(archives) == 1 and not list(folder.glob(".*")), "published, nothing left staged"
    first, second = _spark_record(two_runs / "first"), _spark_record(two_runs / "second")
    assert first["class_archive"] is None, "there was none yet: the first run wrote it at exit"
    assert second["class_archive"] == str(archives[0])
    assert first["jit"] == second["jit"] == [jvm.C1_ONLY], "34 images: a short run"
    tables = [
        pd.read_parquet(two_runs / n / "features.parquet").sort_values("path")
        for n in ("first", "second")
    ]
    assert tables[0]["features"].map(list).tolist() == tables[1]["features"].map(list).tolist()


def test_only_a_whole_archive_is_usable(two_runs: Path, tmp_path: Path) -> None:
    (archive,) = (two_runs / "cache" / "jvm").glob("*.jsa")
    assert jvm.usable(archive)
    truncated = tmp_path / "truncated.jsa"
    data = archive.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert not jvm.usable(truncated), "a truncated archive crashes the JVM that maps it"


def test_stale_archives_are_removed_and_the_live_one_kept(
    two_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    folder = two_runs / "cache" / "jvm"
    (live,) = folder.glob("*.jsa")
    record = json.loads(live.with_suffix(".json").read_text())
    assert Path(record["jars"]).is_dir() and Path(record["java"]).is_file()
    # Another environment's archive stays; a deleted one's goes, a reinstalled one's too (its
    # jars folder has another time), and one staged by a process that is gone.
    for name, changes in [
        ("other", {}),
        ("gone", {"jars": "/no/venv"}),
        ("new", {"jars_time": "1"}),
    ]:
        (folder / f"{name}.jsa").write_bytes(b"x")
        (folder / f"{name}.json").write_text(json.dumps({**record, **changes}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True).stdout.strip()  # fmt: skip
    (folder / f".{live.name}.{dead}").write_bytes(b"x")
    monkeypatch.setenv("P8_CACHE_DIR", str(two_runs / "cache"))
    options, staged = jvm.archive_options()
    assert staged is None and f"-XX:SharedArchiveFile={live}" in options
    kept = [live.name, f"{live.stem}.json", "other.jsa", "other.json"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept)

"""The `p8` command: bad arguments give one line on stderr, exit code 2, nothing overwritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, p8

from p8lib import jvm


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def _assert_usage_error(result, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = _error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("p8: error: ") and fragment in lines[0]
    assert "Traceback" not in result.stderr and "at org.apache" not in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--output", "x"], "--images"),
        (["run", "--images", "x", "--output", "y", "--k", "0"], "--k must be between"),
        (["run", "--images", "x", "--output", "y", "--k", "1281"], "--k must be between"),
        (["run", "--images", "x", "--output", "y", "--variance", "1.5"], "--variance"),
        (["run", "--images", "x", "--output", "y", "--k", "3", "--variance", "0.9"], "not allowed"),
        (["run", "--images", "x", "--output", "y", "--mode", "append"], "--mode"),
        (["run", "--images", "x", "--output", "y", "--glob", "*.{jpg"], "unclosed '{'"),
        (["frobnicate"], "invalid choice"),
        # Options only as spelled: a prefix of one is not taken for it.
        (["run", "--images", "x", "--output", "y", "--aug", "2"], "unrecognized arguments: --aug"),
        (["predict", "--model", "m", "--unsure", "0.5", "x.jpg"], "unrecognized arguments"),
    ],
)
def test_bad_arguments(args: list[str], fragment: str) -> None:
    _assert_usage_error(p8(*args), fragment)


def test_missing_input_folder(tmp_path: Path) -> None:
    result = p8("run", "--images", str(tmp_path / "nope"), "--output", str(tmp_path / "out"))
    _assert_usage_error(result, "input not found")
    assert not (tmp_path / "out").exists()


def test_empty_input_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = p8("run", "--images", str(tmp_path / "empty"), "--output", str(tmp_path / "out"))
    _assert_usage_error(result, "no image files under")
    assert not (tmp_path / "out").exists()


def test_k_larger_than_the_data(sample_dir: Path, tmp_path: Path) -> None:
    result = p8("run", "--images", str(sample_dir), "--output", str(tmp_path / "out"), "--k", "40")
    _assert_usage_error(result, "at most 34 components")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_existing_output_is_kept_unless_overwrite(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = p8("run", "--images", str(sample_dir), "--output", str(out), "--k", "2")
    assert first.returncode == 0, first.stderr
    # 34 images: a short run, the JVM compiles with C1 only (as its own arguments say).
    assert json.loads((out / "manifest.json").read_text())["spark"]["jit"] == [jvm.C1_ONLY]
    (out / "previous.txt").write_text("keep me until replaced")
    refused = p8("run", "--images", str(sample_dir), "--output", str(out))
    _assert_usage_error(refused, "--mode overwrite")
    assert (out / "previous.txt").read_text() == "keep me until replaced"

    done = p8(
        "run", "--images", str(sample_dir), "--output", str(out), "--mode", "overwrite", "--k", "3"
    )
    assert done.returncode == 0, done.stderr
    assert "34 images (34 featurized, 0 failed)" in done.stdout and "k = 3" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "explained_variance.png",
        "features.parquet",
        "manifest.json",
    ]
    assert not list(tmp_path.glob(".out.*")), "no staging folder, old copy or lock left behind"


def test_a_reader_that_stops_reading_ends_predict_quietly(sample_model, sample_dir) -> None:
    """`p8 predict photos/ | head -1`: once the pipe's reader is gone, p8 stops as a command
    killed by SIGPIPE does (exit 141), with no error message."""
    photos = [str(p) for p in sorted(sample_dir.rglob("*.jpg"))]
    model = sample_model.model.removeprefix("file://")
    read, write = os.pipe()
    os.close(read)  # the reader has gone before p8 writes its first answer
    try:
        result = subprocess.run(
            [sys.executable, "-m", "p8lib.cli", "predict", *photos, "--model", model],
            stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=600,
        )  # fmt: skip
    finally:
        os.close(write)
    assert result.returncode == 141, result.stderr
    assert "error" not in result.stderr.lower() and "Traceback" not in result.stderr

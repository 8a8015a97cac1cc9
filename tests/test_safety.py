"""Never delete, skip or invent a user's data: what a run reads, where it may write, one writer
per output, and what an interrupted run leaves behind. Real files, processes and S3 server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import ROOT, ctrl_c_once_started, p8
from PIL import Image

from p8lib import engine

ODD = "my photos #1 [x] 50% é 果"


def _one_error(result, fragment: str, code: int = 2) -> str:
    assert result.returncode == code, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("p8: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr and "at org.apache" not in result.stderr
    return str(lines[0])


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _small_tree(root: Path, sample_dir: Path, classes: int = 2, per_class: int = 3) -> list[Path]:
    """``classes`` folders of ``per_class`` copies of sample images under ``root``."""
    made = []
    for folder in sorted(p for p in sample_dir.iterdir() if p.is_dir())[:classes]:
        images = sorted(folder.glob("*.jpg"))
        for i in range(per_class):
            target = root / folder.name / f"{i}_{images[i % len(images)].name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(images[i % len(images)], target)
            made.append(target)
    return made


# --- 1. never over the inputs, never over what p8 did not write --------------------------------


@pytest.mark.parametrize("where", ["same", "above", "inside", "symlink"])
def test_an_output_over_the_input_is_refused_before_spark(sample_dir, tmp_path, where) -> None:
    photos = tmp_path / "photos" / "fruits"
    shutil.copytree(sample_dir, photos)
    (tmp_path / "photos" / "notes.txt").write_text("mine")
    (tmp_path / "link").symlink_to(photos)
    output = {
        "same": photos,
        "above": tmp_path / "photos",
        "inside": photos / "results",
        "symlink": tmp_path / "link",
    }[where]
    before = _tree(tmp_path / "photos")
    args = ["run", "--images", str(photos), "--output", str(output), "--mode", "overwrite"]
    result = p8(*args)
    line = _one_error(result, "--output")
    assert "outside the inputs" in line
    assert _one_error(p8(*args, "--dry-run"), "--output") == line  # a dry run says so too
    assert _tree(tmp_path / "photos") == before
    assert "JAVA" not in result.stderr and "Spark" not in result.stderr


@pytest.mark.parametrize(
    ("images", "output"),
    [
        ("s3://fruits/data/Test", "s3a://fruits/data/Test/Results"),
        ("s3a://fruits/data/Test", "s3://fruits/data"),
        ("s3://fruits", "s3://fruits/results"),
    ],
)
def test_s3_prefixes_are_compared_by_bucket_and_folders(images: str, output: str) -> None:
    # No server at that endpoint: the refusal comes before any S3 request.
    result = p8(
        "run", "--images", images, "--output", output, "--s3-endpoint", "http://127.0.0.1:9"
    )
    assert "outside the inputs" in _one_error(result, "--output")


def test_an_s3_bucket_root_output_is_refused() -> None:
    result = p8("run", "--images", "s3://fruits/data", "--output", "s3://results")
    assert "bucket root" in _one_error(result, "--output s3a://results")


def test_overwrite_replaces_only_what_p8_wrote(sample_dir, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.docx").write_text("years of work")
    for mode in ("error", "overwrite", "incremental"):
        refused = p8("run", "--images", str(sample_dir), "--output", str(out), "--mode", mode)
        line = _one_error(refused, "holds no p8 run results")
        assert "choose another --output" in line and "move its contents away" in line
        assert "--mode overwrite" not in line
    assert _tree(out) == {"thesis.docx": b"years of work"}


def test_train_refuses_a_model_over_its_features_or_a_foreign_folder(sample_run, tmp_path) -> None:
    features = sample_run.output.removeprefix("file://")
    before = _tree(Path(features))
    for model in (features, f"{features}/model", str(Path(features).parent)):
        result = p8("train", "--features", features, "--model", model, "--mode", "overwrite")
        assert "outside the inputs" in _one_error(result, "--model")
    assert _tree(Path(features)) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep")
    result = p8("train", "--features", features, "--model", str(foreign), "--mode", "overwrite")
    _one_error(result, "holds no p8 model (model.json is missing)")
    assert _tree(foreign) == {"keep.txt": b"keep"}


# --- 2. symlinks: every real file once, loops and broken links counted --------------------------


@pytest.mark.slow
def test_a_symlink_loop_is_not_followed_and_every_real_file_is_read_once(
    spark, sample_dir, tmp_path
):
    from p8lib.pipeline import run

    root = tmp_path / "photos"
    files = _small_tree(root, sample_dir, classes=3, per_class=4)
    (root / "links").mkdir()
    (root / "links" / "loop").symlink_to("..")
    (root / "links" / "gone.jpg").symlink_to(root / "missing.jpg")
    (root / "links" / "again.jpg").symlink_to(files[0])
    result = run(images=str(root), output=str(tmp_path / "out"), k=2)
    table = spark.read.parquet(result.parquet).toPandas()
    assert sorted(p.removeprefix("file:") for p in table["path"]) == sorted(map(str, files))
    assert set(table["label"]) == {f.parent.name for f in files}
    listing = result.manifest.listing
    assert (listing["symlink_loops"], listing["broken_symlinks"]) == (1, 1)
    assert listing["duplicate_links"] == 1 and result.manifest.counts.images == len(files)
    summary = result.summary()
    assert "1 symlink loops not followed" in summary and "1 broken symlinks" in summary


# --- 3. one writer per output -----------------------------------------------------------------


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _long_run(fruits_dir: Path, images: Path, out: Path) -> list[str]:
    """The command of a run long enough to act on while it works (4 Test classes, ~650 images)."""
    for folder in sorted((fruits_dir / "Test").iterdir())[:4]:
        shutil.copytree(folder, images / folder.name)
    return [sys.executable, "-m", "p8lib.cli", "run", "--images", str(images), "--output", str(out)]


@pytest.mark.slow
def test_a_second_run_into_the_same_output_exits_1_naming_the_first(fruits_dir, tmp_path) -> None:
    out = tmp_path / "out"
    cmd = _long_run(fruits_dir, tmp_path / "images", out)
    first = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lock = tmp_path / ".out.lock"
    deadline = time.monotonic() + 120
    # Created, then written: wait for its content, not only for the file.
    while not _text(lock) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _text(lock), "the first run never took the lock"
    holder = json.loads(_text(lock))
    second = p8(*cmd[3:], "--mode", "overwrite")
    assert first.poll() is None, "the first run ended before the second one checked"
    line = _one_error(second, "being written by another p8 command", code=1)
    assert holder["run_id"] in line and str(first.pid) in line
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] == holder["run_id"]
    assert not lock.exists() and not list(tmp_path.glob(".out.*"))


# --- 4. leftovers of a killed run ---------------------------------------------------------------


@pytest.mark.slow
def test_the_next_run_cleans_up_after_a_killed_one(sample_dir, tmp_path) -> None:
    out = tmp_path / "out"
    assert p8("run", "--images", str(sample_dir), "--output", str(out), "--k", "2").returncode == 0
    previous = json.loads((out / "manifest.json").read_text())["run_id"]
    # What a run killed while publishing leaves: its staging folder, the previous results moved
    # aside, its lock naming a process that no longer exists.
    staged = tmp_path / ".out.tmp-20250101T000000-dead01"
    (staged / "features.parquet").mkdir(parents=True)
    (staged / "features.parquet" / "part-0.parquet").write_bytes(b"half")
    out.rename(tmp_path / ".out.old-20250101T000000-dead01")
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = {"run_id": "20250101T000000-dead01", "host": socket.gethostname(), "pid": dead.pid}
    (tmp_path / ".out.lock").write_text(json.dumps({**lock, "command": "p8 run"}))

    result = p8("run", "--images", str(sample_dir), "--output", str(out), "--mode", "overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "taking over the lock of run 20250101T000000-dead01" in result.stderr
    assert "removed .out.tmp-20250101T000000-dead01" in result.stderr
    assert "restored the previous results from .out.old-20250101T000000-dead01" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert json.loads((out / "manifest.json").read_text())["run_id"] != previous
    assert len(pd.read_parquet(out / "features.parquet")) == 34


# --- 5, 6, 8. every photo a phone makes, paths as people name them ------------------------------


@pytest.mark.slow
def test_every_image_extension_in_any_case_is_read_and_the_rest_counted(
    spark, sample_dir, tmp_path
):
    from pillow_heif import register_heif_opener

    from p8lib.pipeline import run

    register_heif_opener()  # to save HEIC here; the executors read it by themselves
    root = tmp_path / "phone"
    photos = sorted(sample_dir.rglob("*.jpg"))[:20]
    formats = [(".jpg", "JPEG"), (".JPG", "JPEG"), (".jpeg", "JPEG"), (".png", "PNG")]
    formats += [(".webp", "WEBP"), (".HEIC", "HEIF")]
    for i, photo in enumerate(photos):
        ext, fmt = formats[i % len(formats)]
        target = root / photo.parent.name / f"IMG_{i:04d}{ext}"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(photo).save(target, format=fmt)
    (root / "notes.txt").write_text("not a photo")
    (root / "IMG_9999.MOV").write_bytes(b"\0" * 64)  # a Live Photo's video
    (root / ".DS_Store").write_bytes(b"\0")
    result = run(images=str(root), output=str(tmp_path / "out"), k=2)
    assert result.images == 20 and result.featurized == 20
    assert result.manifest.listing["skipped_by_extension"] == {".mov": 1, ".txt": 1}
    assert "2 files skipped (not images: " in result.summary()
    narrowed = run(images=str(root), output=str(tmp_path / "png"), k=2, glob="*.PNG")
    assert narrowed.images == 3
    assert narrowed.manifest.listing["skipped_by_extension"][".jpg"] == 8


@pytest.mark.slow
def test_spaces_accents_and_url_characters_in_every_path(sample_dir, tmp_path) -> None:
    root = tmp_path / ODD / "fruits"
    sources = sorted(sample_dir.rglob("*.jpg"))[:6]
    for i, image in enumerate(sources):
        target = root / f"Äpfel #{i % 2} [rot]" / f"IMG {i} #%20[1] 果.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    out = tmp_path / ODD / "results #1"
    result = p8("run", "--images", str(root), "--output", str(out), "--k", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_parquet(out / "features.parquet")
    expected = sorted(f"file:{p}" for p in root.rglob("*.jpg"))
    assert sorted(table["path"]) == expected and table["error"].isna().all()
    assert set(table["label"]) == {"Äpfel #0 [rot]", "Äpfel #1 [rot]"}


def test_a_single_file_as_input_is_refused_at_once(sample_dir, tmp_path) -> None:
    photo = next(sample_dir.rglob("*.jpg"))
    result = p8("run", "--images", str(photo), "--output", str(tmp_path / "out"))
    assert "is a file: give the folder" in _one_error(result, "--images")
    one = tmp_path / "one" / "Apple"
    one.mkdir(parents=True)
    shutil.copy(photo, one / "a.jpg")
    result = p8("run", "--images", str(one.parent), "--output", str(tmp_path / "out"))
    assert "PCA needs at least 2 images" in _one_error(result, "only 1 of the image files")
    assert not (tmp_path / "out").exists()


# --- 9-12. errors a person can act on -----------------------------------------------------------


def test_a_nonsense_master_and_a_text_weights_file_are_usage_errors(sample_dir, tmp_path) -> None:
    result = p8(
        "run", "--images", str(sample_dir), "--output", str(tmp_path / "o"), "--master", "x"
    )
    assert "JAVA_GATEWAY_EXITED" not in _one_error(result, "is not a Spark master URL")
    fake = tmp_path / "weights.h5"
    fake.write_text("these are not weights\n")
    result = p8(
        "run", "--images", str(sample_dir), "--output", str(tmp_path / "o"), "--weights", str(fake)
    )
    _one_error(result, "is not a Keras weights file")
    assert not (tmp_path / "o").exists()


def test_an_unwritable_output_names_the_path_and_the_reason(sample_dir, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = p8("run", "--images", str(sample_dir), "--output", str(blocker / "out"))
    line = _one_error(result, f"cannot write --output {blocker / 'out'}", code=1)
    assert f"{blocker} is a file, not a folder" in line and ".tmp-" not in line
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a read-only folder")
def test_a_read_only_output_parent_is_a_runtime_error(sample_dir, tmp_path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(parent)])
    if mounted.returncode != 0:
        pytest.skip("mount is not allowed here")
    try:
        result = p8("run", "--images", str(sample_dir), "--output", str(parent / "out"))
        line = _one_error(result, f"cannot write --output {parent / 'out'}", code=1)
        assert "Read-only file system" in line
    finally:
        subprocess.run(["umount", str(parent)], check=True)


def test_verbose_after_the_subcommand_and_defaults_in_help() -> None:
    result = p8("run", "--images", "ftp://host/x", "--output", "o", "--verbose")
    assert result.returncode == 2 and "Traceback" in result.stderr
    help_text = " ".join(p8("run", "--help").stdout.split())
    assert (
        "(default: 224)" in help_text and "(default: 8 with openvino, 32 with keras)" in help_text
    )
    assert "openvino (default, fast on CPUs)" in help_text and "fp32 (default, " in help_text
    assert "(default: error)" in help_text


def test_predict_says_what_a_file_is_not(sample_model, tmp_path) -> None:
    fake = tmp_path / ODD / "not a photo.jpg"
    fake.parent.mkdir(parents=True)
    fake.write_text("hello\n")
    model = tmp_path / ODD / "model #1"
    shutil.copytree(sample_model.model.removeprefix("file://"), model)
    result = p8("predict", str(fake), "--model", str(model))
    assert result.returncode == 1
    assert "not in a format Pillow reads" in result.stdout and "BytesIO" not in result.stdout


# --- 13-15. numbers that must be true ------------------------------------------------------------


@pytest.mark.slow
def test_counts_come_from_the_rows(spark, sample_dir, tmp_path) -> None:
    from p8lib.pipeline import run

    images = tmp_path / "images"
    shutil.copytree(sample_dir, images)
    out = str(tmp_path / "out")
    run(images=str(images), output=out, k=2)
    broken = sorted(images.rglob("*.jpg"))[0]
    broken.write_bytes(b"no longer a photo")  # changed: featurized again, and now failing
    again = run(images=str(images), output=out, k=2, mode="incremental")
    counts = again.manifest.counts
    assert (counts.featurized, counts.reused, counts.failed) == (0, 33, 1)
    assert counts.failed_by_reason == {"not a readable image": 1}


def test_run_leaves_the_callers_session_as_it_was(spark, sample_dir, tmp_path) -> None:
    from p8lib.pipeline import run

    def settings() -> dict[str, str]:
        return {row["key"]: row["value"] for row in spark.sql("SET").collect()}

    before = settings()
    run(images=str(sample_dir), output=str(tmp_path / "out"), k=2, spark=spark)
    assert settings() == before


@pytest.mark.slow
def test_train_without_test_evaluates_on_rows_used_for_nothing_else(
    spark, fruits_dir, tmp_path
) -> None:
    import numpy as np

    from p8lib.classify import _held_out, train
    from p8lib.pipeline import run
    from p8lib.predict import load_classifier

    images = tmp_path / "images"
    for folder in sorted((fruits_dir / "Training-subset").iterdir())[:3]:
        shutil.copytree(folder, images / folder.name)
    features = run(images=str(images), output=str(tmp_path / "features"), k=5)
    result = train(features=features.output, model=str(tmp_path / "model"), input="features")
    table = pd.read_parquet(tmp_path / "features" / "features.parquet")
    assert result.evaluation is not None
    assert result.train_rows + result.evaluation.rows == len(table) == 120
    assert 0 < result.evaluation.rows < 40
    # The saved scaler's mean is the training rows' mean: the evaluated fifth was not in it.
    paths = spark.createDataFrame(table[["path"]])
    held = {r["path"] for r in paths.where(_held_out("evaluation")).collect()}
    train_rows = [i for i, p in enumerate(table["path"]) if p not in held]
    assert len(held) == result.evaluation.rows and len(train_rows) == result.train_rows
    x = np.stack(table["features"]).astype(np.float64)
    classifier = load_classifier(tmp_path / "model")
    np.testing.assert_allclose(classifier.mean, x[train_rows].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(classifier.mean, x.mean(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_odd_names_on_s3(s3_server, sample_dir) -> None:
    client = s3_server.client()
    client.create_bucket(Bucket="odd-names")
    sources = sorted(sample_dir.rglob("*.jpg"))[:6]
    for i, image in enumerate(sources):
        key = f"{ODD}/in/Äpfel #{i % 2} [rot]/IMG {i} #%20[1] 果.jpg"
        client.upload_file(str(image), "odd-names", key)
    args = ["--images", f"s3://odd-names/{ODD}/in", "--output", f"s3://odd-names/{ODD}/out #1"]
    result = p8("run", *args, "--k", "2", "--s3-endpoint", s3_server.endpoint)
    assert result.returncode == 0, result.stderr[-2000:]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="odd-names")["Contents"]]
    assert f"{ODD}/out #1/manifest.json" in keys
    body = client.get_object(Bucket="odd-names", Key=f"{ODD}/out #1/manifest.json")["Body"]
    assert json.loads(body.read())["counts"] == {
        "images": 6,
        "featurized": 6,
        "reused": 0,
        "succeeded": 6,
        "failed": 0,
        "failed_by_reason": {},
    }


# --- 16. the S3 server stops while results are being written -------------------------------------


@pytest.mark.slow
def test_s3_server_killed_while_writing(sample_dir, tmp_path) -> None:
    from s3server import S3Server

    (tmp_path / "weed").mkdir()
    server = S3Server(tmp_path / "weed")
    try:
        client = server.client()
        client.create_bucket(Bucket="crash")
        for image in sorted(sample_dir.rglob("*.jpg")):
            client.upload_file(str(image), "crash", f"in/{image.parent.name}/{image.name}")
        args = ["--images", "s3://crash/in", "--output", "s3://crash/out"]
        args += ["--s3-endpoint", server.endpoint]
        first = p8("run", *args, "--k", "2")
        assert first.returncode == 0, first.stderr[-2000:]
        manifest = json.loads(
            client.get_object(Bucket="crash", Key="out/manifest.json")["Body"].read()
        )

        cmd = [sys.executable, "-m", "p8lib.cli", "run", *args, "--k", "3", "--mode", "overwrite"]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 300
        killed = False
        while proc.poll() is None and time.monotonic() < deadline:
            page = client.list_objects_v2(Bucket="crash", Prefix=".out.tmp-")
            if any("features.parquet" in o["Key"] for o in page.get("Contents", [])):
                server.kill()
                killed = True
                break
            time.sleep(0.05)
        assert killed, "the run ended before its write stage was seen"
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 1, stderr[-3000:]
        lines = [line for line in stderr.splitlines() if "error" in line.lower()]
        assert len(lines) == 1 and lines[0].startswith("p8: error: "), stderr[-3000:]

        server.start()
        client = server.client()
        after = json.loads(
            client.get_object(Bucket="crash", Key="out/manifest.json")["Body"].read()
        )
        assert after["run_id"] == manifest["run_id"], "the previous results are intact"
        rerun = p8("run", *args, "--k", "3", "--mode", "overwrite")
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        final = json.loads(
            client.get_object(Bucket="crash", Key="out/manifest.json")["Body"].read()
        )
        assert final["pca"]["k"] == 3 and final["counts"]["images"] == 34
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="crash").get("Contents", [])]
        assert not [k for k in keys if k.startswith(".out")], keys
    finally:
        if server.process.poll() is None:
            server.stop()


@pytest.mark.slow
def test_ctrl_c_cancels_the_run_and_leaves_nothing(fruits_dir, tmp_path) -> None:
    cmd = _long_run(fruits_dir, tmp_path / "images", tmp_path / "my out")
    log = tmp_path / "stderr.txt"
    # No class archive yet: an interrupted JVM is killed, it writes none (nor a partial one).
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "openvino").symlink_to(engine.cache_dir(), target_is_directory=True)
    env = {**os.environ, "P8_CACHE_DIR": str(cache)}
    code, stderr = ctrl_c_once_started(cmd, log, seen="featurizing", after=2, env=env)
    assert code == 130, stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1] == "p8: interrupted, nothing was published"
    assert "Traceback" not in stderr and "Py4J" not in stderr
    assert "Exception" not in stderr, "no Java trace from the stopping session"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "images", "stderr.txt"]
    archives = cache / "jvm"
    assert not archives.exists() or not list(archives.iterdir()), "no archive, none staged"


def test_an_empty_lock_left_by_a_killed_command_is_taken_over(spark, tmp_path) -> None:
    from p8lib import outputs

    (tmp_path / ".out.lock").write_bytes(b"")  # killed between creating the lock and writing it
    said: list[str] = []
    uri = f"file://{tmp_path}/out"
    with outputs.output_lock(spark, uri, run_id="r1", command="p8 run", log=said.append):
        assert json.loads((tmp_path / ".out.lock").read_text())["run_id"] == "r1"
    assert any("unreadable lock" in line for line in said), said
    assert not (tmp_path / ".out.lock").exists()


def test_predict_streams_its_answers_and_ctrl_c_keeps_those_given(
    sample_model, sample_dir, tmp_path
) -> None:
    """`p8 predict big/ > answers.txt`: each batch's answers are written as soon as it is done,
    so an interrupted run has given, whole, the answers of the photos done so far."""
    from p8lib.predict import photo_files

    photos = tmp_path / "photos"
    for copy in range(20):  # 680 photos: many batches of 32
        shutil.copytree(sample_dir, photos / f"copy {copy}")
    model = sample_model.model.removeprefix("file://")
    cmd = [sys.executable, "-m", "p8lib.cli", "predict", str(photos), "--model", model, "--json"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the first batch's first answer, long before the last
        assert proc.poll() is None, "p8 answered nothing before it had predicted every photo"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        rest = proc.stdout.read()  # through the same buffer as readline
        proc.wait(timeout=120)
    stderr = log.read_text()
    assert proc.returncode == 130, stderr[-3000:]
    last = stderr.rstrip().splitlines()[-1]
    assert last == "p8: interrupted, the answers printed are for the photos done so far"
    answers = [json.loads(line) for line in (first + rest).splitlines()]
    assert 1 <= len(answers) < 680 and all(len(a["top"]) == 3 for a in answers)
    assert [a["path"] for a in answers] == photo_files([str(photos)])[: len(answers)]

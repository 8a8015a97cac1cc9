"""The options of a driver JVM that shares this machine's cores with the Python workers: its
JIT, and an archive of the classes it loads (class-data sharing), kept between runs."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# The JIT. Measured on 2 cores (make bench, full Test): by default C2 compiled for ~11 s of CPU
# time during a run, taken from the network; with C2 kept for the really hot methods
# (thresholds ×10, e.g. the Parquet writer's loops) the run took 141 s instead of 146 s. A
# short run (the 34-image demo) is quicker still with C1 alone: 9.7 s instead of 10.9 s, but
# C1's Parquet writer is 2.5× slower, so only below SHORT_RUN_IMAGES.
HOT_ONLY_C2 = (
    "-XX:Tier4InvocationThreshold=100000 -XX:Tier4MinInvocationThreshold=60000 "
    "-XX:Tier4CompileThreshold=150000 -XX:Tier4BackEdgeThreshold=400000"
)
C1_ONLY = "-XX:TieredStopAtLevel=1"
SHORT_RUN_IMAGES = 1000

# Class-data sharing: Spark loads ~18,000 classes, each read from a jar and verified, in every
# run. Java keeps those of one run in an archive mapped by the next (the 34-image demo: ~10.5 s
# → ~7.5 s). It is written when that JVM exits, so it is published (renamed) only once the JVM
# has exited cleanly: a truncated archive crashes the JVM that maps it. Its log lines (an
# archive from another Java is ignored with a warning) are off.
QUIET_CDS = "-Xlog:cds=off,cds+dynamic=off"
NO_ARCHIVE_ENV = "P8_NO_CLASS_ARCHIVE"


def jit_options(*, short: bool = False) -> str:
    """The JIT options for a JVM that shares its cores with the Python workers."""
    return C1_ONLY if short else HOT_ONLY_C2


def jit_of(spark: SparkSession) -> list[str]:
    """The JIT options the driver's JVM runs with (as it reports them: what was applied)."""
    return [a for a in _arguments(spark) if a.startswith(("-XX:Tier4", "-XX:TieredStop"))]


def archive_of(spark: SparkSession) -> str | None:
    """The class archive the driver's JVM was started with, if any."""
    found = [a for a in _arguments(spark) if a.startswith("-XX:SharedArchiveFile=")]
    return found[-1].removeprefix("-XX:SharedArchiveFile=") if found else None


def _arguments(spark: SparkSession) -> list[str]:
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    bean = jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    return [str(a) for a in bean.getInputArguments()]


def class_archive() -> Path:
    """This Java's and this pyspark's archive: ``$P8_CACHE_DIR/jvm/<key>.jsa`` (or
    ``~/.cache/p8/jvm``), keyed by the java binary and pyspark's jars folder (paths and times:
    Java ignores an archive whose jars have changed, so a reinstall makes a new one)."""
    from p8lib.engine import cache_root

    key = hashlib.sha256(json.dumps(_sources()).encode()).hexdigest()[:16]
    return cache_root() / "jvm" / f"{key}.jsa"


def _sources() -> dict[str, str]:
    """The java binary and pyspark's jars folder an archive is made from, with their times."""
    import pyspark

    found = {"java": _java(), "jars": Path(pyspark.__file__).parent / "jars"}
    return {
        **{name: str(path) for name, path in found.items()},
        **{f"{name}_time": _mtime(path) for name, path in found.items()},
    }


def _mtime(path: Path) -> str:
    return str(path.stat().st_mtime_ns) if path.exists() else "gone"


def _still_there(made_from: dict[str, str]) -> bool:
    """Whether the java binary and the jars an archive was made from are there, unchanged."""
    return all(
        made_from.get(f"{name}_time", "gone") == _mtime(Path(made_from.get(name, "/nonexistent")))
        for name in ("java", "jars")
    )


def archive_options() -> tuple[str, Path | None]:
    """The JVM options that map this machine's class archive, or that write it at exit when
    there is none yet (then the path it is written to, to :func:`publish_at_exit`)."""
    if os.environ.get(NO_ARCHIVE_ENV):
        return "", None
    archive = class_archive()
    archive.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(archive.parent)
    if archive.is_file():
        return f"-XX:SharedArchiveFile={archive} {QUIET_CDS}", None
    staged = archive.with_name(f".{archive.name}.{os.getpid()}")
    return f"-XX:ArchiveClassesAtExit={staged} {QUIET_CDS}", staged


def _remove_stale(folder: Path) -> None:
    """Archives staged by processes that are gone (a killed process, a notebook kernel), and
    archives of a Java or pyspark no longer there or reinstalled (a deleted environment)."""
    for staged in folder.glob(".*.jsa.*"):
        pid = staged.suffix.lstrip(".")
        if pid.isdigit() and not _alive(int(pid)):
            staged.unlink(missing_ok=True)
    for record in folder.glob("*.json"):
        try:
            made_from = json.loads(record.read_text())
        except (OSError, ValueError):
            made_from = {}
        if not _still_there(made_from):
            record.with_suffix(".jsa").unlink(missing_ok=True)
            record.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def usable(archive: Path) -> bool:
    """Whether a JVM maps ``archive`` without crashing (a truncated one kills it: SIGBUS)."""
    options = [f"-XX:SharedArchiveFile={archive}", *QUIET_CDS.split(), "-version"]
    with tempfile.TemporaryDirectory() as crash_logs:  # a crash writes hs_err_pid*.log here
        try:
            check = subprocess.run(
                [str(_java()), *options], capture_output=True, timeout=60, cwd=crash_logs
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return check.returncode == 0


def _java() -> Path:
    """The java binary Spark will run: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else Path(shutil.which("java") or "java")
    return java.resolve()


def publish_at_exit(
    spark: SparkSession, staged: Path, *, abandon: Callable[[], bool] = lambda: False
) -> None:
    """When this process exits: let the JVM exit (its stdin closed, as when Python quits), wait
    for it to write ``staged``, and publish it if the JVM exited cleanly. If ``abandon()`` says
    so then (an interrupted command: quit now), the JVM is killed and nothing is written."""
    proc = getattr(spark.sparkContext._gateway, "proc", None)
    if not isinstance(proc, subprocess.Popen) or proc.stdin is None:
        return
    target = class_archive()

    def publish() -> None:
        if abandon():
            proc.kill()
            staged.unlink(missing_ok=True)
            return
        try:
            spark.stop()
            proc.stdin.close()  # type: ignore[union-attr]
            done = proc.wait(timeout=120) == 0
        except (OSError, ValueError, subprocess.TimeoutExpired):
            done = False
        if done and staged.is_file() and usable(staged):
            target.with_suffix(".json").write_text(json.dumps(_sources()))
            os.replace(staged, target)
        else:
            staged.unlink(missing_ok=True)

    atexit.register(publish)

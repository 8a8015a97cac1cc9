"""Where results may go: never over the inputs, never over what p8 did not write, one writer
at a time, and nothing left behind by an interrupted run.

The rules, for ``p8 run --output`` and ``p8 train --model`` alike:

- the output may not equal, contain or lie inside an input (symlinks resolved; S3 prefixes
  compared by bucket and key folders) — checked before Spark starts;
- an existing, non-empty output is replaced (``--mode overwrite``) or updated
  (``--mode incremental``) only when an earlier p8 command of the same kind wrote it, which its
  marker file shows (``manifest.json`` for a run, ``model.json`` for a model);
- a lock file beside the output (``.NAME.lock``) lets one command write it at a time; a lock
  whose process is gone (same host) or silent for :data:`STALE_AFTER` seconds is taken over;
- staging folders (``.NAME.tmp-RUNID``) of runs that died are removed by the next run, and a
  previous result that a dying run had moved aside (``.NAME.old-RUNID``) is put back.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from p8lib import io
from p8lib.errors import P8Error, UsageError
from p8lib.s3 import S3Location

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# A lock is rewritten every HEARTBEAT seconds; one unchanged for STALE_AFTER is abandoned.
HEARTBEAT = 30.0
STALE_AFTER = 180.0


def _parts(uri: str) -> tuple[str, tuple[str, ...]]:
    """(where, path components) for comparing locations: symlinks resolved for local paths."""
    if io.scheme(uri) == "file":
        real = os.path.realpath(io.local_path(uri))
        return "file", PurePosixPath(real).parts
    if io.is_s3(uri):
        location = S3Location.parse(uri)
        return f"s3:{location.bucket}", tuple(p for p in location.prefix.split("/") if p)
    scheme, _, rest = uri.partition("://")
    return scheme, tuple(p for p in rest.split("/") if p)


def check_separate(output: str, inputs: dict[str, str], *, flag: str) -> None:
    """Refuse (exit 2) an ``output`` that equals, contains or lies inside one of ``inputs``.

    ``inputs`` maps each input's flag (``--images``) to its normalized URI.

    Examples
    --------
    >>> check_separate("s3a://b/Test/out", {"--images": "s3a://b/Test"}, flag="--output")
    Traceback (most recent call last):
    ...
    p8lib.errors.UsageError: --output s3a://b/Test/out lies inside --images s3a://b/Test: results \
must go to a folder of their own, outside the inputs
    >>> check_separate("s3a://b/data/Results", {"--images": "s3a://b/data/Test"}, flag="--output")
    """
    where, out = _parts(output)
    for name, uri in inputs.items():
        other_where, inp = _parts(uri)
        if other_where != where:
            continue
        relation = (
            "is"
            if out == inp
            else "lies inside"
            if out[: len(inp)] == inp
            else "contains"
            if inp[: len(out)] == out
            else None
        )
        if relation:
            raise UsageError(
                f"{flag} {output} {relation} {name} {uri}: results must go to a folder of their "
                "own, outside the inputs"
            )


def check_writable(output: str, *, flag: str) -> None:
    """Before Spark starts: an S3 output names a prefix, a local one's parent can be written."""
    if io.is_s3(output):
        if not _parts(output)[1]:
            raise UsageError(
                f"{flag} {output} is a bucket root: give a prefix, e.g. {output}/results"
            )
        return
    if io.scheme(output) != "file":
        return
    path = io.local_path(output)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder: choose another {flag}")
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not existing.is_dir():
        raise P8Error(f"cannot write {flag} {path}: {existing} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.probe-"))
    except OSError as exc:
        raise P8Error(
            f"cannot write {flag} {path}: {exc.strerror or exc} ({exc.filename or path.parent})"
        ) from None


def check_replaceable(
    spark: SparkSession, output: str, *, marker: str, mode: str, flag: str, kind: str
) -> None:
    """Refuse (exit 2) to write over an existing output unless ``mode`` allows it and an earlier
    p8 command wrote it (``marker`` is in it)."""
    if not io.exists(spark, output) or io.is_empty_dir(spark, output):
        return
    if not io.exists(spark, f"{output}/{marker}"):
        raise UsageError(
            f"{flag} {output} already exists and holds no {kind} ({marker} is missing), so p8 "
            f"will not replace it: choose another {flag}, or move its contents away yourself"
        )
    if mode == "error":
        modes = "--mode overwrite" + (
            " (or --mode incremental)" if marker == "manifest.json" else ""
        )
        raise UsageError(
            f"{flag} {output} already exists and holds an earlier {kind}: pass {modes} to "
            f"replace it, or choose another {flag}"
        )


def _lock_uri(output: str) -> str:
    return io.hidden_sibling(output, ".lock")


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the process that wrote a lock still runs (or, elsewhere, still beats)."""
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError):
            return True
        return True
    beat = holder.get("heartbeat", 0.0)
    return isinstance(beat, int | float) and time.time() - beat < STALE_AFTER


def _read_lock(spark: SparkSession, uri: str) -> dict[str, Any] | None:
    try:
        found = json.loads(io.read_bytes(spark, uri))
    except Exception:  # gone in between, or half-written: nobody holds it
        return None
    return found if isinstance(found, dict) else None


@contextmanager
def output_lock(
    spark: SparkSession,
    output: str,
    *,
    run_id: str,
    command: str,
    log: Callable[[str], None],
) -> Iterator[None]:
    """Hold the lock of ``output`` for the block: exit 1 if another live p8 command holds it."""
    uri = _lock_uri(output)
    me = {
        "run_id": run_id,
        "command": command,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(),
    }
    for attempt in range(10):
        holder = _read_lock(spark, uri)
        if holder is None and attempt >= 4 and io.exists(spark, uri):
            # Unreadable for 2 s: half-written by a command killed as it took the lock.
            log("removing an unreadable lock, left by a p8 command killed as it started")
            io.delete(spark, uri)
        elif holder and holder.get("run_id") != run_id:
            if _alive(holder):
                raise P8Error(
                    f"{output} is being written by another p8 command: {holder.get('command')} "
                    f"run {holder.get('run_id')} (pid {holder.get('pid')} on {holder.get('host')}"
                    f", started {holder.get('started_at')}); wait for it to finish, or choose "
                    "another output"
                )
            log(f"taking over the lock of run {holder.get('run_id')}, which is no longer running")
            io.delete(spark, uri)
        if io.create_new(spark, uri, json.dumps({**me, "heartbeat": time.time()}).encode()):
            time.sleep(0.2 if io.is_s3(uri) else 0.0)  # S3 has no exclusive create: read back
            if (_read_lock(spark, uri) or {}).get("run_id") == run_id:
                break
        time.sleep(0.5)  # being written, or just taken by another command: look again
    else:
        raise P8Error(f"could not lock {output}: another p8 command keeps taking it")
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(spark, uri, me, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        try:
            if (_read_lock(spark, uri) or {}).get("run_id") == run_id:
                io.delete(spark, uri)
        except Exception:
            pass  # the store is gone (a failed S3 server): the next run finds the lock stale


def _heartbeat(spark: SparkSession, uri: str, me: dict[str, Any], stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        try:
            io.write_bytes(spark, uri, json.dumps({**me, "heartbeat": time.time()}).encode())
        except Exception:
            pass  # the write itself will fail and say why


def recover_interrupted(spark: SparkSession, output: str, *, log: Callable[[str], None]) -> None:
    """Clean up after runs that died writing ``output`` (call while holding its lock)."""
    for name in io.hidden_siblings(spark, output):
        uri = io.beside(output, name)
        if io.remove_empty_dir(spark, uri):
            continue  # an empty prefix some S3 servers keep after a move: nothing to say
        if ".tmp-" in name:
            io.delete(spark, uri)
            log(f"removed {name}, the unfinished results of an interrupted run")
        elif ".old-" in name and (
            not io.exists(spark, output) or io.remove_empty_dir(spark, output)
        ):
            io.rename(spark, uri, output)
            log(f"restored the previous results from {name}, moved aside by an interrupted run")
        elif ".old-" in name:
            io.delete(spark, uri)
            log(f"removed {name}, previous results an interrupted run had replaced")

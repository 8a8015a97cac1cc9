"""The frame of every command that writes results: run id, places, session, output, stages.

A command is a short sequence of named steps inside a :class:`Job`::

    job = Job.start("p8 run", log)
    places = job.locate(inputs={"--images": config.images}, output=("--output", config.output),
                        s3_endpoint=config.s3_endpoint)
    spark = job.session(config, uses_s3=places.uses_s3, spark=spark)
    with job.output(spark, places.output, marker=MANIFEST, mode=config.mode, ...) as staged:
        with job.stage("featurize", "featurizing 34 images"):
            ...

``locate`` settles every URI and refuses a bad output before Spark starts; ``output`` takes the
output's lock, cleans up after interrupted runs, and yields a staging folder published whole
when the block ends (deleted if it fails); ``stage`` times a stage and says it.
"""

from __future__ import annotations

import json
import platform
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any

from py4j.protocol import Py4JJavaError

from p8lib import __version__, io, outputs, s3
from p8lib.config import SparkSettings
from p8lib.errors import P8Error
from p8lib.progress import POLL_SECONDS, Reporter, duration, watching
from p8lib.session import INTERRUPTED, build_session, configure_s3, on_emr

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

VERSIONED = ["pyspark", "tensorflow-cpu", "keras", "numpy", "pandas", "pyarrow", "pillow"]


def versions() -> dict[str, str]:
    """Python's, p8lib's and the main libraries' versions (for a manifest)."""
    out = {"python": platform.python_version(), "p8lib": __version__}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass(frozen=True)
class Places:
    """A command's normalized URIs: its inputs by flag, and its output."""

    inputs: dict[str, str]
    output: str

    @property
    def uses_s3(self) -> bool:
        return any(io.is_s3(u) for u in (*self.inputs.values(), self.output))


@dataclass
class Job:
    """One command's run: its id, clock, log and the seconds each stage took."""

    command: str
    log: Callable[[str], None]
    run_id: str
    started: datetime
    t0: float
    seconds: dict[str, float] = field(default_factory=dict)
    current: str = "starting"
    quiet: bool = False  # no log given: no lines, no progress
    live: bool = False  # progress redrawn in place (a terminal) rather than plain lines

    @classmethod
    def start(
        cls, command: str, log: Callable[[str], None] | None = None, *, live: bool = False
    ) -> Job:
        started = datetime.now(UTC)
        run_id = f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        say = log or (lambda _msg: None)
        return cls(command, say, run_id, started, time.perf_counter(), quiet=log is None, live=live)

    def locate(
        self, *, inputs: dict[str, str | None], output: tuple[str, str], s3_endpoint: str | None
    ) -> Places:
        """Normalize the URIs; refuse an output over an input or not writable, and unreachable
        buckets — all before Spark starts."""
        emr = on_emr()
        found = {flag: io.normalize_uri(u, emr=emr) for flag, u in inputs.items() if u}
        flag, raw = output
        out = io.normalize_uri(raw, emr=emr)
        outputs.check_separate(out, found, flag=flag)
        outputs.check_writable(out, flag=flag)
        for uri in [u for u in (*found.values(), out) if io.is_s3(u)]:
            s3.check_bucket(uri, endpoint=s3_endpoint)
        return Places(found, out)

    def session(
        self,
        settings: SparkSettings,
        *,
        uses_s3: bool,
        spark: SparkSession | None = None,
        verbose: bool = False,
        driver_memory: str = "2g",
        short: bool = False,
    ) -> SparkSession:
        """``spark`` (a kernel's session) configured for S3 if needed, or a new one (with
        ``driver_memory`` on a local master, unless ``--conf`` says otherwise; ``short``: a job
        of seconds, see :func:`p8lib.jvm.jit_options`)."""
        if spark is None:
            return build_session(
                master=settings.master,
                conf=settings.spark_conf,
                s3=uses_s3,
                s3_endpoint=settings.s3_endpoint,
                verbose=verbose,
                driver_memory=driver_memory,
                short=short,
            )
        if uses_s3:
            configure_s3(spark, settings.s3_endpoint)
        return spark

    @contextmanager
    def output(
        self, spark: SparkSession, uri: str, *, marker: str, mode: str, flag: str, kind: str
    ) -> Iterator[str]:
        """The output's lock and a staging folder, published whole when the block ends.

        Refuses an existing output ``mode`` does not allow to replace, or that no p8 command
        wrote (no ``marker``); a Spark failure becomes one line that says the previous output
        is unchanged.
        """
        outputs.check_replaceable(spark, uri, marker=marker, mode=mode, flag=flag, kind=kind)
        with outputs.output_lock(
            spark, uri, run_id=self.run_id, command=self.command, log=self.log
        ):
            outputs.recover_interrupted(spark, uri, log=self.log)
            try:
                with io.staging(spark, uri, run_id=self.run_id, what=kind) as staged:
                    yield staged
            except Py4JJavaError as exc:
                raise P8Error(
                    f"the {self.command} failed while {self.current}: {io.java_cause(exc)} "
                    f"(the previous {kind} at {uri}, if any, is unchanged)"
                ) from None

    @contextmanager
    def stage(self, name: str, message: str, *, said: bool = True) -> Iterator[None]:
        """Time the block as ``name``; say ``message`` when it starts and again with its time
        when it ends (``said=False``: the stage's progress lines say it). Stops here after a
        Ctrl-C."""
        if INTERRUPTED.is_set():  # Ctrl-C between two Spark jobs: stop before the next one
            raise KeyboardInterrupt
        if said:
            self.log(message)
        self.current = message
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        if said:
            self.log(f"{message}: {duration(self.seconds[name])}")

    @contextmanager
    def progress(
        self, what: str, total: int, unit: str, read: Callable[[], tuple[int, int]]
    ) -> Iterator[Reporter]:
        """Report ``read()`` → (done, failed) against ``total`` while the block runs (see
        :mod:`p8lib.progress`); the block calls ``finish`` on what it yields."""
        reporter = Reporter(what, total, unit, log=None if self.quiet else self.log, live=self.live)
        with watching(reporter, read, every=None if self.quiet else POLL_SECONDS):
            try:
                yield reporter
            finally:
                reporter.close()

    def timings(self) -> dict[str, float]:
        """Each stage's seconds and the total so far."""
        return dict(self.seconds, total=round(time.perf_counter() - self.t0, 3))


def write_json(spark: SparkSession, uri: str, record: Any) -> None:
    """A record with ``to_json`` (or a plain dict) written as indented JSON."""
    data = record.to_json() if hasattr(record, "to_json") else json.dumps(record, indent=2).encode()
    io.write_bytes(spark, uri, data)

"""run(...) -> RunResult: read → featurize → reduce → write, timed, with a run manifest."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from py4j.protocol import Py4JJavaError

from p8lib import __version__, io, outputs, plots, s3
from p8lib.config import FEATURE_DIM, RunConfig
from p8lib.errors import P8Error, UsageError
from p8lib.featurize import COLOR_DESCRIPTOR, featurize_column, resolve_weights
from p8lib.listing import IMAGE_EXTENSIONS, Listing
from p8lib.reduce import fit_reduce, max_k
from p8lib.session import INTERRUPTED, build_session, configure_s3, on_emr

if TYPE_CHECKING:
    from pyspark import Accumulator
    from pyspark.sql import DataFrame, SparkSession

PARQUET = "features.parquet"
PLOT = "explained_variance.png"
MANIFEST = "manifest.json"
OUTPUT_COLUMNS = [
    "path",
    "label",
    "features",
    "pca_features",
    "color",
    "error",
    "size",
    "modification_time",
]
VERSIONED = ["pyspark", "tensorflow-cpu", "keras", "numpy", "pandas", "pyarrow", "pillow"]


@dataclass
class RunResult:
    """What a run produced and measured."""

    output: str
    images: int
    featurized: int
    failed: int
    k: int
    variance_reached: float
    seconds: dict[str, float]
    manifest: dict[str, Any] = field(repr=False)
    notes: list[str] = field(default_factory=list)  # files left out of the listing, and why

    @property
    def parquet(self) -> str:
        """URI of the parquet results."""
        return f"{self.output}/{PARQUET}"

    @property
    def plot(self) -> str:
        """URI of the explained-variance PNG."""
        return f"{self.output}/{PLOT}"

    def summary(self) -> str:
        """A few lines for the end of a run: counts, files left out, where the results are."""
        reused = self.manifest.get("counts", {}).get("reused", 0)
        done = f"{self.featurized} featurized, " + (f"{reused} reused, " if reused else "")
        return "\n".join(
            [
                f"{self.images} images ({done}{self.failed} failed) → "
                f"k = {self.k} components, {self.variance_reached:.1%} of the variance, "
                f"{self.seconds['total']:.1f} s",
                *self.notes,
                f"results: {self.output}/ ({PARQUET}, {PLOT}, {MANIFEST})",
            ]
        )


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "p8lib": __version__}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class _Timer:
    def __init__(self, log: Callable[[str], None]) -> None:
        self.seconds: dict[str, float] = {}
        self.log = log
        self.current = "starting"

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        if INTERRUPTED.is_set():  # Ctrl-C between two Spark jobs: stop before the next one
            raise KeyboardInterrupt
        self.log(message)
        self.current = message
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)


def input_partitions(n_images: int, spark: SparkSession) -> int:
    """How many tasks to featurize ``n_images`` in: at least 256 images each, up to 16 per core.

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> spark = NS(sparkContext=NS(defaultParallelism=2))
    >>> [input_partitions(n, spark) for n in (34, 2000, 8000, 23619)]
    [2, 7, 31, 32]
    """
    cores = spark.sparkContext.defaultParallelism
    return max(cores, min(16 * cores, n_images // 256))


def _counts(features: DataFrame) -> dict[str, Any]:
    """Counts from the rows themselves (a retried task adds nothing): one Spark pass."""
    from pyspark.sql import functions as F

    reason = F.split(F.col("error"), ":").getItem(0)
    rows = features.groupBy("_reused", reason.alias("reason")).count().collect()
    failed: Counter[str] = Counter()
    total = featurized = reused = 0
    for row in rows:
        total += row["count"]
        reused += row["count"] if row["_reused"] else 0
        if row["reason"] is not None:
            failed[row["reason"]] += row["count"]
        elif not row["_reused"]:
            featurized += row["count"]
    n_failed = sum(failed.values())
    return {
        "images": total,
        "featurized": featurized,
        "reused": reused,
        "succeeded": total - n_failed,
        "failed": n_failed,
        "failed_by_reason": dict(failed),
    }


def run(
    *,
    images: str,
    output: str,
    k: int | None = None,
    variance: float = 0.99,
    glob: str | None = None,
    master: str = "local[*]",
    weights: str = "imagenet",
    image_size: int = 224,
    batch_size: int = 32,
    mode: str = "error",
    s3_endpoint: str | None = None,
    spark_conf: dict[str, str] | None = None,
    spark: SparkSession | None = None,
    log: Callable[[str], None] | None = None,
    verbose: bool = False,
) -> RunResult:
    """Featurize every image under ``images`` and write the results to ``output``.

    See :class:`p8lib.config.RunConfig` for the settings. ``spark``: a session to use (an EMR
    kernel's); otherwise one is built for ``master``. ``log`` receives one line per stage.
    """
    config = RunConfig(
        images=images,
        output=output,
        k=k,
        variance=variance,
        glob=glob,
        master=master,
        weights=weights,
        image_size=image_size,
        batch_size=batch_size,
        mode=mode,  # type: ignore[arg-type]
        s3_endpoint=s3_endpoint,
        spark_conf=dict(spark_conf or {}),
    )
    return execute(config, spark=spark, log=log, verbose=verbose)


class Featurization(NamedTuple):
    """What a run's rows were computed with (None: not recorded, an older run)."""

    weights_sha256: str | None
    image_size: int | None
    color: str | None  # the colour histogram's COLOR_DESCRIPTOR


def featurized_with(manifest: dict[str, Any]) -> Featurization:
    """The weights' sha256, the image size and the colour histogram a run's rows came from."""
    return Featurization(
        weights_sha256=manifest.get("inputs", {}).get("weights_sha256"),
        image_size=manifest.get("config", {}).get("image_size"),
        color=manifest.get("inputs", {}).get("color"),
    )


def _previous_features(
    spark: SparkSession,
    output_uri: str,
    *,
    config: RunConfig,
    plan: _Plan,
    log: Callable[[str], None],
) -> DataFrame | None:
    """The rows of the last run that can be reused (same weights, size, histogram), or None."""
    if not io.exists(spark, f"{output_uri}/{MANIFEST}"):
        return None
    previous = json.loads(io.read_bytes(spark, f"{output_uri}/{MANIFEST}"))
    if featurized_with(previous) != Featurization(
        plan.weights_sha256, config.image_size, COLOR_DESCRIPTOR
    ):
        log(
            "the previous results used other weights, image size or colour histogram: "
            "featurizing everything"
        )
        return None
    return spark.read.parquet(f"{output_uri}/{PARQUET}").select(
        "path", "size", "modification_time", "features", "color", "error"
    )


def _featurize(
    images: DataFrame,
    previous: DataFrame | None,
    *,
    config: RunConfig,
    plan: _Plan,
    counter: Accumulator[int],
) -> DataFrame:
    """path, label, size, modification_time, features, color, error, _reused — reusing the
    rows of unchanged images; the others' bytes are read and featurized by the executors."""
    from pyspark.sql import functions as F

    keys = ["path", "size", "modification_time"]
    todo = images
    reused = None
    if previous is not None:
        # Same path, size and modification time: the image is unchanged, keep its features.
        reused = images.join(previous, on=keys, how="inner").withColumn("_reused", F.lit(True))
        todo = images.join(reused.select(*keys), on=keys, how="left_anti")
    result = featurize_column(
        io.file_content(F.col("path"), s3_endpoint=config.s3_endpoint),
        weights=plan.weights,
        suffix=plan.weights_path.suffix,
        image_size=config.image_size,
        batch_size=config.batch_size,
        counter=counter,
    )
    fresh = todo.select(*todo.columns, result.alias("_r")).select(
        *keys, "label", "_r.features", "_r.color", "_r.error", F.lit(False).alias("_reused")
    )
    return fresh if reused is None else fresh.unionByName(reused)


@dataclass(frozen=True)
class _Plan:
    """What a run will read and where it will write, settled before Spark starts."""

    images_uri: str
    output_uri: str
    listing: Listing
    weights_path: Path
    weights: bytes
    weights_sha256: str


def _plan(config: RunConfig) -> _Plan:
    """URIs, the output rules, the input listing and the weights: all before Spark starts."""
    emr = on_emr()
    images_uri = io.normalize_uri(config.images, emr=emr)
    output_uri = io.normalize_uri(config.output, emr=emr)
    outputs.check_separate(output_uri, {"--images": images_uri}, flag="--output")
    outputs.check_writable(output_uri, flag="--output")
    for uri in [u for u in (images_uri, output_uri) if io.is_s3(u)]:
        s3.check_bucket(uri, endpoint=config.s3_endpoint)
    if io.scheme(images_uri) == "file":
        local = io.local_path(images_uri)
        if not local.exists():
            raise UsageError(f"input not found: {config.images}")
        if not local.is_dir():
            raise UsageError(
                f"--images {config.images} is a file: give the folder that holds the images"
            )
    listing = io.list_images(images_uri, glob=config.glob, s3_endpoint=config.s3_endpoint)
    _check_listing(listing, config)
    weights_path = resolve_weights(config.weights)
    weights = weights_path.read_bytes()
    digest = hashlib.sha256(weights).hexdigest()
    return _Plan(images_uri, output_uri, listing, weights_path, weights, digest)


def _check_listing(listing: Listing, config: RunConfig) -> None:
    """Enough images for PCA, and a k the data allows."""
    n = len(listing.files)
    what = "image files" if config.glob is None else f"files matching {config.glob!r}"
    skipped = f" ({'; '.join(listing.notes())})" if listing.notes() else ""
    if n == 0:
        raise UsageError(f"no {what} under {config.images}{skipped}")
    if n < 2:
        raise UsageError(
            f"only 1 of the {what} under {config.images}: PCA needs at least 2 images{skipped}"
        )
    if config.k is not None and config.k > max_k(n, FEATURE_DIM):
        raise UsageError(
            f"--k {config.k} is larger than the data allows: {n} images give at most "
            f"{max_k(n, FEATURE_DIM)} components"
        )


def execute(
    config: RunConfig,
    *,
    spark: SparkSession | None = None,
    log: Callable[[str], None] | None = None,
    verbose: bool = False,
) -> RunResult:
    """Run the pipeline for a validated :class:`RunConfig`."""
    say = log or (lambda _msg: None)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    run_id = f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    plan = _plan(config)
    if spark is None:
        spark = build_session(
            master=config.master,
            conf=config.spark_conf,
            s3=any(io.is_s3(u) for u in (plan.images_uri, plan.output_uri)),
            s3_endpoint=config.s3_endpoint,
            verbose=verbose,
        )
    elif io.is_s3(plan.images_uri) or io.is_s3(plan.output_uri):
        configure_s3(spark, config.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL"))
    outputs.check_replaceable(
        spark,
        plan.output_uri,
        marker=MANIFEST,
        mode=config.mode,
        flag="--output",
        kind="p8 run results",
    )
    with outputs.output_lock(spark, plan.output_uri, run_id=run_id, command="p8 run", log=say):
        outputs.recover_interrupted(spark, plan.output_uri, log=say)
        timer = _Timer(say)
        try:
            manifest = _stages(
                spark, config, plan, timer=timer, run_id=run_id, log=say, started=started, t0=t0
            )
        except Py4JJavaError as exc:
            raise P8Error(
                f"the run failed while {timer.current}: {io.java_cause(exc)} "
                f"(the previous results at {plan.output_uri}, if any, are unchanged)"
            ) from None
    counts, pca = manifest["counts"], manifest["pca"]
    return RunResult(
        output=plan.output_uri,
        images=counts["images"],
        featurized=counts["featurized"],
        failed=counts["failed"],
        k=pca["k"],
        variance_reached=pca["variance_reached"],
        seconds=manifest["seconds"],
        manifest=manifest,
        notes=plan.listing.notes(),
    )


def _stages(
    spark: SparkSession,
    config: RunConfig,
    plan: _Plan,
    *,
    timer: _Timer,
    run_id: str,
    log: Callable[[str], None],
    started: datetime,
    t0: float,
) -> dict[str, Any]:
    """read → featurize → reduce → write into a staging folder, published whole at the end."""
    from pyspark import StorageLevel

    features = None
    n_images = len(plan.listing.files)
    try:
        with io.staging(spark, plan.output_uri, run_id=run_id, what="output") as staged:
            with timer.stage("read", f"listing {n_images} images under {plan.images_uri}"):
                parts = input_partitions(n_images, spark)
                images = io.read_images(spark, plan.listing, partitions=parts)
                previous = None
                if config.mode == "incremental":
                    previous = _previous_features(
                        spark, plan.output_uri, config=config, plan=plan, log=log
                    )
            with timer.stage("featurize", f"featurizing {n_images} images with MobileNetV2"):
                counter = spark.sparkContext.accumulator(0)
                # Persisted so the network runs once per image, not once per downstream action.
                features = _featurize(
                    images, previous, config=config, plan=plan, counter=counter
                ).persist(StorageLevel.MEMORY_AND_DISK)
                counts = _counts(features)
            with timer.stage("reduce", "fitting StandardScaler + PCA"):
                reduction = fit_reduce(features, k=config.k, variance=config.variance)
            with timer.stage("write", f"writing results to {plan.output_uri}"):
                _write(spark, features, reduction, config=config, staged=staged)
            manifest = _manifest(spark, config, plan, run_id=run_id, counts=counts)
            manifest["started_at"] = started.isoformat()
            manifest["inference_images"] = int(counter.value)
            manifest["pca"] = _pca_record(reduction, config)
            manifest["seconds"] = dict(timer.seconds, total=round(time.perf_counter() - t0, 3))
            text = json.dumps(manifest, indent=2).encode()
            io.write_bytes(spark, f"{staged}/{MANIFEST}", text)
    finally:
        if features is not None:
            features.unpersist()
    return manifest


def _write(
    spark: SparkSession, features: DataFrame, reduction: Any, *, config: RunConfig, staged: str
) -> None:
    """The parquet table and the explained-variance figure."""
    # A few large tasks: the projection is cheap, per-task and per-file costs are not.
    parts = spark.sparkContext.defaultParallelism
    table = reduction.transform(features.coalesce(parts)).select(*OUTPUT_COLUMNS)
    table.write.parquet(f"{staged}/{PARQUET}")
    figure = plots.explained_variance_figure(
        reduction.explained_variance,
        k=reduction.k,
        threshold=None if config.k is not None else config.variance,
    )
    io.write_bytes(spark, f"{staged}/{PLOT}", plots.to_png(figure))


def _pca_record(reduction: Any, config: RunConfig) -> dict[str, Any]:
    return {
        "k": reduction.k,
        "variance_threshold": None if config.k is not None else config.variance,
        "variance_reached": reduction.variance_reached,
        "explained_variance": [float(v) for v in reduction.explained_variance],
    }


def _manifest(
    spark: SparkSession, config: RunConfig, plan: _Plan, *, run_id: str, counts: dict[str, Any]
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "finished_at": datetime.now(UTC).isoformat(),
        "config": config.as_dict(),
        "inputs": {
            "images": plan.images_uri,
            "glob": config.glob,
            "extensions": None if config.glob else list(IMAGE_EXTENSIONS),
            "weights": str(plan.weights_path),
            "weights_sha256": plan.weights_sha256,
            "color": COLOR_DESCRIPTOR,
        },
        "outputs": {"parquet": PARQUET, "plot": PLOT, "manifest": MANIFEST, "uri": plan.output_uri},
        "counts": counts,
        "listing": plan.listing.counts(),
        "spark": {
            "master": spark.sparkContext.master,
            "version": spark.version,
            "default_parallelism": spark.sparkContext.defaultParallelism,
        },
        "versions": _versions(),
    }

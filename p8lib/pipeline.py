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

from p8lib import __version__, io, plots, s3
from p8lib.config import RunConfig
from p8lib.errors import UsageError
from p8lib.featurize import COLOR_DESCRIPTOR, featurize_column, resolve_weights
from p8lib.reduce import fit_reduce, max_k
from p8lib.session import build_session, configure_s3, on_emr

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

    @property
    def parquet(self) -> str:
        """URI of the parquet results."""
        return f"{self.output}/{PARQUET}"

    @property
    def plot(self) -> str:
        """URI of the explained-variance PNG."""
        return f"{self.output}/{PLOT}"

    def summary(self) -> str:
        """Two lines for the end of a run."""
        return (
            f"{self.images} images ({self.featurized} featurized, {self.failed} failed) → "
            f"k = {self.k} components, {self.variance_reached:.1%} of the variance, "
            f"{self.seconds['total']:.1f} s\n"
            f"results: {self.output}/ ({PARQUET}, {PLOT}, {MANIFEST})"
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

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        self.log(message)
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


def _error_reasons(df: DataFrame) -> dict[str, int]:
    from pyspark.sql import functions as F

    rows = df.where(F.col("error").isNotNull()).groupBy("error").count().collect()
    reasons: Counter[str] = Counter()
    for row in rows:
        reasons[row["error"].split(":")[0]] += row["count"]
    return dict(reasons)


def run(
    *,
    images: str,
    output: str,
    k: int | None = None,
    variance: float = 0.99,
    glob: str = "*.jpg",
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
    weights_sha256: str,
    log: Callable[[str], None],
) -> DataFrame | None:
    """The rows of the last run that can be reused (same weights, size, histogram), or None."""
    if not io.exists(spark, f"{output_uri}/{MANIFEST}"):
        return None
    previous = json.loads(io.read_bytes(spark, f"{output_uri}/{MANIFEST}"))
    if featurized_with(previous) != Featurization(
        weights_sha256, config.image_size, COLOR_DESCRIPTOR
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
    weights: bytes,
    suffix: str,
    counter: Accumulator[int],
) -> DataFrame:
    """path, label, size, modification_time, features, color, error — reusing unchanged rows."""
    from pyspark.sql import functions as F

    keys = ["path", "size", "modification_time"]
    listing = images.select("path", "label", "size", "modification_time")
    todo = images
    reused = None
    if previous is not None:
        # Same path, size and modification time: the image is unchanged, keep its features.
        reused = listing.join(previous, on=keys, how="inner")
        todo = images.join(reused.select(*keys), on=keys, how="left_anti")
    result = featurize_column(
        F.col("content"),
        weights=weights,
        suffix=suffix,
        image_size=config.image_size,
        batch_size=config.batch_size,
        counter=counter,
    )
    fresh = todo.select("path", "label", "size", "modification_time", result.alias("_r")).select(
        "path", "label", "size", "modification_time", "_r.features", "_r.color", "_r.error"
    )
    return fresh if reused is None else fresh.unionByName(reused)


def execute(
    config: RunConfig,
    *,
    spark: SparkSession | None = None,
    log: Callable[[str], None] | None = None,
    verbose: bool = False,
) -> RunResult:
    """Run the pipeline for a validated :class:`RunConfig`."""
    from pyspark import StorageLevel

    say = log or (lambda _msg: None)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    timer = _Timer(say)
    run_id = f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    emr = on_emr()
    images_uri = io.normalize_uri(config.images, emr=emr)
    output_uri = io.normalize_uri(config.output, emr=emr)
    # Local inputs are checked before anything slow starts; remote ones once Spark is up.
    if io.scheme(images_uri) == "file" and not Path(images_uri[len("file://") :]).exists():
        raise UsageError(f"input not found: {config.images}")
    uses_s3 = [uri for uri in (images_uri, output_uri) if io.is_s3(uri)]
    for uri in uses_s3:
        s3.check_bucket(uri, endpoint=config.s3_endpoint)
    weights_path = resolve_weights(config.weights)
    weights = weights_path.read_bytes()
    weights_sha256 = hashlib.sha256(weights).hexdigest()

    if spark is None:
        spark = build_session(
            master=config.master,
            conf=config.spark_conf,
            s3=bool(uses_s3),
            s3_endpoint=config.s3_endpoint,
            verbose=verbose,
        )
    elif uses_s3:
        configure_s3(spark, config.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL"))
    if not io.exists(spark, images_uri):
        raise UsageError(f"input not found: {config.images}")
    if (
        config.mode == "error"
        and io.exists(spark, output_uri)
        and not io.is_empty_dir(spark, output_uri)
    ):
        raise UsageError(
            f"output already exists: {config.output} (pass --mode overwrite to replace it)"
        )

    # Input partitions are packed by bytes, not by file count (Spark's default packs ~32 images).
    if "spark.sql.files.openCostInBytes" not in config.spark_conf:
        spark.conf.set("spark.sql.files.openCostInBytes", "0")
    with timer.stage("read", f"reading {config.glob} under {images_uri}"):
        images = io.read_images(spark, images_uri, glob=config.glob)
        n_images = images.count()
    if n_images == 0:
        raise UsageError(f"no files matching {config.glob!r} under {config.images}")
    if config.k is not None and config.k > max_k(n_images, 1280):
        raise UsageError(
            f"--k {config.k} is larger than the data allows: {n_images} images give at most "
            f"{max_k(n_images, 1280)} components"
        )
    if "spark.sql.files.minPartitionNum" not in config.spark_conf:
        # Read when the featurize query is planned, below: 256+ images per task (one Arrow batch),
        # up to 16 tasks per core so that the last round leaves no core idle for long.
        spark.conf.set("spark.sql.files.minPartitionNum", str(input_partitions(n_images, spark)))
    features = None
    try:
        # Results are written to a hidden sibling, moved in place only when whole; it is made
        # first, so an unwritable output fails before any image is featurized.
        with io.staging(spark, output_uri, run_id=run_id, what="output") as staged:
            previous = None
            if config.mode == "incremental":
                previous = _previous_features(
                    spark, output_uri, config=config, weights_sha256=weights_sha256, log=say
                )
            with timer.stage("featurize", f"featurizing {n_images} images with MobileNetV2"):
                counter = spark.sparkContext.accumulator(0)
                # Persisted so the network runs once per image, not once per downstream action.
                features = _featurize(
                    images,
                    previous,
                    config=config,
                    weights=weights,
                    suffix=weights_path.suffix,
                    counter=counter,
                ).persist(StorageLevel.MEMORY_AND_DISK)
                features.count()
                failed = _error_reasons(features)
                n_failed = sum(failed.values())

            with timer.stage("reduce", "fitting StandardScaler + PCA"):
                reduction = fit_reduce(
                    features, k=config.k, variance=config.variance, n_rows=n_images - n_failed
                )

            with timer.stage("write", f"writing results to {output_uri}"):
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

            seconds = dict(timer.seconds, total=round(time.perf_counter() - t0, 3))
            featurized = int(counter.value)
            manifest = {
                "run_id": run_id,
                "started_at": started.isoformat(),
                "finished_at": datetime.now(UTC).isoformat(),
                "config": config.as_dict(),
                "inputs": {
                    "images": images_uri,
                    "glob": config.glob,
                    "weights": str(weights_path),
                    "weights_sha256": weights_sha256,
                    "color": COLOR_DESCRIPTOR,
                },
                "outputs": {
                    "parquet": PARQUET,
                    "plot": PLOT,
                    "manifest": MANIFEST,
                    "uri": output_uri,
                },
                "counts": {
                    "images": n_images,
                    "featurized": featurized,
                    "reused": n_images - featurized if previous is not None else 0,
                    "succeeded": n_images - n_failed,
                    "failed": n_failed,
                    "failed_by_reason": failed,
                },
                "pca": {
                    "k": reduction.k,
                    "variance_threshold": None if config.k is not None else config.variance,
                    "variance_reached": reduction.variance_reached,
                    "explained_variance": [float(v) for v in reduction.explained_variance],
                },
                "spark": {
                    "master": spark.sparkContext.master,
                    "version": spark.version,
                    "default_parallelism": spark.sparkContext.defaultParallelism,
                },
                "versions": _versions(),
                "seconds": seconds,
            }
            io.write_bytes(spark, f"{staged}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
    finally:
        if features is not None:
            features.unpersist()
    return RunResult(
        output=output_uri,
        images=n_images,
        featurized=featurized,
        failed=n_failed,
        k=reduction.k,
        variance_reached=reduction.variance_reached,
        seconds=seconds,
        manifest=manifest,
    )

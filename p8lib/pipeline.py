"""run(...) -> RunResult: read → featurize → reduce → write, timed, with a run manifest."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from p8lib import augment as augmentation
from p8lib import engine, io, outputs, plan, plots
from p8lib.artifacts import (
    FEATURE_DIM,
    MANIFEST,
    OUTPUT_COLUMNS,
    PARQUET,
    PLOT,
    Counts,
    Featurization,
    Inputs,
    PcaRecord,
    RunManifest,
    read_rows,
    read_run,
)
from p8lib.config import RunConfig
from p8lib.engine import Network
from p8lib.errors import UsageError
from p8lib.featurize import (
    COLOR_DESCRIPTOR,
    COLOR_DIM,
    featurize_column,
    load_image,
    resolve_weights,
)
from p8lib.job import Job, Places, versions, write_json
from p8lib.jvm import SHORT_RUN_IMAGES, archive_of, jit_of
from p8lib.listing import IMAGE_EXTENSIONS, Listing, extension
from p8lib.progress import duration
from p8lib.reduce import Reduction, fit_reduce, max_k
from p8lib.session import on_emr, release

if TYPE_CHECKING:
    from pyspark import Accumulator
    from pyspark.sql import Column, DataFrame, SparkSession


@dataclass
class RunResult:
    """What a run produced and measured."""

    manifest: RunManifest = field(repr=False)
    notes: list[str] = field(default_factory=list)  # files left out of the listing, and why

    @property
    def output(self) -> str:
        return self.manifest.outputs["uri"]

    @property
    def images(self) -> int:
        return self.manifest.counts.images

    @property
    def featurized(self) -> int:
        return self.manifest.counts.featurized

    @property
    def failed(self) -> int:
        return self.manifest.counts.failed

    @property
    def k(self) -> int:
        return self.manifest.pca.k

    @property
    def variance_reached(self) -> float:
        return self.manifest.pca.variance_reached

    @property
    def seconds(self) -> dict[str, float]:
        return self.manifest.seconds

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
        reused = self.manifest.counts.reused
        done = f"{self.featurized} featurized, " + (f"{reused} reused, " if reused else "")
        variants = self.manifest.augmentation.get("variants")
        if variants:
            done = f"{done}{variants} photo-like variants of each, "
        return "\n".join(
            [
                f"{self.images} images ({done}{self.failed} failed) → "
                f"k = {self.k} component{'' if self.k == 1 else 's'}, "
                f"{self.variance_reached:.1%} of the variance, "
                f"{self.seconds['total']:.1f} s",
                *self.notes,
                f"results: {self.output}/ ({PARQUET}, {PLOT}, {MANIFEST})",
            ]
        )


@dataclass(frozen=True)
class _Inputs:
    """What a run reads, settled before Spark starts: the image files and the network."""

    listing: Listing
    weights_path: Path
    weights_sha256: str
    network: Network


def run(
    *,
    spark: SparkSession | None = None,
    log: Callable[[str], None] | None = None,
    verbose: bool = False,
    live: bool = False,
    **settings: Any,
) -> RunResult:
    """Featurize every image under ``images`` and write the results to ``output``.

    ``settings``: the fields of :class:`p8lib.config.RunConfig` (``images``, ``output``, ``k``,
    ``mode``, …). ``spark``: a session to use (an EMR kernel's); otherwise one is built for
    ``master``. ``log`` receives the stage and progress lines; ``live``: progress redrawn in
    place on stderr (a terminal) instead.
    """
    return execute(RunConfig(**settings), spark=spark, log=log, verbose=verbose, live=live)


def execute(
    config: RunConfig,
    *,
    spark: SparkSession | None = None,
    log: Callable[[str], None] | None = None,
    verbose: bool = False,
    live: bool = False,
) -> RunResult:
    """Run the pipeline for a validated :class:`RunConfig`."""
    job = Job.start("p8 run", log, live=live)
    places = job.locate(
        inputs={"--images": config.images},
        output=("--output", config.output),
        s3_endpoint=config.s3_endpoint,
    )
    inputs = _gather(config, places, log=job.log)
    images = len(inputs.listing.files) * (1 + config.augment)
    spark = job.session(
        config,
        uses_s3=places.uses_s3,
        spark=spark,
        verbose=verbose,
        short=images < SHORT_RUN_IMAGES,
    )
    with job.output(
        spark,
        places.output,
        marker=MANIFEST,
        mode=config.mode,
        flag="--output",
        kind="p8 run results",
    ) as staged:
        manifest = _stages(spark, job, config, places, inputs, staged=staged)
    return RunResult(manifest, notes=inputs.listing.notes())


def dry_run(config: RunConfig) -> list[str]:
    """What ``p8 run`` would do, from the listing alone: images by extension, files skipped
    and why, the featurize plan, the time and, for EMR, the cost. Nothing is read or written."""
    from p8lib import emr

    images_uri = io.normalize_uri(config.images, emr=on_emr())
    output = io.normalize_uri(config.output, emr=on_emr())
    outputs.check_separate(output, {"--images": images_uri}, flag="--output")  # as the run would
    listing = _listing(config, images_uri)
    n = len(listing.files)
    found = Counter(extension(f.path) for f in listing.files)
    capacity = plan.before_session(config.master, config.spark_conf)
    tasks = plan.plan(n, capacity, partitions=config.partitions)
    passes = 1 + config.augment  # each variant goes through the network too
    hours = plan.hours(tasks) * passes
    shape = emr.this_cluster() if on_emr() else None
    estimate = emr.cost(images=n * passes, **(shape or {}))
    where = "this EMR cluster" if shape else "EMR's default cluster (1 + 2 × m5.xlarge, spot)"
    by_extension = ", ".join(f"{e} {c:,}" for e, c in found.most_common())
    return [
        f"{n:,} images under {images_uri} ({by_extension})",
        *(listing.notes() or ["no files skipped"]),
        f"plan: {tasks.describe()}",
        f"time: ~{duration(hours * 3600)} featurizing on {tasks.cores:,} cores at "
        f"{plan.IMAGES_PER_CORE_SECOND:g} images/s per core (measured by make bench)"
        + (f", {config.augment} variants of each image" if config.augment else ""),
        f"cost on {where}: ~{estimate.hours:.2f} h, ${estimate.dollars:.2f} (p8 emr cost's model)",
        "dry run: nothing featurized or written",
    ]


def _listing(config: RunConfig, images_uri: str) -> Listing:
    """The image files under ``images_uri``, checked: enough for PCA and ``--k``."""
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
    return listing


def _gather(config: RunConfig, places: Places, *, log: Callable[[str], None]) -> _Inputs:
    """The input listing and the network (converted or from its cache): before Spark starts."""
    listing = _listing(config, places.inputs["--images"])
    weights_path = resolve_weights(config.weights)
    sha256 = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    network = engine.prepare(
        engine=config.engine,
        precision=config.precision,
        weights_path=weights_path,
        weights_sha256=sha256,
        image_size=config.image_size,
        calibration=_calibration(config, listing) if config.precision == "int8" else None,
        log=log,
    )
    return _Inputs(listing, weights_path, sha256, network)


def _calibration(config: RunConfig, listing: Listing) -> engine.Calibration:
    """int8's calibration images: up to 300 spread evenly over ``--calibration``'s images, or
    over the input's."""
    if config.calibration is None:
        source, files = "a sample of --images", listing.files
    else:
        source = io.normalize_uri(config.calibration, emr=on_emr())
        files = io.list_images(source, s3_endpoint=config.s3_endpoint).files
        if not files:
            raise UsageError(f"no image files under --calibration {config.calibration}")
    step = len(files) / min(len(files), engine.CALIBRATION_IMAGES)
    chosen = [files[int(i * step)] for i in range(min(len(files), engine.CALIBRATION_IMAGES))]
    lines = "\n".join(f"{f.path} {f.size} {f.modification_time.isoformat()}" for f in chosen)
    record = {
        "source": source,
        "images": len(chosen),
        "sha256": hashlib.sha256(lines.encode()).hexdigest(),
    }

    def load() -> np.ndarray:
        images = []
        for f in chosen:
            try:
                content = io.read_file(f.path, endpoint=config.s3_endpoint)
                images.append(load_image(content, config.image_size))
            except (OSError, ValueError):
                continue  # an unreadable image calibrates nothing
        if not images:
            raise UsageError(f"none of the calibration images ({source}) could be read")
        return np.stack(images)

    return engine.Calibration(record, load)


def _stages(
    spark: SparkSession,
    job: Job,
    config: RunConfig,
    places: Places,
    inputs: _Inputs,
    *,
    staged: str,
) -> RunManifest:
    """read → featurize → reduce → write into ``staged``; the manifest last."""
    from pyspark import StorageLevel

    n_images, features = len(inputs.listing.files), None
    try:
        with job.stage("read", f"listing {n_images} images under {places.inputs['--images']}"):
            tasks = plan.plan(n_images, plan.of_session(spark), partitions=config.partitions)
            images = io.read_images(spark, inputs.listing, partitions=tasks.tasks)
            previous = _previous_features(spark, places.output, config, inputs, job.log)
        job.log(f"plan: {tasks.describe()}")
        more = f" and {config.augment} variants of each" if config.augment else ""
        with job.stage("featurize", f"featurizing {n_images} images{more}", said=False):
            counter, failed = spark.sparkContext.accumulator(0), spark.sparkContext.accumulator(0)

            def read() -> tuple[int, int]:  # updated as tasks finish: done (incl. failed), failed
                return counter.value + failed.value, failed.value

            with job.progress("featurizing", n_images, "images", read) as report:
                # Persisted so the network runs once per image, not once per downstream action.
                features = _featurize(
                    images, previous, config=config, inputs=inputs, counters=(counter, failed)
                ).persist(StorageLevel.MEMORY_AND_DISK)
                counts = _counts(features)
                note = f"{counts.reused:,} reused" if counts.reused else ""
                todo = counts.images - counts.reused
                report.finish(todo, counts.failed, total=todo, note=note)
        with job.stage("reduce", "fitting StandardScaler + PCA"):
            reduction = fit_reduce(features, k=config.k, variance=config.variance)
        with job.stage("write", f"writing results to {places.output}"):
            _write(spark, features, reduction, config=config, staged=staged)
        manifest = _manifest(
            spark, job, config, places, inputs, counts=counts, reduction=reduction, inferred=counter
        )
        manifest = dataclasses.replace(
            manifest,
            plan=tasks.as_dict(),
            network=inputs.network.record(),
            augmentation=_augmentation(config),
        )
        write_json(spark, f"{staged}/{MANIFEST}", manifest)
    finally:
        release(features)
    return manifest


def _augmentation(config: RunConfig) -> dict[str, Any]:
    """The manifest's record of the photo-like variants: none, or how many and which kind."""
    if not config.augment:
        return {}
    return {"variants": config.augment, "descriptor": augmentation.DESCRIPTOR}


def _counts(features: DataFrame) -> Counts:
    """Counts from the rows themselves (a retried task adds nothing): one Spark pass."""
    from pyspark.sql import functions as F

    reason = F.split(F.col("error"), ":").getItem(0)
    rows = (
        features.where(F.col("variant") == 0)
        .groupBy("_reused", reason.alias("reason"))
        .count()
        .collect()
    )
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
    return Counts(
        images=total,
        featurized=featurized,
        reused=reused,
        succeeded=total - n_failed,
        failed=n_failed,
        failed_by_reason=dict(failed),
    )


def _previous_features(
    spark: SparkSession,
    output_uri: str,
    config: RunConfig,
    inputs: _Inputs,
    log: Callable[[str], None],
) -> DataFrame | None:
    """With ``--mode incremental``: the rows of the last run that can be reused (same weights,
    size, histogram and variants), or None."""
    if config.mode != "incremental" or not io.exists(spark, f"{output_uri}/{MANIFEST}"):
        return None
    try:
        previous = read_run(spark, output_uri, what="--output")
    except UsageError as exc:  # an older p8lib's results: replaced whole
        log(f"{exc}; featurizing everything")
        return None
    if previous.featurization != _featurization(config, inputs):
        log(
            "the previous results used other weights, image size, colour histogram or variants: "
            "featurizing everything"
        )
        return None
    return read_rows(spark, f"{output_uri}/{PARQUET}").select(
        "path", "size", "modification_time", "features", "color", "error", "variant"
    )


def _featurization(config: RunConfig, inputs: _Inputs) -> Featurization:
    augment = f"{config.augment} {augmentation.DESCRIPTOR}" if config.augment else ""
    return Featurization(
        inputs.weights_sha256, config.image_size, COLOR_DESCRIPTOR, config.precision, augment
    )


def _featurize(
    images: DataFrame,
    previous: DataFrame | None,
    *,
    config: RunConfig,
    inputs: _Inputs,
    counters: tuple[Accumulator[int], Accumulator[int]],
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
        F.col("path"),
        read=io.content_reader(config.s3_endpoint),
        network=inputs.network,
        batch_size=config.batch_size or engine.BATCH[config.engine],
        augment=config.augment,
        counter=counters[0],
        failed=counters[1],
    )
    fresh = todo.select(*todo.columns, result.alias("_r")).select(
        *keys, "label", "_r.*", F.lit(False).alias("_reused")
    )
    fresh = _variant_rows(fresh, config.augment)
    return fresh if reused is None else fresh.unionByName(reused)


def _variant_rows(rows: DataFrame, augment: int) -> DataFrame:
    """One row per image and variant: ``variant`` 0 is the image, 1..N its variants, whose
    features and histogram are cut from the flat ``augmented`` arrays (and have no error)."""
    from pyspark.sql import functions as F

    if not augment:
        return rows.withColumn("variant", F.lit(0))
    rows = rows.withColumn("variant", F.explode(F.sequence(F.lit(0), F.lit(augment))))
    variant = F.col("variant")

    def part(flat: str, width: int) -> Column:
        return F.slice(F.col(flat), (variant - 1) * width + 1, width)

    return (
        rows.where((variant == 0) | F.col("error").isNull())
        .withColumn(
            "features",
            F.when(variant == 0, F.col("features")).otherwise(part("augmented", FEATURE_DIM)),
        )
        .withColumn(
            "color",
            F.when(variant == 0, F.col("color")).otherwise(part("augmented_color", COLOR_DIM)),
        )
        .drop("augmented", "augmented_color")
    )


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


def _write(
    spark: SparkSession,
    features: DataFrame,
    reduction: Reduction,
    *,
    config: RunConfig,
    staged: str,
) -> None:
    """The parquet table and the explained-variance figure."""
    # A few large tasks: the projection is cheap, per-task and per-file costs are not.
    parts = spark.sparkContext.defaultParallelism
    table = reduction.transform(features.coalesce(parts)).select(*OUTPUT_COLUMNS)

    def figure() -> bytes:
        variance = reduction.explained_variance
        threshold = config.variance_threshold
        return plots.to_png(
            plots.explained_variance_figure(variance, k=reduction.k, threshold=threshold)
        )

    # The figure is drawn (~1 s of matplotlib) while the JVM writes the table.
    with ThreadPoolExecutor(max_workers=1) as pool:
        png = pool.submit(figure)
        table.write.parquet(f"{staged}/{PARQUET}")
        io.write_bytes(spark, f"{staged}/{PLOT}", png.result())


def _manifest(
    spark: SparkSession,
    job: Job,
    config: RunConfig,
    places: Places,
    inputs: _Inputs,
    *,
    counts: Counts,
    reduction: Reduction,
    inferred: Accumulator[int],
) -> RunManifest:
    return RunManifest(
        run_id=job.run_id,
        started_at=job.started.isoformat(),
        finished_at=datetime.now(UTC).isoformat(),
        config=config.as_dict(),
        inputs=Inputs(
            images=places.inputs["--images"],
            glob=config.glob,
            extensions=None if config.glob else list(IMAGE_EXTENSIONS),
            weights=str(inputs.weights_path),
            weights_sha256=inputs.weights_sha256,
            color=COLOR_DESCRIPTOR,
        ),
        outputs={"parquet": PARQUET, "plot": PLOT, "manifest": MANIFEST, "uri": places.output},
        counts=counts,
        listing=inputs.listing.counts(),
        pca=PcaRecord(
            k=reduction.k,
            variance_threshold=config.variance_threshold,
            variance_reached=reduction.variance_reached,
            explained_variance=[float(v) for v in reduction.explained_variance],
        ),
        seconds=job.timings(),
        inference_images=int(inferred.value),  # the network's own tally, retries included
        spark={
            "master": spark.sparkContext.master,
            "version": spark.version,
            "default_parallelism": spark.sparkContext.defaultParallelism,
            "jit": jit_of(spark),
            "class_archive": archive_of(spark),
        },
        versions=versions(),
    )

"""The first fruit classifier: scaler + PCA + multinomial logistic regression in Spark ML.

``train`` fits it on the features a ``p8 run`` wrote — the scaled (and PCA-reduced) MobileNetV2
features next to the colour histogram — saves it as one pyspark.ml PipelineModel (inputs: the
1280-d features and the histogram as vectors), and evaluates it on a held-out set:
accuracy, top-3 accuracy, macro F1, the worst classes and a heatmap of the top confusions.
:mod:`p8lib.predict` applies the saved model to new photos without Spark.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from p8lib import __version__, io, photo, plots
from p8lib.artifacts import (
    CONFUSION,
    EVALUATION,
    FEATURE_DIM,
    MODEL_INFO,
    PARQUET,
    SPARK_MODEL,
    Col,
    ModelInfo,
    RunManifest,
    only_images,
    read_rows,
    read_run,
)
from p8lib.config import TrainConfig
from p8lib.errors import UsageError
from p8lib.featurize import COLOR_DESCRIPTOR
from p8lib.job import Job, Places, versions, write_json
from p8lib.reduce import fit_reduce, fit_scaler
from p8lib.session import memory_share, release

if TYPE_CHECKING:
    from pyspark.ml import PipelineModel
    from pyspark.sql import DataFrame, SparkSession

# regParam candidates, chosen by accuracy (then log-loss) on a fifth of the training images.
REG_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
# What model.json keeps of the evaluation (evaluation.json has all of it).
EVALUATION_SUMMARY = ("on", "rows", "accuracy", "top3_accuracy", "macro_f1")


@dataclass(frozen=True)
class Evaluation:
    """Scores of a classifier on labelled rows, from its confusion matrix."""

    on: str
    labels: list[str]
    matrix: np.ndarray = field(repr=False)  # rows: true class, columns: predicted class
    top3_accuracy: float

    @property
    def rows(self) -> int:
        return int(self.matrix.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.matrix) / max(self.matrix.sum(), 1))

    def per_class(self) -> list[dict[str, Any]]:
        """Support, precision, recall and F1 of every class that occurs (true or predicted)."""
        return per_class_scores(self.matrix, self.labels)

    @property
    def macro_f1(self) -> float:
        """Unweighted mean F1 over the classes present in the true labels."""
        scores = [c["f1"] for c in self.per_class() if c["support"] > 0]
        return float(np.mean(scores)) if scores else 0.0

    def worst(self, n: int = 5) -> list[dict[str, Any]]:
        """The ``n`` classes with the lowest F1 (ties: the larger support first)."""
        present = [c for c in self.per_class() if c["support"] > 0]
        return sorted(present, key=lambda c: (c["f1"], -c["support"]))[:n]

    def confusion_cells(self, n: int = 10) -> list[tuple[int, int]]:
        """(true, predicted) indices of the ``n`` largest non-zero off-diagonal cells."""
        return plots.confusion_cells(self.matrix, n)

    def top_confusions(self, n: int = 10) -> list[dict[str, Any]]:
        """The ``n`` largest off-diagonal cells: true label, predicted label, count."""
        return [
            {"true": self.labels[t], "predicted": self.labels[p], "count": int(self.matrix[t, p])}
            for t, p in self.confusion_cells(n)
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "on": self.on,
            "rows": self.rows,
            "accuracy": self.accuracy,
            "top3_accuracy": self.top3_accuracy,
            "macro_f1": self.macro_f1,
            "worst_classes": self.worst(10),
            "top_confusions": self.top_confusions(20),
            "per_class": self.per_class(),
        }

    def summary(self) -> str:
        worst = ", ".join(f"{c['label']} (F1 {c['f1']:.0%})" for c in self.worst(3))
        return (
            f"{self.on}: accuracy {self.accuracy:.2%}, top-3 {self.top3_accuracy:.2%}, "
            f"macro F1 {self.macro_f1:.2%} on {self.rows} images; worst: {worst}"
        )


def per_class_scores(matrix: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """Precision, recall and F1 per class from a confusion matrix (true × predicted).

    A class never predicted has precision 0; one never present has recall 0 (as scikit-learn's
    ``zero_division=0``).

    Examples
    --------
    >>> [round(c["f1"], 3) for c in per_class_scores(np.array([[2, 1], [0, 3]]), ["a", "b"])]
    [0.8, 0.857]
    """
    tp = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return [
        {
            "label": label,
            "support": int(support[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
        }
        for i, label in enumerate(labels)
        if support[i] > 0 or predicted[i] > 0
    ]


@dataclass
class TrainResult:
    """What ``train`` fitted, where it saved it and how well it did."""

    model: str
    info: ModelInfo = field(repr=False)
    evaluation: Evaluation

    @property
    def classes(self) -> int:
        return len(self.info.labels)

    @property
    def train_rows(self) -> int:
        return self.info.train_rows

    @property
    def input(self) -> str:
        return self.info.input

    @property
    def k(self) -> int | None:
        return self.info.k

    @property
    def reg_param(self) -> float:
        return self.info.reg_param

    @property
    def seconds(self) -> dict[str, float]:
        return self.info.seconds

    def summary(self) -> str:
        what = f"PCA k = {self.k}" if self.input == "pca" else f"all {FEATURE_DIM} features"
        if self.info.color:
            what += " + colour histogram"
        variants = self.info.augmentation.get("variants")
        if variants and self.info.photo_model:
            what += f"; photo model: the images and {variants} photo-like variants of each"
        elif variants:
            what += f"; images and {variants} photo-like variants of each"
        return "\n".join(
            [
                f"trained on {self.train_rows} images of {self.classes} classes ({what}, "
                f"regParam {self.reg_param:g}), {self.seconds['total']:.1f} s",
                self.evaluation.summary(),
                f"model: {self.model}/ ({SPARK_MODEL}/, {MODEL_INFO}, {EVALUATION}, {CONFUSION}"
                + (f", {photo.PHOTO_MODEL})" if self.info.photo_model else ")"),
            ]
        )


@dataclass
class _Data:
    """The rows to fit on and to evaluate on, and the manifest of the features' run."""

    rows: DataFrame
    test_rows: DataFrame
    manifest: RunManifest
    on: str  # what the evaluation is on, in words


def _training_data(spark: SparkSession, config: TrainConfig, places: Places) -> _Data:
    """``--features``' rows, and ``--test``'s — or a fifth of ``--features`` set aside before
    anything is fitted: the evaluation's rows are then used for nothing else."""
    rows, manifest = _read_features(spark, places.inputs["--features"], "--features", config)
    test_uri = places.inputs.get("--test")
    if test_uri is None:
        on = "held-out fifth of --features, set aside"
        held_out = rows.where(_held_out("evaluation"))
        return _Data(rows.where(~_held_out("evaluation")), only_images(held_out), manifest, on)
    test_rows, test_manifest = _read_features(spark, test_uri, "--test", config)
    ours, theirs = manifest.featurization, test_manifest.featurization
    if (ours.weights_sha256, ours.image_size, ours.precision) != (
        theirs.weights_sha256,
        theirs.image_size,
        theirs.precision,
    ):
        raise UsageError(
            "--test was featurized with other weights, image size or precision than --features "
            f"({theirs.image_size} px {theirs.precision} against {ours.image_size} px "
            f"{ours.precision}): run both with the same --weights, --image-size and --precision"
        )
    if ours.precision == "int8" and manifest.network.get("key") != test_manifest.network.get("key"):
        raise UsageError(
            "--test's int8 network was calibrated on other images than --features': run both "
            "with the same --calibration"
        )
    # Evaluated on the images themselves, never on their photo-like variants.
    return _Data(rows, only_images(test_rows), manifest, f"test {test_uri}")


def _read_features(
    spark: SparkSession, uri: str, what: str, config: TrainConfig
) -> tuple[DataFrame, RunManifest]:
    """The featurized rows (path, label, features[, color]) of a ``p8 run`` and its manifest."""
    from pyspark.sql import functions as F

    manifest = read_run(spark, uri, what=what)
    df = read_rows(spark, f"{uri}/{PARQUET}")
    if config.color and (
        "color" not in df.columns or manifest.featurization.color != COLOR_DESCRIPTOR
    ):
        raise UsageError(
            f"{what} {uri} has no {COLOR_DESCRIPTOR} colour histograms (an older p8 run): "
            "run `p8 run` again with --mode overwrite, or train with --no-color"
        )
    columns = ["path", "label", "features", "variant", *(["color"] if config.color else [])]
    return df.where(F.col("features").isNotNull()).select(*columns), manifest


def _as_vectors(rows: DataFrame) -> DataFrame:
    """``rows`` with the model's input vectors: the features, and the histogram if present."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    rows = rows.withColumn(Col.VECTOR, array_to_vector(F.col("features")))
    if "color" in rows.columns:
        rows = rows.withColumn(Col.COLOR, array_to_vector(F.col("color")))
    return rows


def _logistic(
    reg_param: float, max_iter: int, features_col: str, standardization: bool = True
) -> Any:
    """Spark's multinomial regression; ``standardization``: each input scaled to unit variance
    before the penalty (Spark's default): every PCA component then weighs alike."""
    from pyspark.ml.classification import LogisticRegression

    return LogisticRegression(
        featuresCol=features_col,
        labelCol=Col.LABEL_INDEX,
        family="multinomial",
        regParam=reg_param,
        elasticNetParam=0.0,
        maxIter=max_iter,
        tol=1e-6,
        standardization=standardization,
    )


def _held_out(salt: str | None = None) -> Any:
    """True for a fifth of the rows (by path: the same fifth every time). ``salt`` picks another
    fifth: the evaluation's, independent of the one that chooses regParam."""
    from pyspark.sql import functions as F

    key = F.xxhash64("path") if salt is None else F.xxhash64(F.lit(salt), "path")
    return F.pmod(key, F.lit(5)) == 0


def _choose_reg_param(
    data: DataFrame,
    *,
    features_col: str,
    max_iter: int,
    log: Callable[[str], None],
    standardization: bool = True,
) -> tuple[float, dict[str, float], dict[str, float]]:
    """The regParam of REG_GRID that does best on a held-out fifth of ``data``.

    Best: the highest accuracy, then (accuracy often ties near 100%) the lowest log-loss — the
    probabilities ``p8 predict`` shows are then the best calibrated. Returns it with the
    accuracy and log-loss of every candidate.
    """
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    fit_part = data.where(~_held_out())
    held_out = data.where(_held_out())
    accuracy: dict[float, float] = {}
    log_loss: dict[float, float] = {}
    for reg in REG_GRID:
        model = _logistic(reg, max_iter, features_col, standardization).fit(fit_part)
        p_true = F.element_at(
            vector_to_array(F.col("probability")), (F.col(Col.LABEL_INDEX) + 1).cast("int")
        )
        row = (
            model.transform(held_out)
            .agg(
                F.count("*").alias("n"),
                F.avg((F.col("prediction") == F.col(Col.LABEL_INDEX)).cast("double")).alias("acc"),
                F.avg(-F.log(F.greatest(p_true, F.lit(1e-15)))).alias("log_loss"),
            )
            .first()
        )
        assert row is not None
        accuracy[reg], log_loss[reg] = row["acc"] or 0.0, row["log_loss"] or 0.0
        log(
            f"regParam {reg:g}: {accuracy[reg]:.2%} of {row['n']} held-out training images, "
            f"log-loss {log_loss[reg]:.4f}"
        )
    best = max(REG_GRID, key=lambda r: (accuracy[r], -log_loss[r], r))
    return (
        best,
        {f"{r:g}": v for r, v in accuracy.items()},
        {f"{r:g}": v for r, v in log_loss.items()},
    )


def evaluate(model: PipelineModel, rows: DataFrame, *, labels: list[str], on: str) -> Evaluation:
    """Score ``model`` on labelled rows (``label``, ``features``[, ``color``]): one Spark pass."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    scored = model.transform(_as_vectors(rows))
    index = {label: i for i, label in enumerate(labels)}
    probs = vector_to_array(F.col("probability"))
    positions = F.create_map(*[F.lit(v) for i, x in enumerate(labels) for v in (x, i + 1)])
    true_index = F.coalesce(positions[F.col("label")], F.lit(0))  # 1-based; 0: unseen label
    # Top-3: fewer than 3 classes score higher than the true one (unknown labels never count).
    true_prob = F.when(true_index > 0, F.element_at(probs, true_index.cast("int")))
    rank = F.size(F.filter(probs, lambda p: p > true_prob))
    counts = (
        scored.select(
            "label",
            "predicted_label",
            F.when(true_index > 0, (rank < 3).cast("int")).otherwise(0).alias("top3"),
        )
        .groupBy("label", "predicted_label")
        .agg(F.count("*").alias("n"), F.sum("top3").alias("top3"))
        .collect()
    )
    extra = sorted({r["label"] for r in counts} - set(index))  # classes unseen in training
    all_labels = labels + extra
    index.update({label: len(labels) + i for i, label in enumerate(extra)})
    matrix = np.zeros((len(all_labels), len(all_labels)), dtype=np.int64)
    top3 = 0
    for r in counts:
        matrix[index[r["label"]], index[r["predicted_label"]]] += r["n"]
        top3 += r["top3"]
    return Evaluation(
        on=on, labels=all_labels, matrix=matrix, top3_accuracy=top3 / max(matrix.sum(), 1)
    )


def train(
    *,
    spark: SparkSession | None = None,
    log: Callable[[str], None] | None = None,
    verbose: bool = False,
    live: bool = False,
    **settings: Any,
) -> TrainResult:
    """Fit scaler (+ PCA) + multinomial logistic regression on a ``p8 run``'s features.

    ``settings``: the fields of :class:`p8lib.config.TrainConfig` (``features``, ``model``,
    ``test``, ``input``, ``color``, ``k``, …). See :func:`fit`.
    """
    return fit(TrainConfig(**settings), spark=spark, log=log, verbose=verbose, live=live)


def fit(
    config: TrainConfig,
    *,
    spark: SparkSession | None = None,
    log: Callable[[str], None] | None = None,
    verbose: bool = False,
    live: bool = False,
) -> TrainResult:
    """Train for a validated :class:`TrainConfig`; save and evaluate the model.

    The scaler and PCA are refitted on the training rows, exactly as ``p8 run`` fits them;
    regParam is by default the best of :data:`REG_GRID` on a held-out fifth of the training
    rows. The model folder gets the PipelineModel, its description, the evaluation and the
    confusion heatmap; it is written whole or not at all.
    """
    job = Job.start("p8 train", log, live=live)
    places = job.locate(
        inputs={"--features": config.features, "--test": config.test},
        output=("--model", config.model),
        s3_endpoint=config.s3_endpoint,
    )
    spark = job.session(
        config, uses_s3=places.uses_s3, spark=spark, verbose=verbose, driver_memory=memory_share()
    )
    with job.output(
        spark, places.output, marker=MODEL_INFO, mode=config.mode, flag="--model", kind="p8 model"
    ) as staged:
        data = _training_data(spark, config, places)
        reduced = None
        with_photo = config.photo_model and bool(data.manifest.augmentation.get("variants"))
        if config.photo_model and not with_photo:
            job.log("no photo model: --features has no photo-like variants (p8 run --augment N)")
        # With a photo model, the regression is the studio shots' model: the images alone.
        rows = only_images(data.rows) if with_photo else data.rows
        try:
            what = "the scaler and PCA" if config.input == "pca" else "the scaler"
            with job.stage("reduce", f"fitting {what} on {places.inputs['--features']}"):
                reduced = _reduce(rows, config)
            what = f"{reduced.rows} images, {len(reduced.labels)} classes"
            with job.stage("fit", f"fitting logistic regression on {what}"):
                model, choice = _regression(reduced, config, job.log)
            photo_model = None
            if with_photo:
                with job.stage("photo", "fitting the photo model on the images and variants"):
                    photo_model = photo.fit(data.rows, labels=reduced.labels)
            with job.stage("evaluate", f"evaluating on {data.on}"):
                evaluation = evaluate(model, data.test_rows, labels=reduced.labels, on=data.on)
            info = _info(spark, job, config, places, data, reduced, choice, evaluation)
            if photo_model is not None:
                info = replace(info, photo_model=photo_model.record())
            _save(spark, staged, model, evaluation, info, photo_model)
        finally:
            release(data.rows, rows, reduced.data if reduced is not None else None)
    return TrainResult(places.output, info, evaluation)


@dataclass
class _Reduced:
    """The fitted input stages (scaler, PCA, histogram scaler, assembler) and the training
    rows through them (persisted): path, label, the label's index, the regression's input."""

    stages: list[Any]
    column: str
    k: int | None
    labels: list[str]
    data: DataFrame
    rows: int


def _reduce(rows: DataFrame, config: TrainConfig) -> _Reduced:
    from pyspark import StorageLevel
    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import StandardScaler, StringIndexer, VectorAssembler

    indexer = StringIndexer(inputCol="label", outputCol=Col.LABEL_INDEX).fit(rows)
    labels = list(indexer.labels)
    if len(labels) < 2:
        raise UsageError(f"training needs at least 2 classes, {config.features} has {len(labels)}")
    rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
    if config.input == "pca":
        reduction = fit_reduce(rows, k=config.k, variance=config.variance)
        stages, column, k = list(reduction.model.stages), Col.PCA, reduction.k
    else:
        stages, column, k = [fit_scaler(rows)], Col.SCALED, None
    vectors = _as_vectors(rows)
    if config.color:
        # Centred, the mostly-zero histogram becomes dense, and so do the regression's
        # blocks: on sparse blocks each L-BFGS iteration took 5 times longer.
        stages.append(
            StandardScaler(
                inputCol=Col.COLOR, outputCol=Col.COLOR_SCALED, withMean=True, withStd=True
            ).fit(vectors)
        )
        stages.append(VectorAssembler(inputCols=[column, Col.COLOR_SCALED], outputCol=Col.INPUT))
        column = Col.INPUT
    data = (
        PipelineModel(stages=stages)
        .transform(indexer.transform(vectors))
        .select("path", "label", Col.LABEL_INDEX, column)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    return _Reduced(stages, column, k, labels, data, rows=data.count())


@dataclass(frozen=True)
class _Choice:
    """The regression's regParam, how each candidate did, and its iterations."""

    reg_param: float
    scores: dict[str, float]
    log_loss: dict[str, float]
    iterations: int | None


def _regression(
    reduced: _Reduced, config: TrainConfig, log: Callable[[str], None]
) -> tuple[PipelineModel, _Choice]:
    """The whole model: input stages, logistic regression, index → label."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import IndexToString

    reg_param = config.reg_param
    scores: dict[str, float] = {}
    log_loss: dict[str, float] = {}
    if reg_param is None:
        log(f"choosing regParam among {', '.join(f'{r:g}' for r in REG_GRID)}")
        reg_param, scores, log_loss = _choose_reg_param(
            reduced.data,
            features_col=reduced.column,
            max_iter=config.max_iter,
            log=log,
            standardization=config.standardization,
        )
    logistic = _logistic(reg_param, config.max_iter, reduced.column, config.standardization)
    logistic = logistic.fit(reduced.data)
    to_label = IndexToString(
        inputCol="prediction", outputCol="predicted_label", labels=reduced.labels
    )
    iterations = logistic.summary.totalIterations if logistic.hasSummary else None
    model = PipelineModel(stages=[*reduced.stages, logistic, to_label])
    return model, _Choice(reg_param, scores, log_loss, iterations)


def _info(
    spark: SparkSession,
    job: Job,
    config: TrainConfig,
    places: Places,
    data: _Data,
    reduced: _Reduced,
    choice: _Choice,
    evaluation: Evaluation,
) -> ModelInfo:
    summary = {k: v for k, v in evaluation.as_dict().items() if k in EVALUATION_SUMMARY}
    return ModelInfo(
        created_at=job.started.isoformat(),
        p8lib=__version__,
        features=places.inputs["--features"],
        test=places.inputs.get("--test"),
        input=config.input,
        color=COLOR_DESCRIPTOR if config.color else None,
        k=reduced.k,
        variance_threshold=config.variance_threshold if config.input == "pca" else None,
        reg_param=choice.reg_param,
        reg_param_scores=choice.scores,
        reg_param_log_loss=choice.log_loss,
        max_iter=config.max_iter,
        iterations=choice.iterations,
        train_rows=reduced.rows,
        labels=reduced.labels,
        image_size=data.manifest.featurization.image_size,
        weights_sha256=data.manifest.featurization.weights_sha256,
        evaluation=summary,
        spark={"master": spark.sparkContext.master, "version": spark.version},
        versions=versions(),
        seconds=job.timings(),
        precision=data.manifest.featurization.precision,
        network=data.manifest.network,
        augmentation=data.manifest.augmentation,
        standardization=config.standardization,
    )


def _save(
    spark: SparkSession,
    staged: str,
    model: PipelineModel,
    evaluation: Evaluation,
    info: ModelInfo,
    photo_model: photo.PhotoModel | None,
) -> None:
    """The model (and photo model), its evaluation and heatmap, and its description (last: it
    marks the folder)."""
    model.write().save(f"{staged}/{SPARK_MODEL}")
    if photo_model is not None:
        io.write_bytes(spark, f"{staged}/{photo.PHOTO_MODEL}", photo_model.to_json())
    figure = plots.confusion_figure(
        evaluation.matrix, evaluation.labels, cells=evaluation.confusion_cells(20)
    )
    io.write_bytes(spark, f"{staged}/{CONFUSION}", plots.to_png(figure))
    write_json(spark, f"{staged}/{EVALUATION}", evaluation.as_dict())
    write_json(spark, f"{staged}/{MODEL_INFO}", info)

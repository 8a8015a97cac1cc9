"""The first fruit classifier: scaler + PCA + multinomial logistic regression in Spark ML.

``train`` fits it on the features a ``p8 run`` wrote — the scaled (and PCA-reduced) MobileNetV2
features next to the colour histogram — saves it as one pyspark.ml PipelineModel (inputs: the
1280-d features and the histogram as vectors), and evaluates it on a held-out set:
accuracy, top-3 accuracy, macro F1, the worst classes and a heatmap of the top confusions.
:mod:`p8lib.predict` applies the saved model to new photos without Spark.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from p8lib import __version__, io, outputs, plots, s3
from p8lib.config import check_master
from p8lib.errors import UsageError
from p8lib.featurize import COLOR_DESCRIPTOR
from p8lib.pipeline import MANIFEST, PARQUET, _versions, featurized_with
from p8lib.predict import COLOR_INPUT, MODEL_INFO, SPARK_MODEL
from p8lib.reduce import fit_reduce, fit_scaler
from p8lib.session import build_session, configure_s3, on_emr

if TYPE_CHECKING:
    from pyspark.ml import PipelineModel
    from pyspark.sql import DataFrame, SparkSession

Input = Literal["pca", "features"]
INPUTS: tuple[str, ...] = ("pca", "features")
EVALUATION = "evaluation.json"
CONFUSION = "confusion.png"
# regParam candidates, chosen by accuracy (then log-loss) on a fifth of the training images.
REG_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
VECTOR_COL = "_vec"
COLOR_SCALED = "_color_scaled"
INPUT_COL = "_input"


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
        off = self.matrix.copy()
        np.fill_diagonal(off, 0)
        cells = [np.unravel_index(i, off.shape) for i in np.argsort(off, axis=None)[::-1][:n]]
        return [(int(t), int(p)) for t, p in cells if off[t, p] > 0]

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
    classes: int
    train_rows: int
    input: str
    k: int | None
    reg_param: float
    evaluation: Evaluation | None
    seconds: dict[str, float]
    info: dict[str, Any] = field(repr=False)

    def summary(self) -> str:
        what = f"PCA k = {self.k}" if self.input == "pca" else "all 1280 features"
        if self.info.get("color"):
            what += " + colour histogram"
        lines = [
            f"trained on {self.train_rows} images of {self.classes} classes ({what}, "
            f"regParam {self.reg_param:g}), {self.seconds['total']:.1f} s",
        ]
        if self.evaluation is not None:
            lines.append(self.evaluation.summary())
        lines.append(
            f"model: {self.model}/ ({SPARK_MODEL}/, {MODEL_INFO}, {EVALUATION}, {CONFUSION})"
        )
        return "\n".join(lines)


def _read_features(
    spark: SparkSession, uri: str, *, what: str, color: bool
) -> tuple[DataFrame, dict[str, Any]]:
    """The featurized rows (path, label, features[, color]) of a ``p8 run`` and its manifest."""
    from pyspark.sql import functions as F

    if not io.exists(spark, f"{uri}/{PARQUET}") or not io.exists(spark, f"{uri}/{MANIFEST}"):
        raise UsageError(
            f"{what} {uri} holds no p8 run results ({PARQUET} and {MANIFEST}): "
            f"make them with `p8 run --images IMAGES --output {uri}`"
        )
    manifest = json.loads(io.read_bytes(spark, f"{uri}/{MANIFEST}"))
    df = spark.read.parquet(f"{uri}/{PARQUET}")
    if color and ("color" not in df.columns or featurized_with(manifest).color != COLOR_DESCRIPTOR):
        raise UsageError(
            f"{what} {uri} has no {COLOR_DESCRIPTOR} colour histograms (an older p8 run): "
            "run `p8 run` again with --mode overwrite, or train with --no-color"
        )
    columns = ["path", "label", "features", *(["color"] if color else [])]
    return df.where(F.col("features").isNotNull()).select(*columns), manifest


def _as_vectors(rows: DataFrame) -> DataFrame:
    """``rows`` with the model's input vectors: the features, and the histogram if present."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    rows = rows.withColumn(VECTOR_COL, array_to_vector(F.col("features")))
    if "color" in rows.columns:
        rows = rows.withColumn(COLOR_INPUT, array_to_vector(F.col("color")))
    return rows


def _logistic(reg_param: float, max_iter: int, features_col: str) -> Any:
    from pyspark.ml.classification import LogisticRegression

    return LogisticRegression(
        featuresCol=features_col,
        labelCol="_label_index",
        family="multinomial",
        regParam=reg_param,
        elasticNetParam=0.0,
        maxIter=max_iter,
        tol=1e-6,
    )


def _held_out(salt: str | None = None) -> Any:
    """True for a fifth of the rows (by path: the same fifth every time). ``salt`` picks another
    fifth: the evaluation's, independent of the one that chooses regParam."""
    from pyspark.sql import functions as F

    key = F.xxhash64("path") if salt is None else F.xxhash64(F.lit(salt), "path")
    return F.pmod(key, F.lit(5)) == 0


def _choose_reg_param(
    data: DataFrame, *, features_col: str, max_iter: int, log: Callable[[str], None]
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
        model = _logistic(reg, max_iter, features_col).fit(fit_part)
        p_true = F.element_at(
            vector_to_array(F.col("probability")), (F.col("_label_index") + 1).cast("int")
        )
        row = (
            model.transform(held_out)
            .agg(
                F.count("*").alias("n"),
                F.avg((F.col("prediction") == F.col("_label_index")).cast("double")).alias("acc"),
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
    features: str,
    model: str,
    test: str | None = None,
    input: Input = "pca",
    color: bool = True,
    k: int | None = None,
    variance: float = 0.99,
    reg_param: float | None = None,
    max_iter: int = 200,
    mode: str = "error",
    master: str = "local[*]",
    s3_endpoint: str | None = None,
    spark_conf: dict[str, str] | None = None,
    spark: SparkSession | None = None,
    log: Callable[[str], None] | None = None,
    verbose: bool = False,
) -> TrainResult:
    """Fit scaler (+ PCA) + multinomial logistic regression on the features under ``features``.

    ``features`` and ``test`` are outputs of ``p8 run`` (their ``features`` and ``color``
    columns are used; the scaler and PCA are refitted on the training rows, exactly as ``p8 run``
    fits them). ``input``: ``"pca"`` (k components: ``k``, or the smallest reaching
    ``variance``) or ``"features"`` (all 1280, scaled). ``color``: each image's colour
    histogram, scaled too, goes to the regression next to them. ``reg_param``: L2 strength; by
    default the best of :data:`REG_GRID` on a held-out fifth of the training rows. Without
    ``test``, a fifth of the images is set aside before anything is fitted (scaler, PCA,
    regParam, regression) and the evaluation is on it alone. The model directory ``model`` gets the
    PipelineModel, its description, the evaluation and the confusion heatmap; it is written
    whole or not at all.
    """
    from pyspark import StorageLevel
    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import IndexToString, StandardScaler, StringIndexer, VectorAssembler

    say = log or (lambda _msg: None)
    if input not in INPUTS:
        raise UsageError(f"--input must be one of {', '.join(INPUTS)}, got {input!r}")
    if k is not None and not 1 <= k <= 1280:
        raise UsageError(f"--k must be between 1 and 1280, got {k}")
    if not 0.0 < variance <= 1.0:
        raise UsageError(f"--variance must be in (0, 1], got {variance}")
    if reg_param is not None and reg_param < 0:
        raise UsageError(f"--reg-param must be 0 or more, got {reg_param}")
    if max_iter < 1:
        raise UsageError(f"--max-iter must be positive, got {max_iter}")
    if mode not in ("error", "overwrite"):
        raise UsageError(f"--mode must be error or overwrite, got {mode!r}")
    check_master(master)
    t0 = time.perf_counter()
    started = datetime.now(UTC)
    run_id = f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    emr = on_emr()
    features_uri = io.normalize_uri(features, emr=emr)
    model_uri = io.normalize_uri(model, emr=emr)
    test_uri = io.normalize_uri(test, emr=emr) if test else None
    inputs = {"--features": features_uri, **({"--test": test_uri} if test_uri else {})}
    outputs.check_separate(model_uri, inputs, flag="--model")
    outputs.check_writable(model_uri, flag="--model")
    uris = [u for u in (features_uri, model_uri, test_uri) if u]
    for uri in uris:
        if io.is_s3(uri):
            s3.check_bucket(uri, endpoint=s3_endpoint)
    uses_s3 = any(io.is_s3(u) for u in uris)
    if spark is None:
        spark = build_session(
            master=master, conf=spark_conf, s3=uses_s3, s3_endpoint=s3_endpoint, verbose=verbose
        )
    elif uses_s3:
        configure_s3(spark, s3_endpoint)
    outputs.check_replaceable(
        spark, model_uri, marker=MODEL_INFO, mode=mode, flag="--model", kind="p8 model"
    )
    rows, manifest = _read_features(spark, features_uri, what="--features", color=color)
    if test_uri:
        test_rows, test_manifest = _read_features(spark, test_uri, what="--test", color=color)
        ours, theirs = featurized_with(manifest), featurized_with(test_manifest)
        if (theirs.weights_sha256, theirs.image_size) != (ours.weights_sha256, ours.image_size):
            raise UsageError(
                "--test was featurized with other weights or image size than --features: "
                "run both with the same --weights and --image-size"
            )
    else:
        # Set aside before anything is fitted: the evaluation's rows are used for nothing else.
        test_rows = rows.where(_held_out("evaluation"))
        rows = rows.where(~_held_out("evaluation"))
    seconds: dict[str, float] = {}
    data = None
    try:
        with (
            outputs.output_lock(spark, model_uri, run_id=run_id, command="p8 train", log=say),
            io.staging(spark, model_uri, run_id=run_id, what="model") as staged,
        ):
            start = time.perf_counter()
            indexer = StringIndexer(inputCol="label", outputCol="_label_index").fit(rows)
            labels = list(indexer.labels)
            if len(labels) < 2:
                raise UsageError(f"training needs at least 2 classes, {features} has {len(labels)}")
            say(f"fitting the scaler{' and PCA' if input == 'pca' else ''} on {features_uri}")
            rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
            n_rows = rows.count()
            if input == "pca":
                reduction = fit_reduce(rows, k=k, variance=variance)
                reduce_stages = list(reduction.model.stages)
                chosen_k: int | None = reduction.k
                features_col = "_pca"
            else:
                reduce_stages = [fit_scaler(rows)]
                chosen_k, features_col = None, "_scaled"
            vectors = _as_vectors(rows)
            if color:
                # Centred, the mostly-zero histogram becomes dense, and so do the regression's
                # blocks: on sparse blocks each L-BFGS iteration took 5 times longer.
                color_scaler = StandardScaler(
                    inputCol=COLOR_INPUT, outputCol=COLOR_SCALED, withMean=True, withStd=True
                ).fit(vectors)
                assembler = VectorAssembler(
                    inputCols=[features_col, COLOR_SCALED], outputCol=INPUT_COL
                )
                reduce_stages += [color_scaler, assembler]
                features_col = INPUT_COL
            reduce_model = PipelineModel(stages=reduce_stages)
            data = (
                reduce_model.transform(indexer.transform(vectors))
                .select("path", "label", "_label_index", features_col)
                .persist(StorageLevel.MEMORY_AND_DISK)
            )
            data.count()
            seconds["reduce"] = round(time.perf_counter() - start, 3)

            start = time.perf_counter()
            grid_scores: dict[str, float] = {}
            grid_log_loss: dict[str, float] = {}
            if reg_param is None:
                say(f"choosing regParam among {', '.join(f'{r:g}' for r in REG_GRID)}")
                reg_param, grid_scores, grid_log_loss = _choose_reg_param(
                    data, features_col=features_col, max_iter=max_iter, log=say
                )
            say(f"fitting logistic regression on {n_rows} images, {len(labels)} classes")
            logistic = _logistic(reg_param, max_iter, features_col).fit(data)
            to_label = IndexToString(
                inputCol="prediction", outputCol="predicted_label", labels=labels
            )
            pipeline = PipelineModel(stages=[*reduce_stages, logistic, to_label])
            seconds["fit"] = round(time.perf_counter() - start, 3)

            start = time.perf_counter()
            on = f"test {test_uri}" if test_uri else "held-out fifth of --features, set aside"
            say(f"evaluating on {on}")
            evaluation = evaluate(pipeline, test_rows, labels=labels, on=on)
            seconds["evaluate"] = round(time.perf_counter() - start, 3)

            pipeline.write().save(f"{staged}/{SPARK_MODEL}")
            figure = plots.confusion_figure(
                evaluation.matrix, evaluation.labels, cells=evaluation.confusion_cells(20)
            )
            io.write_bytes(spark, f"{staged}/{CONFUSION}", plots.to_png(figure))
            io.write_bytes(
                spark, f"{staged}/{EVALUATION}", json.dumps(evaluation.as_dict(), indent=2).encode()
            )
            seconds["total"] = round(time.perf_counter() - t0, 3)
            made_with = featurized_with(manifest)
            info = {
                "created_at": started.isoformat(),
                "p8lib": __version__,
                "features": features_uri,
                "test": test_uri,
                "input": input,
                "color": COLOR_DESCRIPTOR if color else None,
                "k": chosen_k,
                "variance_threshold": variance if input == "pca" and k is None else None,
                "reg_param": reg_param,
                "reg_param_scores": grid_scores,
                "reg_param_log_loss": grid_log_loss,
                "max_iter": max_iter,
                "iterations": logistic.summary.totalIterations if logistic.hasSummary else None,
                "train_rows": n_rows,
                "labels": labels,
                "image_size": made_with.image_size,
                "weights_sha256": made_with.weights_sha256,
                "evaluation": {
                    key: value
                    for key, value in evaluation.as_dict().items()
                    if key in ("on", "rows", "accuracy", "top3_accuracy", "macro_f1")
                },
                "spark": {"master": spark.sparkContext.master, "version": spark.version},
                "versions": _versions(),
                "seconds": seconds,
            }
            io.write_bytes(spark, f"{staged}/{MODEL_INFO}", json.dumps(info, indent=2).encode())
    finally:
        rows.unpersist()
        if data is not None:
            data.unpersist()
    return TrainResult(
        model=model_uri,
        classes=len(labels),
        train_rows=n_rows,
        input=input,
        k=chosen_k,
        reg_param=reg_param,
        evaluation=evaluation,
        seconds=seconds,
        info=info,
    )

"""StandardScaler (mean 0, std 1) then PCA, in pyspark.ml; explained variance and choosing k."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from p8lib.artifacts import Col
from p8lib.errors import UsageError

if TYPE_CHECKING:
    from pyspark.ml import PipelineModel
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class Reduction:
    """A fitted scaler + PCA and what the fit measured.

    ``explained_variance`` holds the ratio of every component the fit computed (at least
    ``k`` of them), so the curve can be drawn past the chosen k.
    """

    model: PipelineModel
    k: int
    explained_variance: np.ndarray

    @property
    def variance_reached(self) -> float:
        """Cumulative explained variance of the first k components."""
        return float(self.explained_variance[: self.k].sum())

    def transform(self, df: DataFrame, *, input_col: str = "features") -> DataFrame:
        """Add ``pca_features`` (array<double>, k) to ``df``; rows whose input is null get null.

        The same arithmetic as the pipeline model's ``transform`` (scale, then project), done as
        one matrix product per Arrow batch in numpy instead of a matrix-vector product per row in
        the JVM. Row order is kept. The batches stay Arrow (no pandas): measured on the 23,619
        Test rows, 3.4 s instead of 11.7 s through pandas.
        """
        from pyspark.ml.feature import PCAModel, StandardScalerModel
        from pyspark.sql.types import ArrayType, DoubleType, StructField, StructType

        scaler, pca = self.model.stages
        assert isinstance(scaler, StandardScalerModel) and isinstance(pca, PCAModel)
        mean, scale = scaler.mean.toArray(), inverse_std(scaler.std.toArray())
        params = df.sparkSession.sparkContext.broadcast((mean, scale, pca.pc.toArray()))
        schema = StructType(
            [*df.schema.fields, StructField("pca_features", ArrayType(DoubleType()))]
        )

        def project(batches: Any) -> Any:
            import pyarrow as pa

            mean, scale, components = params.value
            for batch in batches:
                valid, x = _rows(batch.column(input_col), len(mean))
                y = ((x - mean) * scale) @ components
                offsets = np.zeros(len(valid) + 1, np.int32)
                np.cumsum(valid * components.shape[1], out=offsets[1:])
                out = pa.ListArray.from_arrays(
                    pa.array(offsets), pa.array(y.ravel()), mask=pa.array(~valid)
                )
                names = [*batch.schema.names, "pca_features"]
                yield pa.RecordBatch.from_arrays([*batch.columns, out], names=names)

        return df.mapInArrow(project, schema)


def _rows(values: Any, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow list column of ``width``-long arrays (or nulls) → which rows are not null, and
    those rows as a float64 matrix."""
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    flat = values.flatten().to_numpy(zero_copy_only=False)
    return valid, flat.reshape(-1, width).astype(np.float64)


def choose_k(explained_variance: np.ndarray, variance: float) -> int:
    """The smallest k whose cumulative explained variance reaches ``variance``.

    Examples
    --------
    >>> choose_k(np.array([0.5, 0.3, 0.15, 0.05]), 0.8)
    2
    >>> choose_k(np.array([0.5, 0.3, 0.15, 0.05]), 0.81)
    3
    """
    cumulative = np.cumsum(explained_variance)
    # Rounding can leave the total a hair under 1.0: never ask for more than there is.
    reached = np.nonzero(cumulative >= min(variance, cumulative[-1]) - 1e-12)[0]
    return int(reached[0]) + 1


def max_k(n_rows: int, n_features: int) -> int:
    """The most components a fit on ``n_rows`` × ``n_features`` can give."""
    return min(n_rows, n_features)


@dataclass(frozen=True)
class Moments:
    """Row count, column means and the centred cross-product matrix (sum of outer products)."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    def __add__(self, other: Moments) -> Moments:
        # Chan et al.'s pairwise update: stable, no large sums of squares to subtract.
        if self.n == 0:
            return other
        if other.n == 0:
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, m2)

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        """The moments of the rows of ``x``."""
        x = np.asarray(x, dtype=np.float64)
        if len(x) == 0:
            return cls(0, np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1])))
        mean = x.mean(axis=0)
        centred = x - mean
        return cls(len(x), mean, centred.T @ centred)


def moments(df: DataFrame, *, input_col: str = "features") -> Moments:
    """The moments of an array column, one pass over ``df``: numpy per partition, tree-reduced."""

    def partial(batches: Any) -> Any:
        import pyarrow as pa

        total: Moments | None = None
        for batch in batches:
            values = batch.column(0)
            if values.null_count < len(values):
                width = len(values.drop_null()[0])
                part = Moments.of(_rows(values, width)[1])
                total = part if total is None else total + part
        if total is not None:
            yield pa.RecordBatch.from_pydict(
                {"n": [total.n], "mean": [total.mean.tobytes()], "m2": [total.m2.tobytes()]}
            )

    def unpack(row: Any) -> Moments:
        mean = np.frombuffer(row["mean"], dtype=np.float64)
        m2 = np.frombuffer(row["m2"], dtype=np.float64).reshape(len(mean), len(mean))
        return Moments(int(row["n"]), mean, m2)

    # One partial per core, 16 at most: each is a dense d×d matrix (13 MB for d = 1280) that
    # goes to the driver.
    target = min(df.sparkSession.sparkContext.defaultParallelism, 16)
    data = df.select(input_col)
    if data.rdd.getNumPartitions() > target:
        data = data.coalesce(target)
    from pyspark.sql.types import BinaryType, LongType, StructField, StructType

    schema = StructType(
        [
            StructField("n", LongType()),
            StructField("mean", BinaryType()),
            StructField("m2", BinaryType()),
        ]
    )
    parts = data.mapInArrow(partial, schema=schema).collect()
    if not parts:
        return Moments(0, np.zeros(0), np.zeros((0, 0)))
    total = unpack(parts[0])
    for row in parts[1:]:
        total = total + unpack(row)
    return total


def fit_reduce(
    df: DataFrame,
    *,
    k: int | None = None,
    variance: float = 0.99,
    input_col: str = "features",
) -> Reduction:
    """Fit StandardScaler(withMean, withStd) + PCA on the rows of ``df`` with features.

    With ``k`` the PCA has k components; otherwise k is the smallest count whose cumulative
    explained variance reaches ``variance``. One pass over the data gives the means and the
    1280×1280 covariance; the eigen-decomposition of the correlation matrix (the covariance of
    the standardized features) runs on the driver. The result is the same pair of pyspark.ml
    models that ``StandardScaler().fit`` and ``PCA().fit`` give (up to each component's sign).
    """
    stats = moments(df, input_col=input_col)
    n, dim = stats.n, len(stats.mean)
    if n < 2:
        raise UsageError(f"PCA needs at least 2 featurized images, got {n}")
    limit = max_k(n, dim)
    if k is not None and k > limit:
        raise UsageError(
            f"--k {k} is larger than the data allows: {n} images of {dim} features "
            f"give at most {limit} components"
        )
    covariance = stats.m2 / (n - 1)
    std = _std(stats)
    # A constant feature scales to 0: its row and column drop out.
    scale = inverse_std(std)
    correlation = covariance * np.outer(scale, scale)
    eigenvalues, eigenvectors = np.linalg.eigh(correlation)
    order = np.argsort(eigenvalues)[::-1][:limit]
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    explained = eigenvalues / eigenvalues.sum()
    chosen = k if k is not None else choose_k(explained, variance)
    scaler = _scaler_model(stats.mean, std)
    pca = _pca_model(eigenvectors[:, order[:chosen]], explained[:chosen])
    from pyspark.ml import PipelineModel

    return Reduction(PipelineModel(stages=[scaler, pca]), chosen, explained)


def inverse_std(std: np.ndarray) -> np.ndarray:
    """What StandardScaler multiplies by: 1 / std, and 0 for a constant feature (std 0).

    Examples
    --------
    >>> inverse_std(np.array([2.0, 0.0, 0.5]))
    array([0.5, 0. , 2. ])
    """
    return np.divide(1.0, std, out=np.zeros_like(std, dtype=np.float64), where=std > 0)


def _std(stats: Moments) -> np.ndarray:
    """Sample standard deviation of each column (what StandardScaler divides by)."""
    return np.sqrt(np.clip(np.diag(stats.m2) / max(stats.n - 1, 1), 0.0, None))


def fit_scaler(df: DataFrame, *, input_col: str = "features") -> Any:
    """StandardScaler(withMean, withStd) fitted in one pass: a pyspark.ml StandardScalerModel
    reading the vector column ``Col.VECTOR`` and writing ``Col.SCALED``."""
    stats = moments(df, input_col=input_col)
    if stats.n < 2:
        raise UsageError(f"a scaler needs at least 2 featurized images, got {stats.n}")
    return _scaler_model(stats.mean, _std(stats))


def java_model(python_class: type, java_class: str, *args: Any, params: dict[str, Any]) -> Any:
    """A pyspark.ml model made from values: ``org.apache.spark.ml.feature.<java_class>(uid,
    *args)`` with ``params`` set, wrapped in ``python_class``.

    The one place p8lib uses PySpark's private API (``_py2java``,
    ``_transfer_params_from_java``): pyspark.ml has no public way to build a fitted model
    from its numbers. tests/test_reduce.py fails loudly if an upgrade changes them.
    """
    from pyspark.ml.common import _py2java
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    assert spark is not None and spark.sparkContext._jvm is not None
    uid = f"{java_class.removesuffix('Model')}_{uuid.uuid4().hex[-12:]}"
    values = [_py2java(spark.sparkContext, a) for a in args]
    java = getattr(spark.sparkContext._jvm.org.apache.spark.ml.feature, java_class)(uid, *values)
    for name, value in params.items():
        java.set(java.getParam(name), value)
    model = python_class(java)
    model._transfer_params_from_java()
    return model


def _scaler_model(mean: np.ndarray, std: np.ndarray) -> Any:
    """A pyspark.ml StandardScalerModel (withMean, withStd) for these statistics."""
    from pyspark.ml.feature import StandardScalerModel
    from pyspark.ml.linalg import DenseVector

    params = {"inputCol": Col.VECTOR, "outputCol": Col.SCALED, "withMean": True, "withStd": True}
    return java_model(
        StandardScalerModel,
        "StandardScalerModel",
        DenseVector(std),
        DenseVector(mean),
        params=params,
    )


def _pca_model(components: np.ndarray, explained: np.ndarray) -> Any:
    """A pyspark.ml PCAModel with these principal components (columns) and variance ratios."""
    from pyspark.ml.feature import PCAModel
    from pyspark.ml.linalg import DenseMatrix, DenseVector

    rows, k = components.shape
    matrix = DenseMatrix(
        rows, k, np.asarray(components, dtype=np.float64).flatten(order="F").tolist()
    )
    params = {"inputCol": Col.SCALED, "outputCol": Col.PCA, "k": k}
    return java_model(PCAModel, "PCAModel", matrix, DenseVector(explained), params=params)

"""StandardScaler (mean 0, std 1) then PCA, in pyspark.ml; explained variance and choosing k."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

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
        """Add ``pca_features`` (array<double>, k) to ``df``; rows whose input is null get null."""
        from pyspark.ml.functions import array_to_vector, vector_to_array
        from pyspark.sql import functions as F

        good = df.where(F.col(input_col).isNotNull())
        out = self.model.transform(good.withColumn("_vec", array_to_vector(F.col(input_col))))
        out = out.withColumn("pca_features", vector_to_array(F.col("_pca"), dtype="float64"))
        out = out.drop("_vec", "_scaled", "_pca")
        bad = df.where(F.col(input_col).isNull()).withColumn(
            "pca_features", F.lit(None).cast("array<double>")
        )
        return out.unionByName(bad)


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


def fit_reduce(
    df: DataFrame,
    *,
    k: int | None = None,
    variance: float = 0.99,
    input_col: str = "features",
    n_rows: int | None = None,
) -> Reduction:
    """Fit StandardScaler(withMean, withStd) + PCA on the rows of ``df`` with features.

    With ``k`` the PCA has k components; otherwise k is the smallest count whose cumulative
    explained variance reaches ``variance``. PCA's covariance is computed once: the model for
    the chosen k is cut from the wider fit.
    """
    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    data = df.where(F.col(input_col).isNotNull()).select(
        array_to_vector(F.col(input_col)).alias("_vec")
    )
    n = n_rows if n_rows is not None else data.count()
    dim = len(data.first()["_vec"]) if n else 0  # type: ignore[index]
    if n < 2:
        raise UsageError(f"PCA needs at least 2 featurized images, got {n}")
    limit = max_k(n, dim)
    if k is not None and k > limit:
        raise UsageError(
            f"--k {k} is larger than the data allows: {n} images of {dim} features "
            f"give at most {limit} components"
        )
    scaler = StandardScaler(inputCol="_vec", outputCol="_scaled", withMean=True, withStd=True)
    scaler_model = scaler.fit(data)
    scaled = scaler_model.transform(data)
    fit_k = k if k is not None else limit
    pca = PCA(k=fit_k, inputCol="_scaled", outputCol="_pca").fit(scaled)
    explained = pca.explainedVariance.toArray()
    chosen = k if k is not None else choose_k(explained, variance)
    if chosen < fit_k:
        pca = _truncate(pca, chosen)
    return Reduction(PipelineModel(stages=[scaler_model, pca]), chosen, explained)


def _truncate(pca: Any, k: int) -> Any:
    """The same PCA model keeping only its first k components."""
    from pyspark.ml.common import _py2java
    from pyspark.ml.feature import PCAModel
    from pyspark.ml.linalg import DenseMatrix, DenseVector
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    assert spark is not None
    sc = spark.sparkContext
    pc = pca.pc.toArray()[:, :k]
    java_pc = _py2java(sc, DenseMatrix(pc.shape[0], k, pc.flatten(order="F").tolist()))
    java_ev = _py2java(sc, DenseVector(pca.explainedVariance.toArray()[:k]))
    assert sc._jvm is not None
    java_model = sc._jvm.org.apache.spark.ml.feature.PCAModel(pca.uid, java_pc, java_ev)
    pca._java_obj.copyValues(java_model, sc._jvm.org.apache.spark.ml.param.ParamMap())
    java_model.set(java_model.k(), k)
    model = PCAModel(java_model)
    model._transfer_params_from_java()
    return model

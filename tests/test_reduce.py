"""The one-pass fit against pyspark.ml's own StandardScaler and PCA estimators."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from p8lib.reduce import Moments, fit_reduce


def test_moments_combine_like_one_pass() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, size=(300, 7))
    combined = Moments.of(x[:100]) + Moments.of(x[100:250]) + Moments.of(x[250:])
    whole = Moments.of(x)
    assert combined.n == 300
    np.testing.assert_allclose(combined.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(combined.m2, whole.m2, rtol=1e-10)
    np.testing.assert_allclose(combined.m2 / 299, np.cov(x, rowvar=False), rtol=1e-10)


@pytest.mark.parametrize("k", [3, None])
def test_fit_equals_spark_estimators(spark, sample_table, k) -> None:
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    rows = [(list(map(float, f)),) for f in sample_table.sort_values("path")["features"]]
    df = spark.createDataFrame(rows, "features array<float>")
    ours = fit_reduce(df, k=k, variance=0.95)
    chosen = ours.k

    vec = df.select(array_to_vector(F.col("features")).alias("v"))
    scaler = StandardScaler(inputCol="v", outputCol="s", withMean=True, withStd=True).fit(vec)
    scaled = scaler.transform(vec)
    full = PCA(k=34, inputCol="s", outputCol="p").fit(scaled)
    reference = full.explainedVariance.toArray()
    np.testing.assert_allclose(ours.explained_variance[:34], reference, rtol=1e-6, atol=1e-10)
    if k is None:
        cumulative = np.cumsum(reference)
        assert cumulative[chosen - 1] >= 0.95 > cumulative[chosen - 2]

    our_scaler: Any
    our_pca: Any
    our_scaler, our_pca = ours.model.stages
    np.testing.assert_allclose(our_scaler.mean.toArray(), scaler.mean.toArray(), rtol=1e-9)
    np.testing.assert_allclose(our_scaler.std.toArray(), scaler.std.toArray(), rtol=1e-9)
    ours_pc = our_pca.pc.toArray()
    theirs = PCA(k=chosen, inputCol="s", outputCol="p").fit(scaled)
    theirs_pc = theirs.pc.toArray()
    signs = np.sign(np.sum(ours_pc * theirs_pc, axis=0))
    np.testing.assert_allclose(ours_pc, theirs_pc * signs, atol=1e-6)

    table: Any = ours.transform(df).toPandas()
    projected = np.stack(table["pca_features"])
    # Signs are compared against the model with the same k: Spark picks a different eigen-solver
    # for k=34 than for a small k, and each may flip a component.
    expected = np.stack([r.p.toArray() for r in theirs.transform(scaled).collect()])
    np.testing.assert_allclose(projected, expected * signs, atol=1e-5)

"""The pipeline on the 34-image sample: rows, features, PCA, plot, manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT

from p8lib import jvm
from p8lib.pipeline import run


def _manifest_labels() -> dict[str, str]:
    with (ROOT / "data_sample" / "manifest.csv").open() as fh:
        return {r["path"].removeprefix("Test/"): r["label"] for r in csv.DictReader(fh)}


def _matrix(table, column: str) -> np.ndarray:
    return np.stack(table.sort_values("path")[column].to_numpy()).astype(np.float64)


def test_sample_gives_one_row_per_image_with_labels_from_folders(sample_run, sample_table):
    assert len(sample_table) == 34
    assert sample_table["path"].is_unique
    expected = _manifest_labels()
    for path, label in zip(sample_table["path"], sample_table["label"], strict=True):
        relative = f"{Path(path).parent.name}/{Path(path).name}"
        assert label == Path(path).parent.name == expected[relative]
    assert sample_table["label"].nunique() == 17
    assert sample_table["error"].isna().all()
    assert {len(f) for f in sample_table["features"]} == {1280}
    assert {len(p) for p in sample_table["pca_features"]} == {sample_run.k}
    assert {len(c) for c in sample_table["color"]} == {1024}


def test_parquet_schema_keeps_the_reference_columns(spark, sample_run):
    schema = spark.read.parquet(sample_run.parquet).schema
    types = {f.name: f.dataType.simpleString() for f in schema.fields}
    assert types["path"] == "string" and types["label"] == "string"
    assert types["features"] == "array<float>"
    assert types["pca_features"] == "array<double>"
    assert types["color"] == "array<float>"


def test_spark_features_equal_a_direct_keras_predict(sample_run, sample_table, weights_path):
    """The default engine (OpenVINO fp32) against Keras itself: the same features."""
    assert sample_run.manifest.network["engine"] == "openvino"
    assert sample_run.manifest.network["precision"] == "fp32"
    import keras
    from keras.applications.mobilenet_v2 import preprocess_input
    from PIL import Image

    model = keras.applications.MobileNetV2(
        weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3)
    )
    model.load_weights(str(weights_path))
    table = sample_table.sort_values("path")
    images = np.stack(
        [
            np.asarray(
                Image.open(p.removeprefix("file:"))
                .convert("RGB")
                .resize((224, 224), Image.Resampling.BILINEAR),
                dtype=np.float32,
            )
            for p in table["path"]
        ]
    )
    direct = model.predict(preprocess_input(images), verbose=0)
    spark_features = _matrix(table, "features")
    assert direct.shape == spark_features.shape == (34, 1280)
    assert np.abs(direct - spark_features).max() < 1e-4
    # Not a trivial match: the features differ from image to image.
    assert np.abs(spark_features - spark_features.mean(axis=0)).max() > 0.1


def test_spark_color_histograms_equal_a_histogramdd_reference(sample_table):
    """HSV 16×8×8 of every other pixel of the 224×224 input, square-rooted fractions."""
    from PIL import Image

    table = sample_table.sort_values("path")
    expected = []
    for p in table["path"]:
        rgb = (
            Image.open(p.removeprefix("file:"))
            .convert("RGB")
            .resize((224, 224), Image.Resampling.BILINEAR)
        )
        hsv = np.asarray(Image.fromarray(np.asarray(rgb)[::2, ::2]).convert("HSV"))
        counts, _ = np.histogramdd(hsv.reshape(-1, 3), bins=(16, 8, 8), range=[(0, 256)] * 3)
        expected.append(np.sqrt(counts.ravel() / counts.sum()))
    spark_color = _matrix(table, "color")
    assert spark_color.shape == (34, 1024)
    np.testing.assert_allclose(spark_color, np.stack(expected), atol=1e-6)
    # Unit length (Hellinger), and 17 fruits with 17 different colour distributions.
    np.testing.assert_allclose((spark_color**2).sum(axis=1), 1.0, atol=1e-5)
    by_label = table.assign(c=list(spark_color)).groupby("label")["c"].first()
    assert len({tuple(np.round(c, 3)) for c in by_label}) == 17


def test_pca_equals_a_numpy_and_sklearn_reference(sample_run, sample_table):
    from sklearn.decomposition import PCA

    x = _matrix(sample_table, "features")
    std = x.std(axis=0, ddof=1)
    scaled = np.where(std > 0, (x - x.mean(axis=0)) / np.where(std > 0, std, 1), 0.0)
    _, s, vt = np.linalg.svd(scaled, full_matrices=False)
    ratio = s**2 / np.sum(s**2)
    k = sample_run.k

    cumulative = np.cumsum(ratio)
    assert cumulative[k - 1] >= 0.99 > cumulative[k - 2], "k is the smallest reaching 99%"
    explained = np.array(sample_run.manifest.pca.explained_variance)
    np.testing.assert_allclose(explained[:k], ratio[:k], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        explained[:k], PCA().fit(scaled).explained_variance_ratio_[:k], rtol=1e-6
    )

    projected = scaled @ vt[:k].T
    spark_pca = _matrix(sample_table, "pca_features")
    signs = np.sign(np.sum(projected * spark_pca, axis=0))
    np.testing.assert_allclose(spark_pca, projected * signs, atol=1e-6 * np.abs(projected).max())


def test_explicit_k_gives_that_many_components(spark, sample_dir, sample_table, tmp_path):
    result = run(images=str(sample_dir), output=str(tmp_path / "k5"), k=5)
    assert result.k == 5
    table = spark.read.parquet(result.parquet).toPandas()
    five = _matrix(table, "pca_features")
    assert five.shape == (34, 5)
    wide = _matrix(sample_table, "pca_features")[:, :5]
    signs = np.sign(np.sum(five * wide, axis=0))
    np.testing.assert_allclose(five, wide * signs, atol=1e-6)
    assert result.manifest.pca.variance_threshold is None


def test_explained_variance_plot_is_a_png(sample_run):
    from PIL import Image

    path = Path(sample_run.plot.removeprefix("file://"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] >= 400


def test_manifest_is_complete(sample_run):
    out = Path(sample_run.output.removeprefix("file://"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(sample_run.manifest.as_dict()))
    assert manifest["counts"] == {
        "images": 34,
        "featurized": 34,
        "reused": 0,
        "succeeded": 34,
        "failed": 0,
        "failed_by_reason": {},
    }
    assert manifest["inference_images"] == 34, "the network ran once per image, not per action"
    assert manifest["listing"]["listed"] == 34 and manifest["listing"]["symlink_loops"] == 0
    assert manifest["pca"]["k"] == sample_run.k
    assert manifest["pca"]["variance_reached"] >= 0.99
    assert manifest["inputs"]["images"].startswith("file:///")
    assert manifest["spark"]["master"].startswith("local")
    # The suite's session (a local master, not a short run): C2 for the hot methods only.
    assert manifest["spark"]["jit"] == jvm.HOT_ONLY_C2.split()
    for lib in ("python", "pyspark", "tensorflow-cpu", "keras", "numpy", "pillow"):
        assert manifest["versions"][lib][0].isdigit(), lib
    assert set(manifest["seconds"]) == {"read", "featurize", "reduce", "write", "total"}
    assert all(v >= 0 for v in manifest["seconds"].values())
    assert not list(out.parent.glob(".sample.tmp-*")), "the staging folder was moved in place"


def test_k_larger_than_the_data_is_refused_before_writing(spark, sample_dir, tmp_path):
    from p8lib.errors import UsageError

    with pytest.raises(UsageError, match="at most 34 components"):
        run(images=str(sample_dir), output=str(tmp_path / "out"), k=35)
    assert not (tmp_path / "out").exists()

"""`p8 train` and `p8 predict`: the Spark ML classifier, its scores, the numpy predictor."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import p8
from PIL import Image


def _spark_scores(spark, model_dir: str, parquet: str):
    """The saved Spark PipelineModel applied to the run's rows: path → (label, probs)."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.sql import functions as F

    model = PipelineModel.load(f"{model_dir}/spark_model")
    rows = spark.read.parquet(parquet).where(F.col("features").isNotNull())
    scored = model.transform(
        rows.withColumn("_vec", array_to_vector(F.col("features"))).withColumn(
            "_color", array_to_vector(F.col("color"))
        )
    )
    out = scored.select(
        "path",
        "label",
        "features",
        "color",
        "predicted_label",
        vector_to_array(F.col("probability")).alias("p"),
    ).collect()
    return {r["path"]: r for r in out}


def test_model_folder_is_complete(sample_model, sample_run) -> None:
    folder = Path(sample_model.model.removeprefix("file://"))
    assert (folder / "spark_model" / "metadata").is_dir()
    info = json.loads((folder / "model.json").read_text())
    assert len(info["labels"]) == 17 and info["k"] == 10 and info["input"] == "pca"
    assert info["color"] == "hsv-16x8x8-sqrt"
    assert info["train_rows"] == 34
    assert info["reg_param"] in (1e-4, 1e-3, 1e-2, 1e-1)
    assert set(info["reg_param_scores"]) == {"0.0001", "0.001", "0.01", "0.1"}
    accuracy, log_loss = info["reg_param_scores"], info["reg_param_log_loss"]
    assert set(log_loss) == set(accuracy) and all(v > 0 for v in log_loss.values())
    # The most accurate on the held-out rows; among those, the lowest log-loss.
    top = max(accuracy.values())
    chosen = min((r for r in accuracy if accuracy[r] == top), key=lambda r: log_loss[r])
    assert info["reg_param"] == float(chosen)
    assert info["weights_sha256"] == sample_run.manifest.inputs.weights_sha256
    assert info["image_size"] == 224
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert evaluation["rows"] == 34
    assert {"accuracy", "macro_f1", "top3_accuracy", "worst_classes", "top_confusions"} <= set(
        evaluation
    )
    png = (folder / "confusion.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    Image.open(folder / "confusion.png").verify()


def test_scores_match_scikit_learn(spark, sample_model, sample_run) -> None:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    scored = _spark_scores(spark, sample_model.model, sample_run.parquet)
    y_true = [r["label"] for r in scored.values()]
    y_pred = [r["predicted_label"] for r in scored.values()]
    ev = sample_model.evaluation
    assert ev.rows == len(y_true) == 34
    assert ev.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    present = sorted(set(y_true))
    assert ev.macro_f1 == pytest.approx(
        f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
    )
    classes = sorted(set(y_true) | set(y_pred))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    ours = {c["label"]: c for c in ev.per_class()}
    for i, label in enumerate(classes):
        assert ours[label]["precision"] == pytest.approx(p[i])
        assert ours[label]["recall"] == pytest.approx(r[i])
        assert ours[label]["f1"] == pytest.approx(f[i])
        assert ours[label]["support"] == s[i]
    # Top-3: the true label among the three most probable, computed here from the probabilities.
    labels = json.loads(
        (Path(sample_model.model.removeprefix("file://")) / "model.json").read_text()
    )["labels"]
    hits = [
        labels.index(row["label"]) in np.argsort(-np.asarray(row["p"]))[:3]
        for row in scored.values()
    ]
    assert ev.top3_accuracy == pytest.approx(np.mean(hits))


def test_confusions_come_from_the_matrix() -> None:
    from p8lib.classify import Evaluation

    matrix = np.array([[5, 3, 0], [1, 4, 0], [0, 2, 6]])
    ev = Evaluation(on="x", labels=["a", "b", "c"], matrix=matrix, top3_accuracy=1.0)
    assert ev.top_confusions(2) == [
        {"true": "a", "predicted": "b", "count": 3},
        {"true": "c", "predicted": "b", "count": 2},
    ]
    assert ev.accuracy == pytest.approx(15 / 21)
    assert [c["label"] for c in ev.worst(1)] == ["b"]  # F1: a 0.71, b 0.57, c 0.86


def test_numpy_classifier_agrees_with_spark(spark, sample_model, sample_run) -> None:
    from p8lib.predict import load_classifier

    scored = _spark_scores(spark, sample_model.model, sample_run.parquet)
    classifier = load_classifier(sample_model.model.removeprefix("file://"))
    assert classifier.components is not None and classifier.components.shape == (1280, 10)
    # The regression sees the 10 components, then the 1024 histogram bins.
    assert classifier.color and classifier.coefficients.shape == (17, 10 + 1024)
    rows = list(scored.values())
    features = np.stack([np.asarray(r["features"]) for r in rows])
    colors = np.stack([np.asarray(r["color"]) for r in rows])
    with pytest.raises(ValueError, match="colour histograms"):
        classifier.probabilities(features)
    probs = classifier.probabilities(features, colors)
    spark_probs = np.stack([np.asarray(r["p"]) for r in rows])
    np.testing.assert_allclose(probs, spark_probs, atol=1e-9)
    assert [classifier.labels[i] for i in probs.argmax(axis=1)] == [
        r["predicted_label"] for r in rows
    ]


def test_full_features_model_without_color_agrees_with_spark(spark, sample_run, tmp_path) -> None:
    from p8lib.classify import train
    from p8lib.errors import UsageError
    from p8lib.predict import load_classifier

    # The results of an older p8 run: no colour histograms.
    older = tmp_path / "older"
    shutil.copytree(sample_run.output.removeprefix("file://"), older)
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["inputs"]["color"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="no hsv-16x8x8-sqrt colour histograms.*--no-color"):
        train(features=str(older), model=str(tmp_path / "refused"), input="features")
    assert not (tmp_path / "refused").exists()

    result = train(
        features=str(older),
        model=str(tmp_path / "m"),
        input="features",
        color=False,
        reg_param=0.01,
    )
    assert result.k is None and result.reg_param == 0.01 and result.info.color is None
    assert result.evaluation is not None and result.evaluation.on.startswith("held-out")
    assert result.train_rows + result.evaluation.rows == 34
    classifier = load_classifier(tmp_path / "m")
    # Trained on the four fifths kept: the classes present there.
    assert classifier.labels == result.info.labels and len(classifier.labels) <= 17
    assert classifier.components is None
    assert classifier.coefficients.shape == (len(classifier.labels), 1280)
    assert not classifier.color
    rows = list(_spark_scores(spark, str(tmp_path / "m"), sample_run.parquet).values())
    probs = classifier.probabilities(np.stack([np.asarray(r["features"]) for r in rows]))
    np.testing.assert_allclose(probs, np.stack([np.asarray(r["p"]) for r in rows]), atol=1e-9)


def test_predict_command_names_the_fruit(
    spark, sample_model, sample_run, sample_dir, tmp_path
) -> None:
    scored = _spark_scores(spark, sample_model.model, sample_run.parquet)
    jpgs = sorted(sample_dir.rglob("*.jpg"))[:3]
    # The same pixels as a lossless PNG; a large PNG of any size; a file that is no image.
    png = tmp_path / "same.png"
    Image.open(jpgs[0]).save(png)
    big = tmp_path / "big.png"
    Image.open(jpgs[1]).resize((1200, 900)).save(big)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    photos = [*map(str, jpgs), str(png), str(big), str(broken)]
    model = sample_model.model.removeprefix("file://")
    result = p8("predict", *photos, "--model", model, "--json")
    assert result.returncode == 1, result.stderr
    assert "1 of 6 photos could not be read" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == photos
    labels = {r["label"] for r in scored.values()}
    for line in lines[:5]:
        probs = [t["probability"] for t in line["top"]]
        assert len(line["top"]) == 3 and probs == sorted(probs, reverse=True)
        assert {t["label"] for t in line["top"]} <= labels and sum(probs) <= 1 + 1e-9
    assert lines[5]["top"] == [] and "error" in lines[5]
    # Each jpg agrees with the Spark model on the features Spark computed for it.
    by_name = {Path(p).name: r for p, r in scored.items()}
    for photo, line in zip(jpgs, lines, strict=False):
        row = by_name[photo.name]
        best = np.argsort(-np.asarray(row["p"]))[:3]
        assert line["top"][0]["label"] == row["predicted_label"]
        np.testing.assert_allclose(
            [t["probability"] for t in line["top"]], np.asarray(row["p"])[best], atol=1e-3
        )
    # Lossless PNG of the same pixels: the same features, the same answer.
    assert [t["label"] for t in lines[3]["top"]] == [t["label"] for t in lines[0]["top"]]
    assert [t["probability"] for t in lines[3]["top"]] == pytest.approx(
        [t["probability"] for t in lines[0]["top"]], abs=1e-6
    )
    plain = p8("predict", str(jpgs[0]), "--model", model)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith(f"{jpgs[0]}: {lines[0]['top'][0]['label']} ")


def test_train_and_predict_refuse_bad_input(sample_model, sample_dir, tmp_path) -> None:
    model = sample_model.model.removeprefix("file://")
    not_results = p8("train", "--features", str(sample_dir), "--model", str(tmp_path / "m"))
    assert not_results.returncode == 2
    assert "holds no p8 run results" in not_results.stderr
    assert "Traceback" not in not_results.stderr
    before = sorted(p.name for p in Path(model).iterdir())
    exists = p8("train", "--features", str(sample_dir), "--model", model)
    assert exists.returncode == 2 and "already exists" in exists.stderr
    assert sorted(p.name for p in Path(model).iterdir()) == before
    missing = p8("predict", str(next(sample_dir.rglob("*.jpg"))), "--model", str(tmp_path / "x"))
    assert missing.returncode == 2 and "model not found" in missing.stderr
    not_model = p8("predict", str(next(sample_dir.rglob("*.jpg"))), "--model", str(sample_dir))
    assert not_model.returncode == 2 and "no p8 model" in not_model.stderr


def test_predict_photos_checks_its_arguments_at_the_call(sample_model, tmp_path) -> None:
    """predict_photos answers lazily, batch by batch, but a bad argument, model or weights file
    is refused when it is called, not when a caller first asks for an answer."""
    from p8lib.errors import P8Error, UsageError
    from p8lib.predict import predict_photos

    photos = [tmp_path / "never-read.jpg"]  # does not exist: nothing may try to read it
    with pytest.raises(UsageError, match="--top must be positive"):
        predict_photos(photos, model=sample_model.model, top=0)
    with pytest.raises(UsageError, match="--unsure-below must be between 0 and 1"):
        predict_photos(photos, model=sample_model.model, unsure_below=2.0)
    with pytest.raises(P8Error, match="model not found"):
        predict_photos(photos, model=tmp_path / "no-model")
    import h5py

    other = tmp_path / "other.h5"  # MobileNetV2's layer names, not the model's weights
    with h5py.File(other, "w") as h5:
        h5.create_group("Conv1"), h5.create_group("Conv_1")
    with pytest.raises(UsageError, match="not the weights this model was trained with"):
        predict_photos(photos, model=sample_model.model, weights=str(other))
    (answer,) = predict_photos(photos, model=sample_model.model)
    assert answer.error is not None and "cannot read" in answer.error


def test_classifier_on_held_out_fruits(spark, fruits_dir, tmp_path) -> None:
    """Six classes: train on Training-subset (40 each), evaluate on all their Test images."""
    from p8lib.classify import train
    from p8lib.pipeline import run

    classes = sorted(os.listdir(fruits_dir / "Test"))[::24][:6]
    for split in ("Training-subset", "Test"):
        for name in classes:
            shutil.copytree(fruits_dir / split / name, tmp_path / split / name)
    run(images=str(tmp_path / "Training-subset"), output=str(tmp_path / "train"))
    run(images=str(tmp_path / "Test"), output=str(tmp_path / "test"), k=5)
    result = train(
        features=str(tmp_path / "train"), model=str(tmp_path / "m"), test=str(tmp_path / "test")
    )
    ev = result.evaluation
    assert ev is not None and result.train_rows == 240
    n_test = sum(len(os.listdir(fruits_dir / "Test" / c)) for c in classes)
    assert ev.rows == n_test
    # Chance is 1/6; MobileNetV2 features and colour separate these fruits almost perfectly.
    assert ev.accuracy > 0.9 and ev.macro_f1 > 0.9


def test_a_model_fitted_without_standardization_predicts_as_spark(
    spark, sample_model, sample_run, tmp_path
) -> None:
    """--no-standardization: another fit (the penalty on the raw PCA scale), the same reading."""
    from p8lib.classify import train
    from p8lib.predict import load_classifier

    result = train(
        features=sample_run.output,
        model=str(tmp_path / "m"),
        test=sample_run.output,
        k=10,
        reg_param=0.01,
        standardization=False,
    )
    assert json.loads((tmp_path / "m" / "model.json").read_text())["standardization"] is False
    classifier = load_classifier(tmp_path / "m")
    standardized = load_classifier(sample_model.model.removeprefix("file://"))
    assert not np.allclose(classifier.coefficients, standardized.coefficients)
    rows = list(_spark_scores(spark, str(tmp_path / "m"), sample_run.parquet).values())
    probs = classifier.probabilities(
        np.stack([np.asarray(r["features"]) for r in rows]),
        np.stack([np.asarray(r["color"]) for r in rows]),
    )
    np.testing.assert_allclose(probs, np.stack([np.asarray(r["p"]) for r in rows]), atol=1e-9)
    assert result.evaluation.rows == 34


def test_train_uses_the_running_session_when_this_thread_sees_none(
    spark, sample_run, tmp_path
) -> None:
    """Spark keeps the active session per JVM thread, and a caller's thread may see none (it
    happened after predict_photos in the same process): the API then takes the session the
    process runs, rather than failing inside Spark ML."""
    from pyspark.sql import SparkSession

    from p8lib.classify import train

    spark._jvm.SparkSession.clearActiveSession()
    assert SparkSession.getActiveSession() is None
    result = train(features=sample_run.output, model=str(tmp_path / "m"), k=10)
    assert result.evaluation.rows > 0 and (tmp_path / "m" / "model.json").is_file()
    active = SparkSession.getActiveSession()
    assert active is not None and active._jsparkSession.equals(spark._jsparkSession)

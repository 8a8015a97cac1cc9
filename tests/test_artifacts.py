"""The job frame's contracts: typed settings mirrored by the CLI, versioned artifacts, and the
one place that uses PySpark's private API."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import p8

from p8lib.artifacts import FORMAT_VERSION, MANIFEST, MODEL_INFO, ModelInfo, RunManifest
from p8lib.cli import build_parser
from p8lib.config import RunConfig, TrainConfig
from p8lib.errors import UsageError


def _local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def _options(parser: argparse.ArgumentParser, command: str) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest for a in sub.choices[command]._actions}


@pytest.mark.parametrize(("command", "config"), [("run", RunConfig), ("train", TrainConfig)])
def test_every_setting_has_its_cli_option(command: str, config: type) -> None:
    """The CLI builds the config from its options by name: a field without an option (or an
    option the config lacks) would be silently dropped."""
    actions = {"help", "verbose", "quiet", "conf", "dry_run"}  # how to run, not what
    options = _options(build_parser(), command) - actions
    settings = {f.name for f in fields(config)} - {"spark_conf"}
    assert options == settings


def test_the_cli_passes_every_option_into_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from p8lib import cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr("p8lib.classify.fit", lambda config, **_: seen.setdefault("c", config))
    args = ["train", "--features", "f", "--model", "m", "--test", "t", "--input", "features"]
    args += ["--no-color", "--k", "7", "--reg-param", "0.5", "--max-iter", "9"]
    args += ["--mode", "overwrite", "--master", "local[1]", "--s3-endpoint", "http://h:1"]
    args += ["--conf", "spark.a=b"]
    with pytest.raises(AttributeError):  # the stub's return value has no summary()
        cli.COMMANDS["train"](build_parser().parse_args(args))
    assert seen["c"] == TrainConfig(
        features="f",
        model="m",
        test="t",
        input="features",
        color=False,
        k=7,
        reg_param=0.5,
        max_iter=9,
        mode="overwrite",
        master="local[1]",
        s3_endpoint="http://h:1",
        spark_conf={"spark.a": "b"},
    )


def test_the_s3_endpoint_comes_from_the_environment_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert RunConfig(images="a", output="b").s3_endpoint == "http://127.0.0.1:9"
    assert TrainConfig(features="a", model="b", s3_endpoint="http://x:1").s3_endpoint == (
        "http://x:1"
    )
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert TrainConfig(features="a", model="b").s3_endpoint is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"input": "pixels"}, "--input must be one of pca, features"),
        ({"k": 1281}, "--k must be between 1 and 1280"),
        ({"k": "abc"}, "--k must be a whole number, got 'abc'"),
        ({"k": 2.5}, "--k must be a whole number, got 2.5"),
        ({"variance": "0.9"}, "--variance must be a number, got '0.9'"),
        ({"reg_param": -1.0}, "--reg-param must be 0 or more"),
        ({"reg_param": float("nan")}, "--reg-param must be 0 or more .and finite., got nan"),
        ({"reg_param": float("inf")}, "--reg-param must be 0 or more .and finite., got inf"),
        ({"mode": "incremental"}, "--mode must be error or overwrite"),
        ({"master": "nowhere"}, "is not a Spark master URL"),
        ({"master": "local[0]"}, "is not a Spark master URL"),  # no thread to run on
        ({"features": " "}, "--features is empty"),
    ],
)
def test_train_settings_are_validated(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        TrainConfig(**{"features": "f", "model": "m", **settings})


def test_the_manifest_reads_back_as_written(sample_run) -> None:
    text = (_local(sample_run.output) / MANIFEST).read_text()
    assert json.loads(text)["format_version"] == FORMAT_VERSION
    assert RunManifest.from_json(text, where="m") == sample_run.manifest


def test_model_info_reads_back_as_written(sample_model) -> None:
    text = (_local(sample_model.model) / MODEL_INFO).read_text()
    assert ModelInfo.from_json(text, where="m") == sample_model.info


def _rewrite(path: Path, change: Any) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def test_results_of_an_older_p8lib_are_refused_in_one_line(sample_run, tmp_path: Path) -> None:
    older = tmp_path / "older results"
    shutil.copytree(_local(sample_run.output), older)
    _rewrite(older / MANIFEST, lambda m: m.pop("format_version"))
    result = p8("train", "--features", str(older), "--model", str(tmp_path / "model"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "written by an older p8lib (format 0" in lines[0]
    assert "`p8 run`" in lines[0]
    assert not (tmp_path / "model").exists()


def test_a_model_of_a_newer_p8lib_is_refused_in_one_line(sample_model, sample_dir, tmp_path):
    newer = tmp_path / "model"
    shutil.copytree(_local(sample_model.model), newer)
    _rewrite(newer / MODEL_INFO, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    photo = next(sample_dir.rglob("*.jpg"))
    result = p8("predict", "--model", str(newer), str(photo))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"p8: error: {newer}/{MODEL_INFO} was written by a newer p8lib (format "
        f"{FORMAT_VERSION + 1}; this one reads format {FORMAT_VERSION}): upgrade p8lib"
    ]


def test_a_record_missing_a_field_is_named(sample_run, tmp_path: Path) -> None:
    record = sample_run.manifest.as_dict()
    del record["counts"]
    with pytest.raises(UsageError, match="not a complete RunManifest .*counts"):
        RunManifest.from_dict(record, where="x")


@pytest.mark.slow
def test_incremental_over_older_results_featurizes_everything(
    spark, sample_run, sample_dir, tmp_path
):
    from p8lib.pipeline import run

    out = tmp_path / "out"
    shutil.copytree(_local(sample_run.output), out)
    _rewrite(out / MANIFEST, lambda m: m.pop("format_version"))
    said: list[str] = []
    result = run(images=str(sample_dir), output=str(out), mode="incremental", log=said.append)
    assert result.featurized == 34 and result.manifest.counts.reused == 0
    assert any("older p8lib" in line and "featurizing everything" in line for line in said)
    assert json.loads((out / MANIFEST).read_text())["format_version"] == FORMAT_VERSION


def test_pyspark_private_api_still_builds_our_models(spark) -> None:
    """reduce.java_model is the one user of PySpark's private API: if an upgrade renames or
    changes it, this fails here, by name, rather than deep inside a run."""
    from pyspark.ml import common
    from pyspark.ml.feature import StandardScaler, StandardScalerModel
    from pyspark.ml.linalg import DenseVector, Vectors
    from pyspark.ml.wrapper import JavaParams

    from p8lib.reduce import java_model

    assert hasattr(common, "_py2java"), "pyspark.ml.common._py2java is gone: see java_model"
    assert hasattr(JavaParams, "_transfer_params_from_java"), "see reduce.java_model"
    rows = [(Vectors.dense([1.0, 10.0]),), (Vectors.dense([3.0, 30.0]),)]
    df = spark.createDataFrame(rows, ["_vec"])
    fitted = StandardScaler(inputCol="_vec", outputCol="_scaled", withMean=True).fit(df)
    ours = java_model(
        StandardScalerModel,
        "StandardScalerModel",
        DenseVector(fitted.std.toArray()),
        DenseVector(fitted.mean.toArray()),
        params={"inputCol": "_vec", "outputCol": "_scaled", "withMean": True, "withStd": True},
    )
    assert ours.getOrDefault("withMean") is True and ours.getInputCol() == "_vec"
    got = [r["_scaled"].toArray() for r in ours.transform(df).collect()]
    want = [r["_scaled"].toArray() for r in fitted.transform(df).collect()]
    np.testing.assert_allclose(got, want)


def test_column_and_file_names_are_defined_once() -> None:
    """The model's input columns are the artifacts' (predict reads the saved model by them)."""
    from p8lib import classify, predict, reduce

    for module in (classify, predict, reduce):
        source = Path(module.__file__ or "").read_text()
        for literal in ('"_vec"', '"_scaled"', '"_pca"', '"_color"', '"model.json"'):
            assert literal not in source, f"{module.__name__} spells {literal}"


def test_every_cluster_setting_has_its_emr_up_option() -> None:
    from p8lib.emr import ClusterSpec

    emr = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices["emr"]
    up = _options(emr, "up")
    assert {f.name for f in fields(ClusterSpec)} <= up

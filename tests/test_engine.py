"""The network's engines: OpenVINO equals Keras at fp32, bf16/int8 within bounds, the IR cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT

from p8lib import engine
from p8lib.errors import UsageError
from p8lib.featurize import load_image


def _images(folder: Path, n: int | None = None, size: int = 224) -> np.ndarray:
    paths = sorted(folder.rglob("*.jpg"))
    step = max(1, len(paths) // n) if n else 1
    chosen = paths[::step][:n] if n else paths
    return np.stack([load_image(p.read_bytes(), size) for p in chosen])


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))


def _network(weights_path: Path, precision: str, calibration=None, **kw) -> engine.Network:
    sha = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    return engine.prepare(
        engine=kw.pop("engine", "openvino"),
        precision=precision,
        weights_path=weights_path,
        weights_sha256=sha,
        image_size=kw.pop("image_size", 224),
        calibration=calibration,
        **kw,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ir-cache")


@pytest.fixture(autouse=True)
def _cache_env(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P8_CACHE_DIR", str(cache))


@pytest.fixture(scope="module")
def keras_features(weights_path: Path, sample_dir: Path) -> np.ndarray:
    keras = engine.load(_network(weights_path, "fp32", engine="keras"))
    return engine.embed(keras, _images(sample_dir))


@pytest.mark.slow
def test_openvino_fp32_gives_keras_features(weights_path, sample_dir, keras_features) -> None:
    net = engine.load(_network(weights_path, "fp32"))
    ours = engine.embed(net, _images(sample_dir), batch_size=7)  # batches of any size
    assert ours.shape == keras_features.shape == (34, 1280) and ours.dtype == np.float32
    assert np.abs(ours - keras_features).max() <= 1e-3
    assert np.abs(keras_features - keras_features.mean(axis=0)).max() > 0.1  # not a constant


@pytest.mark.slow
def test_bf16_and_int8_stay_close_to_fp32(
    weights_path, sample_dir, fruits_dir, keras_features
) -> None:
    images = _images(sample_dir)
    bf16 = engine.embed(engine.load(_network(weights_path, "bf16")), images)
    cos = _cosine(bf16, keras_features)
    assert cos.mean() >= 0.98 and cos.min() >= 0.95, (cos.mean(), cos.min())
    training = _images(fruits_dir / "Training-subset", n=120)  # never the evaluated images
    calibration = engine.Calibration({"source": "test", "sha256": "ab" * 32}, lambda: training)
    net = _network(weights_path, "int8", calibration)
    assert "-cal" in net.key and net.calibration == calibration.record
    pooled = engine.embed(engine.load(net), images)
    cos = _cosine(pooled, keras_features)
    assert cos.mean() >= 0.9 and cos.min() >= 0.75, (cos.mean(), cos.min())
    assert cos.mean() < 0.9999, "int8 was not quantized"
    # The photo model's cells: the same quantized network, read up to its average.
    for mapped in (
        _network(weights_path, "int8", calibration, pooled=False),
        engine.cached(net.key, 224, pooled=False),  # what p8 predict loads for an int8 model
    ):
        assert mapped.files == net.files and mapped.key == net.key and not mapped.pooled
        maps = engine.embed(engine.load(mapped), images)
        assert maps.shape == (34, 7, 7, 1280)
        np.testing.assert_allclose(maps.mean(axis=(1, 2)), pooled, atol=1e-4)


@pytest.mark.slow
def test_the_ir_is_cached_by_weights_size_and_precision(weights_path, cache: Path) -> None:
    said: list[str] = []
    first = _network(weights_path, "fp32", image_size=160, log=said.append)
    assert said == ["converting MobileNetV2 to OpenVINO (fp32, 160×160)"]
    again = _network(weights_path, "fp32", image_size=160, log=said.append)
    assert len(said) == 1 and again.files == first.files and again.key == first.key
    folder = cache / "openvino" / first.key
    assert sorted(p.name for p in folder.iterdir()) == ["model.bin", "model.xml", "p8.json"]
    assert json.loads((folder / "p8.json").read_text()) == {"precision": "fp32", "image_size": 160}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".convert-")]
    other = _network(weights_path, "bf16", image_size=160, log=said.append)
    assert other.key != first.key and len(said) == 2
    (folder / "model.bin").unlink()  # a damaged cache entry is rebuilt, not used
    rebuilt = _network(weights_path, "fp32", image_size=160, log=said.append)
    assert len(said) == 3 and rebuilt.files == first.files
    images = np.zeros((2, 160, 160, 3), np.uint8)
    assert engine.embed(engine.load(rebuilt), images).shape == (2, 1280)
    # The feature map is read from the same IR: nothing converted, nothing more cached.
    mapped = _network(weights_path, "fp32", image_size=160, log=said.append, pooled=False)
    assert len(said) == 3 and mapped.files == first.files and mapped.key == first.key
    assert not mapped.pooled
    assert engine.embed(engine.load(mapped), images).shape == (2, 5, 5, 1280)
    assert not [p for p in folder.parent.iterdir() if p.name.endswith("-map")]


@pytest.mark.slow
def test_a_worker_runs_the_ir_without_tensorflow(weights_path, tmp_path: Path) -> None:
    """What an executor's Python worker does with the broadcast network: no TensorFlow."""
    import pickle

    network = _network(weights_path, "fp32")
    (tmp_path / "net.pkl").write_bytes(pickle.dumps(network))
    code = (
        "import pickle, sys, numpy as np\n"
        "from p8lib import engine, featurize\n"
        f"net = engine.load(pickle.load(open({str(tmp_path / 'net.pkl')!r}, 'rb')), threads=1)\n"
        "out = engine.embed(net, np.zeros((3, 224, 224, 3), np.uint8))\n"
        "assert out.shape == (3, 1280), out.shape\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_engine_and_precision_are_checked() -> None:
    engine.check("openvino", "int8")
    with pytest.raises(UsageError, match="--precision bf16 needs --engine openvino"):
        engine.check("keras", "bf16")
    with pytest.raises(UsageError, match="--engine must be one of"):
        engine.check("onnx", "fp32")
    with pytest.raises(UsageError, match="int8 network this model was trained with"):
        engine.cached("no-such-key", 224)


@pytest.mark.slow
def test_a_model_refuses_features_of_another_precision(spark, sample_run, sample_dir, tmp_path):
    from p8lib.classify import train
    from p8lib.pipeline import run

    bf16 = run(
        images=str(sample_dir), output=str(tmp_path / "bf16"), k=3, precision="bf16", spark=spark
    )
    assert bf16.manifest.network["engine"] == "openvino"
    assert bf16.manifest.network["precision"] == "bf16"
    assert bf16.manifest.featurization.precision == "bf16"
    assert sample_run.manifest.network["precision"] == "fp32"
    with pytest.raises(UsageError, match="precision.*224 px bf16 against 224 px fp32"):
        train(features=sample_run.output, test=bf16.output, model=str(tmp_path / "m"), spark=spark)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_int8_calibrates_once_on_the_named_images(sample_dir, fruits_dir, tmp_path) -> None:
    calibration = tmp_path / "calibration images"
    for path in sorted((fruits_dir / "Training-subset").rglob("*.jpg"))[::100][:40]:
        target = calibration / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    args = [sys.executable, "-m", "p8lib.cli", "run", "--images", str(sample_dir), "--k", "3"]
    args += ["--output", str(tmp_path / "out"), "--precision", "int8"]
    args += ["--calibration", str(calibration), "--mode", "overwrite"]
    env = {**os.environ, "P8_CACHE_DIR": str(tmp_path / "cache")}
    said = []
    for _ in range(2):
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        said.append(done.stderr)
    assert "converting MobileNetV2 to OpenVINO (int8" in said[0]
    assert "converting" not in said[1]  # the calibrated network came from the cache
    network = json.loads((tmp_path / "out" / "manifest.json").read_text())["network"]
    assert network["precision"] == "int8" and network["calibration"]["images"] == 40
    assert network["calibration"]["source"] == f"file://{calibration}"
    assert (tmp_path / "cache" / "openvino" / network["key"] / "model.xml").is_file()


@pytest.mark.slow
def test_the_pipeline_gives_the_same_features_with_either_engine(
    spark, sample_run, sample_table, sample_dir, tmp_path
) -> None:
    import pandas as pd

    from p8lib.pipeline import run

    out = tmp_path / "keras"
    keras = run(images=str(sample_dir), output=str(out), k=3, engine="keras", spark=spark)
    assert keras.manifest.network["engine"] == "keras"
    ours = pd.read_parquet(out / "features.parquet").sort_values("path")
    theirs = sample_table.sort_values("path")
    assert list(ours["path"]) == list(theirs["path"])
    difference = np.stack(ours["features"]) - np.stack(theirs["features"])
    assert np.abs(difference).max() <= 1e-3

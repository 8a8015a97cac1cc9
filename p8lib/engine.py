"""The network that turns decoded images into 1280 features: OpenVINO (default) or Keras.

Keras is the reference. OpenVINO runs the same MobileNetV2 several times faster on a CPU: the
Keras model is converted once (in a child process, so TensorFlow never loads into the driver),
MobileNetV2's input scaling moved into the graph (uint8 RGB in), and the result saved as an
OpenVINO IR (``model.xml`` + ``model.bin``) in a cache keyed by the weights' sha256, the image
size, the precision, the int8 calibration images and OpenVINO's version. The workers receive
the IR's bytes and compile it: no TensorFlow there.

Precisions: ``fp32`` (features equal to Keras's), ``bf16`` (OpenVINO's bfloat16 inference
hint, on CPUs that have it) and ``int8`` (NNCF post-training quantization, calibrated on
images the user names or a sample of the input). ``p8 predict``'s photo model reads the 7×7
feature map: the same IR, cut before its final average (:func:`feature_map`).

    python -m p8lib.engine convert WEIGHTS SIZE PRECISION OUT_DIR [CALIBRATION.npy|""]
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p8lib.artifacts import FEATURE_DIM
from p8lib.errors import P8Error, UsageError

ENGINES: tuple[str, ...] = ("openvino", "keras")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
CALIBRATION_IMAGES = 300  # NNCF's default subset size
# Images per forward pass by default. OpenVINO, one thread: 8 → 106 img/s and 231 MB resident,
# 32 → 101 img/s and 438 MB (activations). Keras: 32 (64 used 1.3 GB more, no faster).
BATCH = {"openvino": 8, "keras": 32}
IR_FILES = ("model.xml", "model.bin")
_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the quantized ops are in the IR

# One compiled network per process, key and output (pooled or map): Spark reuses its Python
# workers across tasks.
_LOADED: dict[tuple[str, bool], Any] = {}


@dataclass(frozen=True)
class Network:
    """What a worker needs to build the network: shipped to the executors by broadcast.

    ``files``: Keras: the weights file; OpenVINO: the IR. ``key`` names it (cache and reuse);
    the pooled network and its feature map share it.
    """

    engine: str
    precision: str
    image_size: int
    key: str
    files: dict[str, bytes] = field(repr=False)
    calibration: dict[str, Any] | None = None  # int8: the images it was calibrated on
    pooled: bool = True  # False: the 7×7×1280 map before the average (p8 predict's cells)

    def record(self) -> dict[str, Any]:
        """The manifest's record of the network (no bytes)."""
        return {
            "engine": self.engine,
            "precision": self.precision,
            "key": self.key,
            "calibration": self.calibration,
        }


@dataclass(frozen=True)
class Calibration:
    """int8's calibration images: their record (source, count, sha256 of their paths, sizes
    and times) and how to decode them (uint8, N×size×size×3)."""

    record: dict[str, Any]
    load: Callable[[], np.ndarray]


def cache_root() -> Path:
    """p8's cache: ``$P8_CACHE_DIR`` or ``~/.cache/p8`` (converted networks, class archives)."""
    return Path(os.environ.get("P8_CACHE_DIR") or Path.home() / ".cache" / "p8").expanduser()


def cache_dir() -> Path:
    """Where converted networks are kept: ``$P8_CACHE_DIR/openvino`` or ``~/.cache/p8/openvino``."""
    return cache_root() / "openvino"


def check(engine: str, precision: str) -> None:
    """Refuse an unknown engine or precision, and a precision the engine has not."""
    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if engine == "keras" and precision != "fp32":
        raise UsageError(f"--precision {precision} needs --engine openvino (Keras runs fp32)")


def ir_key(weights_sha256: str, image_size: int, precision: str, calibration: str = "") -> str:
    """The cache key of a converted network.

    Examples
    --------
    >>> ir_key("ab" * 32, 224, "fp32").startswith("abababababab-224-fp32-ov")
    True
    """
    from importlib.metadata import version

    tail = f"-cal{calibration[:12]}" if calibration else ""
    return f"{weights_sha256[:12]}-{image_size}-{precision}-ov{version('openvino')}{tail}"


def prepare(
    *,
    engine: str,
    precision: str,
    weights_path: Path,
    weights_sha256: str,
    image_size: int,
    calibration: Calibration | None = None,
    log: Callable[[str], None] = lambda _: None,
    pooled: bool = True,
) -> Network:
    """The network for the workers; on the driver. OpenVINO: the cached IR, or converted now.

    ``calibration`` (int8 only): its record's ``sha256`` is part of the cache key; its images
    are decoded only when the IR is not cached yet. ``pooled=False``: the network's last
    feature map rather than its average (OpenVINO: the same IR, read up to its average).
    """
    check(engine, precision)
    if engine == "keras":
        files = {f"weights{weights_path.suffix}": weights_path.read_bytes()}
        key = f"keras-{weights_sha256[:12]}"
        return Network(engine, precision, image_size, key, files, pooled=pooled)
    if precision == "int8" and calibration is None:
        raise UsageError("--precision int8 needs calibration images")
    record = calibration.record if precision == "int8" and calibration else None
    key = ir_key(weights_sha256, image_size, precision, record["sha256"] if record else "")
    folder = cache_dir() / key
    if not _complete(folder):
        if precision == "int8" and importlib.util.find_spec("nncf") is None:
            raise UsageError("--precision int8 needs NNCF: pip install 'p8lib[int8]' (nncf==3.4.0)")
        log(f"converting MobileNetV2 to OpenVINO ({precision}, {image_size}×{image_size})")
        images = calibration.load() if record and calibration else None
        convert(weights_path, image_size, precision, folder, images)
    return Network(engine, precision, image_size, key, _read_ir(folder), record, pooled)


def _complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole converted network."""
    return all((folder / name).is_file() for name in IR_FILES)


def _read_ir(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in IR_FILES}


def cached(key: str | None, image_size: int, *, pooled: bool = True) -> Network:
    """The converted network ``key`` from the cache (an int8 one cannot be rebuilt without its
    calibration images); ``pooled=False``: its feature map, as :func:`prepare`."""
    folder = cache_dir() / (key or "(none)")
    if not key or not _complete(folder):
        raise UsageError(
            f"the int8 network this model was trained with ({key}) is not in {cache_dir()}: "
            "run `p8 run --precision int8` with the same calibration images on this machine, "
            "or train the model on fp32 features"
        )
    return Network("openvino", "int8", image_size, key, _read_ir(folder), pooled=pooled)


def convert(
    weights_path: Path,
    image_size: int,
    precision: str,
    folder: Path,
    images: np.ndarray | None,
) -> None:
    """Convert in a child process (TensorFlow loads there, not here) into ``folder``, whole."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".convert-") as tmp:
        args = [str(weights_path), str(image_size), precision, tmp, ""]
        if images is not None:
            np.save(Path(tmp) / "calibration.npy", images)
            args[-1] = str(Path(tmp) / "calibration.npy")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        cmd = [sys.executable, "-m", "p8lib.engine", "convert", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise P8Error(f"converting MobileNetV2 to OpenVINO failed: {last}")
        staged = Path(tmp) / "ir"
        try:
            os.replace(staged, folder)  # whole, or not at all: a concurrent run may win
        except OSError:
            if not _complete(folder):
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(staged, folder)


def _convert_main(weights: str, size: str, precision: str, out: str, calib: str = "") -> None:
    """The child process of :func:`convert`: Keras model → OpenVINO IR in ``out/ir``."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    from p8lib.featurize import build_model

    image_size = int(size)
    model = ov.convert_model(build_model(weights, image_size))
    model.reshape([-1, image_size, image_size, 3])
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8)  # uint8 RGB, as decoded
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean(127.5).scale(127.5)
    model = ppp.build()  # MobileNetV2's preprocess_input (x / 127.5 - 1), in the graph
    if precision == "int8":
        import nncf

        images = np.load(calib)
        batches = [images[i : i + 1] for i in range(len(images))]
        model = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
    target = Path(out) / "ir"
    target.mkdir()
    ov.save_model(model, str(target / "model.xml"), compress_to_fp16=False)
    (target / "p8.json").write_text(json.dumps({"precision": precision, "image_size": image_size}))


def load(network: Network, *, threads: int | None = None) -> Any:
    """This process's network for ``network.key`` (pooled or its map), built on first use."""
    slot = (network.key, network.pooled)
    if slot not in _LOADED:
        if network.engine == "keras":
            _LOADED[slot] = _keras(network, threads)
        else:
            _LOADED[slot] = _openvino(network, threads)
    return _LOADED[slot]


def _keras(network: Network, threads: int | None) -> Any:
    from p8lib.featurize import build_model

    ((name, data),) = network.files.items()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        return build_model(path, network.image_size, threads=threads, pooled=network.pooled)


def _openvino(network: Network, threads: int | None) -> Any:
    import openvino as ov

    core = ov.Core()
    weights = ov.Tensor(np.frombuffer(network.files["model.bin"], dtype=np.uint8))
    model = core.read_model(model=network.files["model.xml"].decode(), weights=weights)
    if not network.pooled:
        model = feature_map(model)
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY" if threads else "THROUGHPUT",
        "INFERENCE_PRECISION_HINT": _HINT[network.precision],
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
        # Spark runs one such process per core: pinned, every process's thread would land on
        # the same first core (measured: 2 processes at 50 img/s each, unpinned 93).
        config["ENABLE_CPU_PINNING"] = False
    return core.compile_model(model, "CPU", config)


def feature_map(model: Any) -> Any:
    """The OpenVINO ``model`` read up to its final global average: the N×h×w×1280 feature map
    it averages (int8 included: the same quantized layers, nothing to calibrate again)."""
    import openvino as ov
    from openvino import opset13

    average = model.get_results()[0].input_value(0).get_node()
    if average.get_type_name() != "ReduceMean":
        raise P8Error(f"the network does not end in an average ({average.get_type_name()})")
    nchw = average.input_value(0)
    order = opset13.constant(np.array([0, 2, 3, 1], dtype=np.int64))
    return ov.Model([opset13.transpose(nchw, order).output(0)], model.get_parameters(), "map")


def embed(net: Any, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Features of a uint8 RGB batch (N×size×size×3), ``batch_size`` images per pass."""
    if len(images) == 0:
        return np.zeros((0, FEATURE_DIM), np.float32)
    if hasattr(net, "predict_on_batch"):  # Keras
        from p8lib.featurize import embed as keras_embed

        return keras_embed(net, images, batch_size=batch_size)
    out = [
        np.asarray(net(images[i : i + batch_size])[0]) for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 5 or args[0] != "convert":
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    _convert_main(*args[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MobileNetV2 (ImageNet, top removed) features and a colour histogram, in one pandas UDF.

Each image is decoded once; the network sees it at ``image_size``, and the same pixels give
:func:`color_histogram`, which the classifier uses next to the network's features.

The network itself is :mod:`p8lib.engine`'s (OpenVINO by default, Keras as the reference).
TensorFlow is imported only where a Keras model is built, never at import time.
"""

from __future__ import annotations

import functools
import io
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # resolved at runtime: pyspark reads the UDF's type hints

from p8lib import engine
from p8lib.artifacts import FEATURE_DIM
from p8lib.augment import variants as augment_variants
from p8lib.engine import Network
from p8lib.errors import P8Error, UsageError, first_line
from p8lib.packaged import write_whole

if TYPE_CHECKING:
    from pyspark import Accumulator
    from pyspark.sql import Column

WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# Where Keras itself downloads the same file from.
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
# Decompression-bomb guard: larger images are refused with an error row (~ a 70-megapixel photo).
MAX_PIXELS = 70_000_000
# Colour histogram: HSV with 16 hue × 8 saturation × 8 value bins, square-rooted fractions.
COLOR_BINS = (16, 8, 8)
COLOR_DIM = COLOR_BINS[0] * COLOR_BINS[1] * COLOR_BINS[2]
COLOR_DESCRIPTOR = "hsv-16x8x8-sqrt"


def keras_home() -> Path:
    """Keras's cache folder: ``$KERAS_HOME`` or ``~/.keras`` (also when it is set empty, as
    `make` exports the variables it passes on when the user sets none)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def resolve_weights(weights: str = "imagenet", *, url: str | None = None) -> Path:
    """The local file that holds the weights, downloading the ImageNet ones into Keras's cache.

    ``weights`` is ``"imagenet"`` or the path of a ``.h5``/``.keras`` file. ``url`` is the folder
    the ImageNet file is downloaded from when it is not cached (default: Keras's own, or
    ``$P8_WEIGHTS_URL``).
    """
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if path.suffix not in (".h5", ".keras"):
            raise UsageError(f"--weights must be 'imagenet' or a .h5/.keras file, got {weights!r}")
        if not path.is_file():
            raise UsageError(f"weights file not found: {path}")
        check_weights(path)
        return path
    cached = keras_home() / "models" / WEIGHTS_FILE
    if cached.is_file():
        return cached
    base = url or os.environ.get("P8_WEIGHTS_URL") or WEIGHTS_URL
    source = base.rstrip("/") + "/" + WEIGHTS_FILE
    try:
        with urllib.request.urlopen(source, timeout=60) as response:
            write_whole(cached, response)
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise P8Error(
            f"MobileNetV2 weights not found: expected {cached} and the download from {source} "
            f"failed ({reason}); copy {WEIGHTS_FILE} into {cached.parent} (or set KERAS_HOME), "
            "or pass --weights PATH"
        ) from None
    return cached


def check_weights(path: Path) -> None:
    """Refuse (exit 2) a file that holds no MobileNetV2 weights, before any worker loads it.

    Opens the HDF5 file (in a ``.keras`` archive, its ``model.weights.h5``); in a ``.h5`` file
    looks for MobileNetV2's first and last convolutions. Other shapes fail in the workers.
    """
    import zipfile

    import h5py

    try:
        if path.suffix == ".keras":  # a zip archive; Keras 3 names its layers its own way
            with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as inner:
                h5py.File(io.BytesIO(inner.read()), "r").close()
            return
        with h5py.File(path, "r") as h5:
            names = set(h5.keys())
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise UsageError(f"--weights {path} is not a Keras weights file ({exc})") from None
    if not {"Conv1", "Conv_1"} <= names:
        raise UsageError(f"--weights {path} holds no MobileNetV2 weights (no Conv1/Conv_1 layers)")


class _TooLarge(ValueError):
    """An image over ``MAX_PIXELS``: its own reason, not "not a readable image"."""


def load_image(content: bytes, size: int) -> np.ndarray:
    """Decode any Pillow-readable image, or a phone's HEIC/HEIF, to a ``size``×``size``×3 uint8
    RGB array.

    EXIF orientation is applied (HEIF's own rotation by pillow-heif, which then says 1);
    transparency is flattened onto white (Fruits-360's background); grayscale, palette, CMYK
    and 16-bit images are converted to 8-bit RGB.
    Raises ``ValueError`` with a short reason for anything that is not a usable image.
    """
    from PIL import Image, ImageOps

    if not content:
        raise ValueError("empty file")
    _read_heif()
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img: Any = Image.open(io.BytesIO(content))
            if img.width * img.height > MAX_PIXELS:
                raise _TooLarge(f"image too large: {img.width}x{img.height} > {MAX_PIXELS} pixels")
            # JPEG: let the decoder downscale by a power of two when the photo is much larger.
            img.draft("RGB", (size, size))
            img = ImageOps.exif_transpose(img)
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(f"image too large: {exc}") from None
        except _TooLarge:
            raise
        except Image.UnidentifiedImageError:
            raise ValueError(
                "not a readable image: not in a format Pillow reads "
                "(jpg, png, webp, bmp, tif, gif, heic)"
            ) from None
        except Exception as exc:  # Pillow and pillow-heif raise many kinds for broken files
            reason = first_line(exc, "broken file")
            raise ValueError(f"not a readable image: {type(exc).__name__}: {reason}") from None
    img = _to_rgb(img)
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


@functools.cache
def _read_heif() -> None:
    """Pillow reads HEIC/HEIF (iPhones' photos) from now on, in this process."""
    from pillow_heif import register_heif_opener

    register_heif_opener()


def _to_rgb(img: Any) -> Any:
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits rather than clip.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * 255.0 / top, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def color_histogram(image: np.ndarray) -> np.ndarray:
    """The image's colour distribution: a unit-length vector of :data:`COLOR_DIM` values.

    Every other pixel of a ``size``×``size``×3 uint8 RGB array (the network's input: the
    histogram barely changes, the cost falls 4-fold) is counted in an HSV grid of
    :data:`COLOR_BINS`; the fractions are square-rooted (Hellinger), so that the vector has
    length 1 and large bins don't drown the small ones.

    Examples
    --------
    >>> red = np.zeros((4, 4, 3), np.uint8); red[..., 0] = 255
    >>> h = color_histogram(red); int(np.argmax(h)), float(h.max()), float((h**2).sum())
    (63, 1.0, 1.0)
    """
    from PIL import Image

    hue, sat, val = COLOR_BINS
    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(image[::2, ::2])).convert("HSV"))
    hsv = hsv.reshape(-1, 3).astype(np.int64)
    cell = (hsv[:, 0] * hue >> 8) * (sat * val) + (hsv[:, 1] * sat >> 8) * val
    cell += hsv[:, 2] * val >> 8
    counts = np.bincount(cell, minlength=COLOR_DIM).astype(np.float64)
    return np.sqrt(counts / max(counts.sum(), 1.0)).astype(np.float32)


def build_model(
    weights_path: str | Path,
    image_size: int = 224,
    threads: int | None = None,
    *,
    pooled: bool = True,
) -> Any:
    """MobileNetV2 without its classifier: the 1280-d global-average-pooled output (with
    ``pooled=False``, the last feature map before the average: size/32 × size/32 × 1280).

    ``threads`` sizes TensorFlow's pools (default: ``$OMP_NUM_THREADS``, which Spark sets to
    ``spark.task.cpus``), so that concurrent tasks don't oversubscribe the cores.
    """
    import tensorflow as tf

    threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 0)
    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        except RuntimeError:
            pass  # TensorFlow already initialised in this process: keep its pools
    import keras

    model = keras.applications.MobileNetV2(
        weights=None,
        include_top=False,
        pooling="avg" if pooled else None,
        input_shape=(image_size, image_size, 3),
    )
    model.load_weights(str(weights_path))
    return model


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 RGB batch → MobileNetV2's input scale [-1, 1]."""
    from keras.applications import mobilenet_v2

    return mobilenet_v2.preprocess_input(images.astype(np.float32))


def embed(model: Any, images: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Features of a uint8 RGB batch, ``batch_size`` images per forward pass."""
    out = [
        np.asarray(model.predict_on_batch(preprocess(images[i : i + batch_size])))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, FEATURE_DIM), np.float32)


def featurize_batch(
    model: Any, contents: pd.Series, *, image_size: int, batch_size: int, augment: int = 0
) -> pd.DataFrame:
    """Features, colour histograms and error messages for one Arrow batch of image bytes.

    With ``augment`` N, also the features and histograms of each image's N photo-like variants
    (:mod:`p8lib.augment`), flat: ``augmented`` holds N × 1280 values, ``augmented_color``
    N × :data:`COLOR_DIM`."""
    images: list[np.ndarray] = []
    good: list[int] = []
    errors: list[str | None] = [None] * len(contents)
    for i, content in enumerate(contents):
        if content is None:
            errors[i] = "cannot read the file (moved or deleted since it was listed?)"
            continue
        try:
            images.append(load_image(content, image_size))
            good.append(i)
        except ValueError as exc:
            errors[i] = str(exc)[:200]
    out = pd.DataFrame({"features": [None] * len(contents), "color": None, "error": errors})
    if augment:
        out["augmented"], out["augmented_color"] = None, None
    if not images:
        return out
    every = images + [v for image in images for v in augment_variants(image, augment)]
    rows = engine.embed(model, np.stack(every), batch_size=batch_size)
    colors = np.stack([color_histogram(image) for image in every])
    out.loc[good, "features"] = pd.Series(list(rows[: len(images)]), index=good)
    out.loc[good, "color"] = pd.Series(list(colors[: len(images)]), index=good)
    if augment:
        n = len(images)
        extra = rows[n:].reshape(n, -1), colors[n:].reshape(n, -1)
        out.loc[good, "augmented"] = pd.Series(list(extra[0]), index=good)
        out.loc[good, "augmented_color"] = pd.Series(list(extra[1]), index=good)
    return out


def _result_schema(augment: int = 0) -> Any:
    """``features array<float>, color array<float>, error string`` (+ the variants' flat
    ``augmented``, ``augmented_color``) — as types: Spark parses a DDL string in the JVM,
    ~0.2 s each the first times."""
    from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

    names = ["features", "color", "error"] + (["augmented", "augmented_color"] if augment else [])
    return StructType(
        [
            StructField(name, StringType() if name == "error" else ArrayType(FloatType()))
            for name in names
        ]
    )


def featurize_column(
    content: Column,
    *,
    network: Network,
    batch_size: int = 32,
    augment: int = 0,
    counter: Accumulator[int] | None = None,
    failed: Accumulator[int] | None = None,
    read: Callable[[Iterator[pd.Series]], Iterator[pd.Series]] | None = None,
) -> Column:
    """A column ``struct<features, color array<float>, error string>`` from image bytes
    (+ ``augmented``, ``augmented_color``: see :func:`featurize_batch`).

    The network (an OpenVINO IR, or Keras weights) is broadcast once; each Python worker
    builds it on its first batch and keeps it for every later task. ``counter`` counts the
    images sent through the network, ``failed`` those that could not be read or decoded.
    With ``read`` (e.g. :func:`p8lib.io.content_reader`), ``content`` holds what ``read``
    turns into bytes (paths) in the same Python worker: one worker per task, not two.
    """
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import pandas_udf

    spark = SparkSession.getActiveSession()
    assert spark is not None, "featurize_column needs an active SparkSession"
    network_bc = spark.sparkContext.broadcast(network)
    image_size = network.image_size
    # One inference thread per task core: Spark sets OMP_NUM_THREADS to the executor's cores,
    # and a worker per core each running that many threads oversubscribes them (measured:
    # 2 workers × 2 threads on 2 cores featurized at half the speed of 2 × 1).
    threads = int(spark.conf.get("spark.task.cpus", "1") or "1")

    @pandas_udf(_result_schema(augment))  # type: ignore[call-overload]
    def featurize_udf(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        model = engine.load(network_bc.value, threads=threads)
        for contents in read(batches) if read else batches:
            # With variants, a batch's images are (N + 1) times as many: decoded by slices.
            step = max(1, len(contents) // (augment + 1))
            out = pd.concat(
                [
                    featurize_batch(
                        model,
                        contents.iloc[i : i + step],
                        image_size=image_size,
                        batch_size=batch_size,
                        augment=augment,
                    )
                    for i in range(0, max(len(contents), 1), step)
                ],
                ignore_index=True,
            )
            errors = int(out["error"].notna().sum())
            if counter is not None:
                counter.add(len(out) - errors)
            if failed is not None:
                failed.add(errors)
            yield out

    return featurize_udf(content)

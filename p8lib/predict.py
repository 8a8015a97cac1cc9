"""Name the fruit in new photos with a model from ``p8 train``, without Spark.

The saved PipelineModel's parameters (scalers' mean/std, PCA components, logistic-regression
coefficients and intercepts, label names) are read from its parquet and JSON files with
pyarrow and applied in numpy to MobileNetV2 features and colour histograms computed in this
process: start-up is TensorFlow's, not a JVM's, and one photo takes milliseconds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p8lib import io
from p8lib.artifacts import FEATURE_DIM, MODEL_INFO, SPARK_MODEL, Col, ModelInfo
from p8lib.errors import P8Error, UsageError
from p8lib.listing import list_local
from p8lib.photo import (
    COLOUR_DIM,
    PHOTO_MODEL,
    PhotoModel,
    cell_colours,
    fruit_of,
    membership,
    softmax,
)
from p8lib.progress import Reporter
from p8lib.reduce import inverse_std

# p8 predict says "unsure" below this top probability: on real shop photos (README, "Real
# photos"), the photo model named the right fruit in 69.5% of its answers above it (32% of the
# photos), and in 70% over twelve draws of its training variants. The same threshold on a
# fruit's classes summed: 70.4% right, of 45% answered (70% of 43% over the twelve draws).
UNSURE_BELOW = 0.6


@dataclass(frozen=True)
class Classifier:
    """Standardize → (project on PCA components) → (append the histogram) → softmax(W x + b)."""

    labels: list[str]
    mean: np.ndarray
    std: np.ndarray
    components: np.ndarray | None  # d × k, or None when the model uses all features
    coefficients: np.ndarray  # classes × inputs
    intercepts: np.ndarray  # classes
    image_size: int = 224
    weights_sha256: str | None = None
    precision: str = "fp32"  # of the features it was trained on
    network_key: str | None = None  # the converted network it was trained with (int8's cache)
    # The colour histogram's scaler, when the regression also takes the histogram.
    color_mean: np.ndarray | None = None
    color_std: np.ndarray | None = None
    # Trained with photo-like variants: the photo model and its studio gate (p8lib.photo).
    photo: PhotoModel | None = None

    @property
    def color(self) -> bool:
        """Whether the model needs each image's colour histogram."""
        return self.color_mean is not None

    def probabilities(self, features: np.ndarray, color: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities (rows sum to 1) for a batch of 1280-d features (+ histograms)."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        x = (x - self.mean) * inverse_std(self.std)
        if self.components is not None:
            x = x @ self.components
        if self.color_mean is not None and self.color_std is not None:
            if color is None:
                raise ValueError("this model needs the colour histograms of the images")
            c = np.atleast_2d(np.asarray(color, dtype=np.float64))
            x = np.hstack([x, (c - self.color_mean) * inverse_std(self.color_std)])
        return softmax(x @ self.coefficients.T + self.intercepts)

    def answer(
        self,
        outputs: np.ndarray,
        color: np.ndarray | None = None,
        cell_colours: np.ndarray | None = None,
    ) -> np.ndarray:
        """What ``p8 predict`` says: the regression's probabilities, mixed with the photo
        model's when there is one. ``outputs``: the network's pooled features (N×1280) or its
        feature maps (N×h×w×1280, which the photo model reads cell by cell, with the colours
        around its cells when it has a colour discriminant: :func:`p8lib.photo.cell_colours`)."""
        outputs = np.atleast_2d(outputs)  # one row, or many; maps stay N×h×w×1280
        features = outputs.mean(axis=(1, 2)) if outputs.ndim == 4 else outputs
        probs = self.probabilities(features, color)
        if self.photo is None:
            return probs
        studio = self.photo.studio(features)[:, None]  # how much each looks like a studio shot
        return studio * probs + (1 - studio) * self.photo.probabilities(outputs, cell_colours)

    def top(
        self,
        features: np.ndarray,
        color: np.ndarray | None = None,
        n: int = 3,
        cell_colours: np.ndarray | None = None,
    ) -> list[list[tuple[str, float]]]:
        """The ``n`` most likely labels with their probabilities, per row (:meth:`answer`)."""
        return self.ranked(self.answer(features, color, cell_colours), n)

    def fruits(
        self, probs: np.ndarray, fruit: Callable[[str], str] = fruit_of
    ) -> list[tuple[str, float]]:
        """Per row of class probabilities, the fruit whose classes add up to the most (all
        apples together, say), with that sum."""
        names, member = membership([fruit(label) for label in self.labels])
        sums = np.atleast_2d(probs) @ member
        return [(names[j], float(row[j])) for row, j in zip(sums, sums.argmax(axis=1), strict=True)]

    def ranked(self, probs: np.ndarray, n: int) -> list[list[tuple[str, float]]]:
        """The ``n`` most likely labels with their probabilities, per row of ``probs``."""
        order = np.argsort(-probs, axis=1, kind="stable")[:, :n]
        return [
            [(self.labels[j], float(row[j])) for j in idx]
            for row, idx in zip(probs, order, strict=True)
        ]


def _vector(value: dict[str, Any]) -> np.ndarray:
    """A Spark ML vector (VectorUDT struct) as a dense numpy array."""
    values = np.asarray(value["values"], dtype=np.float64)
    if value["type"] == 1:
        return values
    out = np.zeros(value["size"])
    out[np.asarray(value["indices"], dtype=int)] = values
    return out


def _matrix(value: dict[str, Any]) -> np.ndarray:
    """A Spark ML matrix (MatrixUDT struct, dense or sparse, maybe transposed) as numpy."""
    rows, cols = value["numRows"], value["numCols"]
    values = np.asarray(value["values"], dtype=np.float64)
    transposed = bool(value["isTransposed"])
    if value["type"] == 1:  # dense: column-major, or row-major when transposed
        return values.reshape(rows, cols) if transposed else values.reshape(cols, rows).T
    out = np.zeros((rows, cols))
    pointers = np.asarray(value["colPtrs"], dtype=int)
    indices = np.asarray(value["rowIndices"], dtype=int)
    # CSC: pointers over columns; transposed = CSR: pointers over rows.
    for outer in range(len(pointers) - 1):
        for pos in range(pointers[outer], pointers[outer + 1]):
            if transposed:
                out[outer, indices[pos]] = values[pos]
            else:
                out[indices[pos], outer] = values[pos]
    return out


def _stage(folder: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A saved stage's metadata and its first data row (None for param-only stages)."""
    import pyarrow.parquet as pq

    metadata = json.loads(next((folder / "metadata").glob("part-*")).read_text().splitlines()[0])
    data = folder / "data"
    if not data.is_dir():
        return metadata, None
    table = pq.read_table(data)
    return metadata, table.to_pylist()[0]


def load_classifier(model: str | Path, *, s3_endpoint: str | None = None) -> Classifier:
    """The classifier saved by ``p8 train`` under ``model`` (a folder, or s3:// URI)."""
    with _local_model(str(model), s3_endpoint=s3_endpoint) as folder:
        return _read_classifier(folder, model=str(model))


def _read_classifier(folder: Path, *, model: str) -> Classifier:
    """The classifier in the local ``folder`` (``model``: its name in messages)."""
    spark_model = folder / SPARK_MODEL
    if not (spark_model / "metadata").is_dir() or not (folder / MODEL_INFO).is_file():
        raise UsageError(
            f"no p8 model at {model} ({SPARK_MODEL}/ and {MODEL_INFO}): "
            "make one with `p8 train --features URI --model URI`"
        )
    info = ModelInfo.from_json((folder / MODEL_INFO).read_text(), where=f"{model}/{MODEL_INFO}")
    pipeline, _ = _stage(spark_model)
    parts: dict[str, Any] = {}
    for uid in pipeline["paramMap"]["stageUids"]:
        stage_dir = next((spark_model / "stages").glob(f"*_{uid}"))
        metadata, data = _stage(stage_dir)
        kind = metadata["class"].rsplit(".", 1)[-1]
        if kind == "StandardScalerModel" and data is not None:
            # The features' scaler reads the features vector, the other one the histogram.
            which = "color_" if metadata["paramMap"]["inputCol"] == Col.COLOR else ""
            parts[f"{which}mean"], parts[f"{which}std"] = (
                _vector(data["mean"]),
                _vector(data["std"]),
            )
        elif kind == "PCAModel" and data is not None:
            parts["components"] = _matrix(data["pc"])
        elif kind == "LogisticRegressionModel" and data is not None:
            parts["coefficients"] = _matrix(data["coefficientMatrix"])
            parts["intercepts"] = _vector(data["interceptVector"])
        elif kind == "IndexToString":
            parts["labels"] = list(metadata["paramMap"]["labels"])
        elif kind == "VectorAssembler":
            pass  # features, then histogram: the order probabilities() appends them in
        else:
            raise P8Error(f"unexpected stage {metadata['class']} in {spark_model}")
    missing = {"mean", "coefficients", "labels"} - set(parts)
    if missing:
        raise P8Error(f"the model at {model} lacks {', '.join(sorted(missing))}")
    photo = _photo_model(folder / PHOTO_MODEL, len(parts["labels"]), where=str(model))
    return Classifier(
        labels=parts["labels"],
        mean=parts["mean"],
        std=parts["std"],
        components=parts.get("components"),
        coefficients=parts["coefficients"],
        intercepts=parts["intercepts"],
        image_size=info.image_size,
        weights_sha256=info.weights_sha256,
        precision=info.precision,
        network_key=info.network.get("key"),
        color_mean=parts.get("color_mean"),
        color_std=parts.get("color_std"),
        photo=photo,
    )


def _photo_model(path: Path, classes: int, *, where: str) -> PhotoModel | None:
    """The model's photo model (p8lib.photo), None when it has none; checked against its labels."""
    if not path.is_file():
        return None
    try:
        photo = PhotoModel.from_json(path.read_bytes())
    except (ValueError, KeyError, TypeError) as exc:
        raise P8Error(
            f"{where}/{PHOTO_MODEL} is unreadable ({exc}): train the model again"
        ) from None
    shapes = (photo.coefficients.shape, photo.gate_coefficients.shape)
    colour = photo.colour_coefficients
    if shapes != ((classes, FEATURE_DIM), (2, FEATURE_DIM)) or (
        colour is not None and colour.shape != (classes, COLOUR_DIM)
    ):
        raise P8Error(f"{where}/{PHOTO_MODEL} does not fit this model's {classes} classes")
    return photo


@contextmanager
def _local_model(model: str, *, s3_endpoint: str | None) -> Iterator[Path]:
    """A local folder holding the model: itself, or a download of an s3:// prefix into a
    temporary folder, removed once the model is read (or the download fails)."""
    uri = io.normalize_uri(model)
    if io.is_s3(uri):
        from p8lib import s3

        location = s3.S3Location.parse(model)
        with tempfile.TemporaryDirectory(prefix="p8-model-") as target:
            s3.download(location, Path(target), endpoint=s3_endpoint)
            yield Path(target)
        return
    if io.scheme(uri) != "file":
        raise UsageError(f"p8 predict reads models from a folder or s3://, not {model}")
    path = io.local_path(uri)
    if not path.is_dir():
        raise UsageError(f"model not found: {model}")
    yield path


@dataclass(frozen=True)
class PhotoPrediction:
    """The most likely classes for one photo, or why it could not be read. ``unsure``: the
    top probability is below the threshold asked for — the names are guesses. ``fruit``: the
    fruit whose classes add up to the most, and that sum; ``fruit_unsure``: it is below the
    threshold too (when only the variety is unsure, the fruit is named)."""

    path: str
    top: list[tuple[str, float]]
    error: str | None = None
    unsure: bool = False
    fruit: tuple[str, float] | None = None
    fruit_unsure: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "top": [{"label": label, "probability": p} for label, p in self.top],
        }
        if self.error is not None:
            out["error"] = self.error
        else:
            out["unsure"] = self.unsure
        if self.fruit is not None:
            name, p = self.fruit
            out["fruit"] = {"name": name, "probability": p, "unsure": self.fruit_unsure}
        return out

    def line(self) -> str:
        if self.error is not None:
            return f"{self.path}: error: {self.error}"
        named = ", ".join(f"{label} {p:.1%}" for label, p in self.top)
        if not self.unsure:
            return f"{self.path}: {named}"
        if self.fruit is not None and not self.fruit_unsure:
            name, p = self.fruit
            return f"{self.path}: {name} {p:.1%} (variety unsure: {named})"
        return f"{self.path}: unsure (perhaps {named})"


def photo_files(arguments: Sequence[str]) -> list[str]:
    """The photos named on the command line, in order: a file as given, a folder as every
    image file under it (by name, as `p8 run` lists them; hidden files and others skipped)."""
    out: list[str] = []
    for argument in arguments:
        if not Path(argument).is_dir():
            out.append(argument)
            continue
        found = images_under(Path(argument))
        if not found:
            raise UsageError(f"no image files under the folder {argument}")
        out += [path for path, _ in found]
    return out


def images_under(folder: Path) -> list[tuple[str, str]]:
    """(path, the name of its folder) of every image file under the local ``folder``, in path
    order, as `p8 run` lists them (hidden files and other kinds skipped)."""
    return [(io.local_path(f.path).as_posix(), f.label) for f in list_local(folder).files]


def predict_photos(
    photos: Sequence[str | Path],
    *,
    model: str | Path | Classifier,
    weights: str = "imagenet",
    top: int = 3,
    batch_size: int = 32,
    s3_endpoint: str | None = None,
    log: Callable[[str], None] | None = None,
    live: bool = False,
    engine: str = "openvino",
    unsure_below: float = 0.0,
    fruit: Callable[[str], str] = fruit_of,
) -> Iterator[PhotoPrediction]:
    """The ``top`` classes of each photo (jpg, png, … of any size), in the order given, one
    by one: each batch's as soon as it is done (a caller can show them as they come, or stop).

    A photo that cannot be read gets an ``error`` and no classes; the others are unaffected.
    The weights must be those the training features were computed with. Photos go through the
    network ``batch_size`` at a time; with more than one batch, progress goes to ``log`` (or is
    redrawn in place with ``live``); ``engine``: ``openvino`` or ``keras`` (fp32 only). A photo
    whose top probability is below ``unsure_below`` is marked ``unsure``, and its fruit
    ``fruit_unsure`` if its classes' sum is below it too; ``fruit`` names a class's fruit.
    The arguments, the model and the weights are checked at the call (a UsageError or P8Error
    then, before any photo is read); the photos are read as the caller iterates.
    """
    if top < 1:
        raise UsageError(f"--top must be positive, got {top}")
    if not 0.0 <= unsure_below <= 1.0:
        raise UsageError(f"--unsure-below must be between 0 and 1, got {unsure_below:g}")
    classifier = (
        model if isinstance(model, Classifier) else load_classifier(model, s3_endpoint=s3_endpoint)
    )
    weights_path, digest = _checked_weights(weights, classifier)
    network = functools.partial(_network, classifier, engine, weights_path, digest, log)
    answer = _Answering(classifier, top=top, unsure_below=unsure_below, fruit=fruit)
    reporting = {"log": log if len(photos) > batch_size else None, "live": live}
    return _batches(list(photos), answer, network, reporting, batch_size=batch_size)


@dataclass(frozen=True)
class _Answering:
    """How a batch of photos' probabilities become their answers."""

    classifier: Classifier
    top: int
    unsure_below: float
    fruit: Callable[[str], str]

    def __call__(self, photos: list[str], probs: np.ndarray) -> list[PhotoPrediction]:
        ranked = self.classifier.ranked(probs, self.top)
        fruits = self.classifier.fruits(probs, self.fruit)
        return [
            PhotoPrediction(
                photo,
                top,
                unsure=top[0][1] < self.unsure_below,
                fruit=fruit,
                fruit_unsure=fruit[1] < self.unsure_below,
            )
            for photo, top, fruit in zip(photos, ranked, fruits, strict=True)
        ]


def _batches(
    photos: list[str | Path],
    answer: _Answering,
    network: Callable[[], Any],
    reporting: dict[str, Any],
    *,
    batch_size: int,
) -> Iterator[PhotoPrediction]:
    """Each photo's answer, a batch at a time; the network is built for the first readable one."""
    reporter = Reporter("predicting", len(photos), "photos", **reporting)
    failed, net = 0, None
    try:
        for start in range(0, len(photos), batch_size):
            batch = list(enumerate(photos[start : start + batch_size], start))
            errors: dict[int, str] = {}
            images, readable = _read_photos(batch, answer.classifier.image_size, errors)
            answers: dict[int, PhotoPrediction] = {}
            if images:
                net = net or network()
                probs = _probabilities(answer.classifier, net, images, batch_size=batch_size)
                said = answer([str(photos[i]) for i in readable], probs)
                answers = dict(zip(readable, said, strict=True))
            failed += len(errors)
            reporter.update(start + len(batch), failed)
            for i, photo in batch:
                yield answers.get(i) or PhotoPrediction(str(photo), [], errors.get(i))
        reporter.finish(len(photos), failed)
    finally:
        reporter.close()


def _checked_weights(weights: str, classifier: Classifier) -> tuple[Path, str]:
    """The weights file and its sha256, refused unless the model was trained with it."""
    from p8lib.featurize import resolve_weights

    weights_path = resolve_weights(weights)
    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    if classifier.weights_sha256 and digest != classifier.weights_sha256:
        raise UsageError(
            f"{weights_path} is not the weights this model was trained with "
            f"(sha256 {classifier.weights_sha256[:12]}…): pass those with --weights"
        )
    return weights_path, digest


def _network(
    classifier: Classifier,
    engine: str,
    weights_path: Path,
    digest: str,
    log: Callable[[str], None] | None,
) -> Any:
    """The network the model's features came from, built for this process (all its cores):
    its feature map when the model has a photo model, else the pooled features."""
    from p8lib import engine as engines

    pooled = classifier.photo is None
    if classifier.precision == "int8":  # calibrated by `p8 run`: only its cached IR will do
        network = engines.cached(classifier.network_key, classifier.image_size, pooled=pooled)
    else:
        network = engines.prepare(
            engine=engine,
            precision=classifier.precision,
            weights_path=weights_path,
            weights_sha256=digest,
            image_size=classifier.image_size,
            log=log or (lambda _: None),
            pooled=pooled,
        )
    return engines.load(network, threads=os.cpu_count())


def _read_photos(
    batch: list[tuple[int, str | Path]], image_size: int, errors: dict[int, str]
) -> tuple[list[np.ndarray], list[int]]:
    """The decoded photos of ``batch`` and their indices; the others' errors go to ``errors``."""
    from p8lib.featurize import load_image

    images: list[np.ndarray] = []
    readable: list[int] = []
    for i, photo in batch:
        try:
            images.append(load_image(Path(photo).read_bytes(), image_size))
            readable.append(i)
        except OSError as exc:
            errors[i] = f"cannot read: {exc.strerror or exc}"
        except ValueError as exc:
            errors[i] = str(exc)[:200]
    return images, readable


def _probabilities(
    classifier: Classifier, net: Any, images: list[np.ndarray], *, batch_size: int
) -> np.ndarray:
    from p8lib.engine import embed
    from p8lib.featurize import color_histogram

    features = embed(net, np.stack(images), batch_size=batch_size)
    colors = np.stack([color_histogram(im) for im in images]) if classifier.color else None
    around = None
    if classifier.photo is not None and classifier.photo.colour and features.ndim == 4:
        around = np.stack([cell_colours(im, features.shape[1]) for im in images])
    return classifier.answer(features, colors, around)

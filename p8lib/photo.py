"""The photo model: what ``p8 train`` adds when its features hold photo-like variants.

Two linear discriminants on the square roots of the 1280 MobileNetV2 features, each row scaled
to length 1 (:func:`root`), fitted in one Spark pass (per-class counts and sums, one Gram
matrix) and solved on the driver:

- **photo**: one class per fruit class, fitted on the images *and* their ``--augment``
  variants. Applied to a photo, it reads each inner cell of the network's 7×7 map (a patch of
  the photo: one fruit of a bin) and averages the cells' probabilities.
- **studio gate**: two classes, the images themselves (a fruit alone on white, Fruits-360's
  studio shots) against their variants. It says how much a photo looks like a studio shot.

``p8 predict`` (:meth:`p8lib.predict.Classifier.answer`) mixes the two answers:
``P(studio) × the regression's + (1 − P(studio)) × the photo model's``. The regression,
trained on the images alone, keeps its Fruits-360 accuracy; photos from elsewhere go to the
model that saw photo-like variants. Measured in the README ("Real photos").

The covariance is shrunk toward its diagonal (``SHRINKAGE``): 1280 features, ~140 classes.

Examples
--------
>>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
>>> part = scatter(iter([(0, x[0]), (1, x[1]), (0, x[2]), (1, x[3])]), classes=2, dim=2)
>>> w, b = discriminant(part, shrinkage=0.1)
>>> softmax(root(x) @ w.T + b).argmax(axis=1).tolist()
[0, 1, 0, 1]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from p8lib.artifacts import FEATURE_DIM

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

PHOTO_MODEL = "photo_model.json"
SHRINKAGE = 0.1
CELL_MARGIN = 1  # the map's border cells are left out (7×7 → the inner 5×5)


def softmax(margins: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    z = margins - margins.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def root(features: np.ndarray, *, unit: bool = True) -> np.ndarray:
    """What both discriminants read: the features' square roots (float64), each row (the last
    axis) scaled to length 1 when ``unit`` — photo models saved before that read the roots."""
    x = np.sqrt(np.maximum(np.asarray(features, dtype=np.float64), 0.0))
    if unit:
        x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


@dataclass
class Scatter:
    """Per-class counts and sums of the features as :func:`root` gives them, and their Gram
    matrix."""

    counts: np.ndarray  # classes
    sums: np.ndarray  # classes × dim
    gram: np.ndarray  # dim × dim

    def __add__(self, other: Scatter) -> Scatter:
        return Scatter(self.counts + other.counts, self.sums + other.sums, self.gram + other.gram)


def scatter(
    rows: Iterator[tuple[int, Any]], *, classes: int, dim: int, chunk: int = 1024
) -> Scatter:
    """The :class:`Scatter` of ``(class index, features)`` rows (features through :func:`root`)."""
    out = Scatter(np.zeros(classes), np.zeros((classes, dim)), np.zeros((dim, dim)))
    while True:
        block = [row for _, row in zip(range(chunk), rows, strict=False)]
        if not block:
            return out
        y = np.array([c for c, _ in block], dtype=int)
        x = root(np.array([f for _, f in block]))
        out.counts += np.bincount(y, minlength=classes)
        np.add.at(out.sums, y, x)
        out.gram += x.T @ x


def discriminant(part: Scatter, *, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Linear discriminant analysis: coefficients (classes × dim) and intercepts (classes).

    Shared within-class covariance (scikit-learn's: the classes' biased covariances weighted by
    their frequencies), shrunk toward its diagonal; priors: the class frequencies.
    """
    n = part.counts.sum()
    means = part.sums / np.maximum(part.counts, 1)[:, None]
    within = (part.gram - (means * part.counts[:, None]).T @ means) / max(n, 1)
    shrunk = (1 - shrinkage) * within + shrinkage * np.diag(np.diag(within))
    coefficients = np.linalg.lstsq(shrunk, means.T, rcond=None)[0].T  # as scikit-learn
    priors = np.maximum(part.counts, 1) / max(n, 1)
    intercepts = -0.5 * np.sum(coefficients * means, axis=1) + np.log(priors)
    return coefficients, intercepts


@dataclass(frozen=True)
class PhotoModel:
    """The photo discriminant and the studio gate, over the features as :func:`root` gives
    them (``unit``: scaled to length 1; False in photo models saved before it was)."""

    coefficients: np.ndarray  # classes × 1280, in the regression's label order
    intercepts: np.ndarray
    gate_coefficients: np.ndarray  # 2 × 1280: studio shot, photo-like variant
    gate_intercepts: np.ndarray
    shrinkage: float = SHRINKAGE
    unit: bool = True

    def studio(self, pooled: np.ndarray) -> np.ndarray:
        """P(a studio shot like Fruits-360's) of each pooled feature row."""
        x = root(np.atleast_2d(pooled), unit=self.unit)
        return softmax(x @ self.gate_coefficients.T + self.gate_intercepts)[:, 0]

    def probabilities(self, maps: np.ndarray) -> np.ndarray:
        """Class probabilities from the feature maps (N×h×w×1280: the inner cells'
        probabilities averaged) or, when only pooled features are at hand (N×1280), from them."""
        if maps.ndim == 2:
            cells = maps[:, None, :]
        else:
            m = CELL_MARGIN if min(maps.shape[1:3]) > 2 * CELL_MARGIN else 0
            inner = maps[:, m : maps.shape[1] - m, m : maps.shape[2] - m]
            cells = inner.reshape(len(maps), -1, maps.shape[-1])
        x = root(cells, unit=self.unit)
        probs = softmax(
            (x @ self.coefficients.T + self.intercepts).reshape(-1, len(self.intercepts))
        )
        return probs.reshape(len(cells), -1, len(self.intercepts)).mean(axis=1)

    def record(self) -> dict[str, Any]:
        """What ``model.json`` says of it."""
        return {
            "file": PHOTO_MODEL,
            "shrinkage": self.shrinkage,
            "unit_length": self.unit,
            "cell_margin": CELL_MARGIN,
        }

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "shrinkage": self.shrinkage,
                "unit_length": self.unit,
                "coefficients": self.coefficients.tolist(),
                "intercepts": self.intercepts.tolist(),
                "gate_coefficients": self.gate_coefficients.tolist(),
                "gate_intercepts": self.gate_intercepts.tolist(),
            }
        ).encode()

    @classmethod
    def from_json(cls, text: bytes | str) -> PhotoModel:
        data = json.loads(text)
        return cls(
            coefficients=np.asarray(data["coefficients"], dtype=np.float64),
            intercepts=np.asarray(data["intercepts"], dtype=np.float64),
            gate_coefficients=np.asarray(data["gate_coefficients"], dtype=np.float64),
            gate_intercepts=np.asarray(data["gate_intercepts"], dtype=np.float64),
            shrinkage=float(data["shrinkage"]),
            unit=bool(data.get("unit_length", False)),
        )


def fit(rows: DataFrame, *, labels: list[str], shrinkage: float = SHRINKAGE) -> PhotoModel:
    """Both discriminants from ``rows`` (``label``, ``features``, ``variant``): one Spark pass."""
    index = {label: i for i, label in enumerate(labels)}
    classes = len(labels)

    def partition(part: Iterable[Any]) -> Iterator[Scatter]:
        tagged = ((index[r[0]] * 2 + (r[2] > 0), r[1]) for r in part if r[0] in index)
        yield scatter(tagged, classes=2 * classes, dim=FEATURE_DIM)

    total = (
        rows.select("label", "features", "variant")
        .rdd.mapPartitions(partition)
        .treeReduce(lambda a, b: a + b)
    )
    by_class = total.sums.reshape(classes, 2, FEATURE_DIM)
    counts = total.counts.reshape(classes, 2)
    photo = Scatter(counts.sum(axis=1), by_class.sum(axis=1), total.gram)
    gate = Scatter(counts.sum(axis=0), by_class.sum(axis=0), total.gram)
    coefficients, intercepts = discriminant(photo, shrinkage=shrinkage)
    gate_coefficients, gate_intercepts = discriminant(gate, shrinkage=shrinkage)
    return PhotoModel(coefficients, intercepts, gate_coefficients, gate_intercepts, shrinkage)

"""The photo model: what ``p8 train`` adds when its features hold photo-like variants.

Linear discriminants on the square roots of the 1280 MobileNetV2 features, each row scaled
to length 1 (:func:`root`), and on the images' colours, fitted in one Spark pass (per-class
counts and sums, a Gram matrix each) and solved on the driver:

- **photo**: one class per fruit class, fitted on the images *and* their ``--augment``
  variants, each class's mean pulled toward its fruit's (:data:`FRUIT_PULL`). Applied to a
  photo, it reads each inner cell of the network's 7×7 map (a patch of the photo: one fruit of
  a bin) and averages the cells' probabilities.
- **studio gate**: two classes, the images themselves (a fruit alone on white, Fruits-360's
  studio shots) against their variants. It says how much a photo looks like a studio shot.
- **colour**, when the rows have ``p8 run``'s colour histograms: a third discriminant, on the
  hues of each image's and variant's non-white pixels (:func:`colour_bins`). Applied to the
  square around each cell of a photo (:func:`cell_colours`), its margins are added to the
  photo discriminant's, weighed by ``COLOUR_WEIGHT``: a product of the two experts.

``p8 predict`` (:meth:`p8lib.predict.Classifier.answer`) mixes the two answers:
``P(studio) × the regression's + (1 − P(studio)) × the photo model's``. The regression,
trained on the images alone, keeps its Fruits-360 accuracy; photos from elsewhere go to the
model that saw photo-like variants. Measured in the README ("Real photos").

The photo discriminant's covariance is shrunk toward a multiple of the identity (its mean
variance, ``PHOTO_SHRINKAGE``: scikit-learn's ``shrinkage``), so that the directions in which
Fruits-360 and its variants barely vary weigh less: photos vary there. The gate's and the
colour's are shrunk toward their diagonal (``SHRINKAGE``).

Examples
--------
>>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
>>> part = scatter(np.array([0, 1, 0, 1]), root(x), classes=2)
>>> w, b = discriminant(part, shrinkage=0.1)
>>> softmax(root(x) @ w.T + b).argmax(axis=1).tolist()
[0, 1, 0, 1]
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from p8lib.artifacts import FEATURE_DIM

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

PHOTO_MODEL = "photo_model.json"
SHRINKAGE = 0.1  # the gate and colour: toward the covariance's diagonal
# The photo discriminant: toward its mean variance times the identity (README, "Real photos": on
# twelve draws of the variants, 46.4% → 48.9% of the outside photos' fruit, beside the colour
# weight below; toward the diagonal at 0.1 until then).
PHOTO_SHRINKAGE = 0.2
CELL_MARGIN = 1  # the map's border cells are left out (7×7 → the inner 5×5)
# The colour discriminant's margins count as much as the features' (a plain product of the two
# experts; 0.5 until the photo discriminant was shrunk toward the identity).
COLOUR_WEIGHT = 1.0
COLOUR_DIM = 35
Toward = Literal["diagonal", "identity"]
# Each class's mean in the photo discriminant is pulled this far toward the mean of its fruit's
# classes (:func:`fruit_of`: the apples', the pears'…), so that it separates fruits more than
# varieties, which Fruits-360 tells apart by one fruit each (README, "Real photos": on twelve
# draws of the variants, 48.9% → 52.7% of the outside photos' fruit, 33.8% → 37.3% the variety).
FRUIT_PULL = 0.7

# Fruits-360 classes whose first word is not their fruit's plain name.
_FRUIT_WORDS = {
    "cactus": "prickly pear",
    "cantaloupe": "melon",
    "carambula": "carambola",
    "clementine": "mandarin",
    "cocos": "coconut",
    "dates": "date",
    "granadilla": "passion fruit",
    "kaki": "persimmon",
    "kumquats": "kumquat",
    "limes": "lime",
    "mandarine": "mandarin",
    "mangostan": "mangosteen",
    "maracuja": "passion fruit",
    "passion": "passion fruit",
    "pitahaya": "dragon fruit",
    "tangelo": "mandarin",
}
_FRUIT_PAIRS = {"nut forest": "hazelnut", "nut pecan": "pecan", "potato sweet": "sweet potato"}


def fruit_of(label: str) -> str:
    """A class's fruit, in plain lower-case English: "Apple Braeburn 1" and "Apple 6" are
    apples, "Clementine 1" a mandarin, "Nut Pecan 1" a pecan; another name, its first word."""
    words = re.sub(r"\s+\d+$", "", label.strip()).lower().split()
    if not words:
        return label.lower()
    return _FRUIT_PAIRS.get(" ".join(words[:2])) or _FRUIT_WORDS.get(words[0], words[0])


def membership(groups: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct names in ``groups`` (one per class), sorted, and which class is in which:
    a classes × names matrix of 0 and 1.

    >>> membership(["apple", "pear", "apple"])[1].tolist()
    [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    """
    names = sorted(set(groups))
    member = np.zeros((len(groups), len(names)))
    member[np.arange(len(groups)), [names.index(name) for name in groups]] = 1
    return names, member


def softmax(margins: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    z = margins - margins.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def root(features: np.ndarray, *, unit: bool = True) -> np.ndarray:
    """What the feature discriminants read: the features' square roots (float64), each row (the last
    axis) scaled to length 1 when ``unit`` — photo models saved before that read the roots."""
    x = np.sqrt(np.maximum(np.asarray(features, dtype=np.float64), 0.0))
    if unit:
        x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


def colour_bins(histograms: np.ndarray) -> np.ndarray:
    """``p8 run``'s colour histograms (hsv-16x8x8-sqrt, last axis) reduced to what the colour
    discriminant reads: near-white pixels (Fruits-360's background, a price tag) left out; the
    coloured ones by hue (16) and saturation (below or above 160/255), the greys by value (3);
    square roots of the fractions (:data:`COLOUR_DIM` values of length 1).

    >>> h = np.zeros(1024); h[3 * 64 + 7 * 8 + 7] = 0.6; h[7] = 0.8  # a saturated hue, white
    >>> b = colour_bins(h); int(b.argmax()), round(float(b.max()), 6)
    (7, 1.0)
    """
    h = np.asarray(histograms, dtype=np.float64)
    h = (h.reshape(*h.shape[:-1], 16, 8, 8) ** 2).copy()  # fractions, hue × sat × value
    h[..., 0, 7] = 0.0  # lowest saturation, highest value: white
    chroma = h[..., 2:, 2:]  # saturation and value ≥ 64
    pale, vivid = chroma[..., :3, :].sum(axis=(-1, -2)), chroma[..., 3:, :].sum(axis=(-1, -2))
    grey = h.sum(axis=-3)
    grey[..., 2:, 2:] = 0.0
    value = grey.sum(axis=-2)
    bins = np.concatenate(
        [
            np.stack([pale, vivid], axis=-1).reshape(*h.shape[:-3], 32),
            np.stack([value[..., :2].sum(-1), value[..., 2:5].sum(-1), value[..., 5:].sum(-1)], -1),
        ],
        axis=-1,
    )
    return np.sqrt(bins / np.maximum(bins.sum(axis=-1, keepdims=True), 1e-12))


def inner_margin(grid: int) -> int:
    """How many border cells of a ``grid``-wide map the photo model leaves out."""
    return CELL_MARGIN if grid > 2 * CELL_MARGIN else 0


def cell_colours(image: np.ndarray, grid: int) -> np.ndarray:
    """The colour histogram (``p8 run``'s) of the square around each inner cell of a
    ``grid``×``grid`` feature map over ``image`` (the cell and half of each neighbour), in the
    order :meth:`PhotoModel.probabilities` reads the cells: cells × 1024."""
    from p8lib.featurize import color_histogram

    size, m = image.shape[0], inner_margin(grid)
    step = size / grid
    out = []
    for i in range(m, grid - m):
        for j in range(m, grid - m):
            top, left = int(max(0, (i - 1) * step)), int(max(0, (j - 1) * step))
            bottom, right = int(min(size, (i + 2) * step)), int(min(size, (j + 2) * step))
            out.append(color_histogram(np.ascontiguousarray(image[top:bottom, left:right])))
    return np.stack(out)


@dataclass
class Scatter:
    """Per-class counts and sums of transformed rows (the features by :func:`root`, the colour
    histograms by :func:`colour_bins`), and their Gram matrix."""

    counts: np.ndarray  # classes
    sums: np.ndarray  # classes × dim
    gram: np.ndarray  # dim × dim

    def __add__(self, other: Scatter) -> Scatter:
        return Scatter(self.counts + other.counts, self.sums + other.sums, self.gram + other.gram)

    @classmethod
    def zeros(cls, classes: int, dim: int) -> Scatter:
        return cls(np.zeros(classes), np.zeros((classes, dim)), np.zeros((dim, dim)))


def scatter(y: np.ndarray, x: np.ndarray, *, classes: int) -> Scatter:
    """The :class:`Scatter` of the rows ``x`` (transformed already) of class indices ``y``."""
    out = Scatter.zeros(classes, x.shape[1])
    out.counts += np.bincount(y, minlength=classes)
    np.add.at(out.sums, y, x)
    out.gram += x.T @ x
    return out


def discriminant(
    part: Scatter,
    *,
    shrinkage: float,
    toward: Toward = "diagonal",
    groups: Sequence[str] | None = None,
    pull: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Linear discriminant analysis: coefficients (classes × dim) and intercepts (classes).

    Shared within-class covariance (scikit-learn's: the classes' biased covariances weighted by
    their frequencies), shrunk toward its diagonal or toward its mean variance times the
    identity (``"identity"``: scikit-learn's ``shrinkage``); priors: the class frequencies.
    ``groups`` (one name per class) and ``pull``: each class's mean, after the covariance,
    is moved that far toward the mean of its group's class means (1: a group's classes alike).
    """
    n = part.counts.sum()
    means = part.sums / np.maximum(part.counts, 1)[:, None]
    within = (part.gram - (means * part.counts[:, None]).T @ means) / max(n, 1)
    if groups is not None and pull:
        if len(groups) != len(means):
            raise ValueError(f"{len(groups)} groups for {len(means)} classes")
        _, member = membership(groups)
        centres = (member.T @ means) / member.sum(axis=0)[:, None]
        means = (1 - pull) * means + pull * (member @ centres)
    if toward == "diagonal":
        target = np.diag(np.diag(within))
    elif toward == "identity":
        target = np.eye(len(within)) * np.trace(within) / len(within)
    else:
        raise ValueError(f"shrink toward 'diagonal' or 'identity', not {toward!r}")
    shrunk = (1 - shrinkage) * within + shrinkage * target
    coefficients = np.linalg.lstsq(shrunk, means.T, rcond=None)[0].T  # as scikit-learn
    priors = np.maximum(part.counts, 1) / max(n, 1)
    intercepts = -0.5 * np.sum(coefficients * means, axis=1) + np.log(priors)
    return coefficients, intercepts


@dataclass(frozen=True)
class PhotoModel:
    """The photo discriminant and the studio gate, over the features as :func:`root` gives
    them (``unit``: scaled to length 1; False in photo models saved before it was), and the
    colour discriminant over :func:`colour_bins` (None in models saved before it, or trained
    without colour histograms). ``shrinkage``, ``toward`` and ``fruit_pull``: the photo
    discriminant's ("diagonal" and 0 in models saved before)."""

    coefficients: np.ndarray  # classes × 1280, in the regression's label order
    intercepts: np.ndarray
    gate_coefficients: np.ndarray  # 2 × 1280: studio shot, photo-like variant
    gate_intercepts: np.ndarray
    shrinkage: float = PHOTO_SHRINKAGE
    unit: bool = True
    colour_coefficients: np.ndarray | None = None  # classes × COLOUR_DIM
    colour_intercepts: np.ndarray | None = None
    colour_weight: float = COLOUR_WEIGHT
    toward: Toward = "identity"
    fruit_pull: float = FRUIT_PULL

    @property
    def colour(self) -> bool:
        """Whether it reads the colours around each cell (:func:`cell_colours`)."""
        return self.colour_coefficients is not None

    def studio(self, pooled: np.ndarray) -> np.ndarray:
        """P(a studio shot like Fruits-360's) of each pooled feature row."""
        x = root(np.atleast_2d(pooled), unit=self.unit)
        return softmax(x @ self.gate_coefficients.T + self.gate_intercepts)[:, 0]

    def probabilities(self, maps: np.ndarray, colours: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities from the feature maps (N×h×w×1280: the inner cells'
        probabilities averaged) or, when only pooled features are at hand (N×1280), from them.
        ``colours``: the histograms around the inner cells (N × cells × 1024,
        :func:`cell_colours`), which a model with a colour discriminant needs with maps."""
        if maps.ndim == 2:
            cells = maps[:, None, :]
        else:
            mh, mw = inner_margin(maps.shape[1]), inner_margin(maps.shape[2])
            inner = maps[:, mh : maps.shape[1] - mh, mw : maps.shape[2] - mw]
            cells = inner.reshape(len(maps), -1, maps.shape[-1])
        margins = root(cells, unit=self.unit) @ self.coefficients.T + self.intercepts
        if self.colour_coefficients is not None and self.colour_intercepts is not None:
            if maps.ndim == 4 and colours is None:
                raise ValueError("this photo model needs the colours around each cell")
            if colours is not None:
                if colours.shape[:2] != cells.shape[:2]:
                    raise ValueError(f"colours of {colours.shape[:2]} cells for {cells.shape[:2]}")
                colour = colour_bins(colours) @ self.colour_coefficients.T + self.colour_intercepts
                margins = margins + self.colour_weight * colour
        probs = softmax(margins.reshape(-1, len(self.intercepts)))
        return probs.reshape(len(cells), -1, len(self.intercepts)).mean(axis=1)

    def record(self) -> dict[str, Any]:
        """What ``model.json`` says of it."""
        return {
            "file": PHOTO_MODEL,
            "shrinkage": self.shrinkage,
            "shrink_toward": self.toward,
            "fruit_pull": self.fruit_pull,
            "unit_length": self.unit,
            "cell_margin": CELL_MARGIN,
            "colour_weight": self.colour_weight if self.colour else None,
        }

    def to_json(self) -> bytes:
        colour = (
            {
                "colour_coefficients": self.colour_coefficients.tolist(),
                "colour_intercepts": self.colour_intercepts.tolist(),
                "colour_weight": self.colour_weight,
            }
            if self.colour_coefficients is not None and self.colour_intercepts is not None
            else {}
        )
        return json.dumps(
            {
                "shrinkage": self.shrinkage,
                "shrink_toward": self.toward,
                "fruit_pull": self.fruit_pull,
                "unit_length": self.unit,
                "coefficients": self.coefficients.tolist(),
                "intercepts": self.intercepts.tolist(),
                "gate_coefficients": self.gate_coefficients.tolist(),
                "gate_intercepts": self.gate_intercepts.tolist(),
                **colour,
            }
        ).encode()

    @classmethod
    def from_json(cls, text: bytes | str) -> PhotoModel:
        data = json.loads(text)
        colour = "colour_coefficients" in data
        return cls(
            coefficients=np.asarray(data["coefficients"], dtype=np.float64),
            intercepts=np.asarray(data["intercepts"], dtype=np.float64),
            gate_coefficients=np.asarray(data["gate_coefficients"], dtype=np.float64),
            gate_intercepts=np.asarray(data["gate_intercepts"], dtype=np.float64),
            shrinkage=float(data["shrinkage"]),
            unit=bool(data.get("unit_length", False)),
            colour_coefficients=(
                np.asarray(data["colour_coefficients"], dtype=np.float64) if colour else None
            ),
            colour_intercepts=(
                np.asarray(data["colour_intercepts"], dtype=np.float64) if colour else None
            ),
            colour_weight=float(data.get("colour_weight", 0.5)),  # 0.5 when it was not saved
            toward="identity" if data.get("shrink_toward") == "identity" else "diagonal",
            fruit_pull=float(data.get("fruit_pull", 0.0)),
        )


def fit(rows: DataFrame, *, labels: list[str], shrinkage: float = PHOTO_SHRINKAGE) -> PhotoModel:
    """The discriminants from ``rows`` (``label``, ``features``, ``variant``[, ``color``]):
    one Spark pass; the colour discriminant when the rows have colour histograms.
    ``shrinkage``: the photo discriminant's, toward the identity (the others: ``SHRINKAGE``);
    its class means pulled :data:`FRUIT_PULL` toward their fruit's (:func:`fruit_of`)."""
    index = {label: i for i, label in enumerate(labels)}
    classes = len(labels)
    colour = "color" in rows.columns

    def partition(part: Iterable[Any]) -> Iterator[tuple[Scatter, Scatter | None]]:
        features = Scatter.zeros(2 * classes, FEATURE_DIM)
        hues = Scatter.zeros(classes, COLOUR_DIM) if colour else None
        known = (r for r in part if r[0] in index)
        while block := list(itertools.islice(known, 1024)):  # bounded memory per partition
            y = np.array([index[r[0]] for r in block], dtype=int)
            variant = np.array([r[2] > 0 for r in block], dtype=int)  # images 0, variants 1
            x = root(np.array([r[1] for r in block]))
            features += scatter(y * 2 + variant, x, classes=2 * classes)
            if hues is not None:
                hues += scatter(y, colour_bins(np.array([r[3] for r in block])), classes=classes)
        yield features, hues

    def add(
        a: tuple[Scatter, Scatter | None], b: tuple[Scatter, Scatter | None]
    ) -> tuple[Scatter, Scatter | None]:
        return a[0] + b[0], (a[1] + b[1] if a[1] is not None and b[1] is not None else None)

    columns = ["label", "features", "variant", *(["color"] if colour else [])]
    total, hues = rows.select(*columns).rdd.mapPartitions(partition).treeReduce(add)
    by_class = total.sums.reshape(classes, 2, FEATURE_DIM)
    counts = total.counts.reshape(classes, 2)
    photo = Scatter(counts.sum(axis=1), by_class.sum(axis=1), total.gram)
    gate = Scatter(counts.sum(axis=0), by_class.sum(axis=0), total.gram)
    toward: Toward = "identity"
    coefficients, intercepts = discriminant(
        photo,
        shrinkage=shrinkage,
        toward=toward,
        groups=[fruit_of(label) for label in labels],
        pull=FRUIT_PULL,
    )
    gate_coefficients, gate_intercepts = discriminant(gate, shrinkage=SHRINKAGE)
    colour_fit = discriminant(hues, shrinkage=SHRINKAGE) if hues is not None else (None, None)
    return PhotoModel(  # what it records is what was fitted, not the fields' defaults
        coefficients,
        intercepts,
        gate_coefficients,
        gate_intercepts,
        shrinkage,
        colour_coefficients=colour_fit[0],
        colour_intercepts=colour_fit[1],
        toward=toward,
        fruit_pull=FRUIT_PULL,
    )

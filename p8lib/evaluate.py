"""How a model does on labelled photos from elsewhere: ``p8 evaluate``, without Spark.

Each photo's top-3 classes (:func:`p8lib.predict.predict_photos`) are scored at two levels:
**fine**, the top class is one of the photo's right Fruits-360 classes, and **coarse**, the top
class is the right fruit (any apple class for an apple). Labels are the photos' folder names,
or, with ``labels.json``, ``{folder: {"fine": [classes], "coarse": "fruit"}}``; a class's fruit
comes from ``coarse_map.json`` (``{class: fruit}``), else from its first word. The scores come
per fruit too, with the curve of how many photos are answered, and how well, when ``p8 predict``
says "unsure" below each probability (of the top class, and of the top fruit: its classes'
sum), and a heatmap of the fruits mistaken for one another.

Examples
--------
>>> fruit_of("Apple Braeburn 1"), fruit_of("Cabbage white 1"), fruit_of("Kiwi")
('apple', 'cabbage', 'kiwi')
>>> fruit_of("Clementine 1"), fruit_of("Potato Sweet 1"), fruit_of("Passion Fruit 1")
('mandarin', 'sweet potato', 'passion fruit')
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p8lib import io, plots
from p8lib.errors import UsageError
from p8lib.predict import (
    PhotoPrediction,
    fruit_of,
    images_under,
    load_classifier,
    predict_photos,
)

EVALUATION_FILE = "evaluation.json"
CONFUSION_FILE = "confusion.png"
# The top probabilities at which the unsure curve is drawn.
THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Truth:
    """What counts as right for a photo: its Fruits-360 classes, and its fruit."""

    fine: frozenset[str]
    coarse: str


@dataclass(frozen=True)
class Scored:
    """One photo: its folder, truth, top classes and whether each level is right."""

    path: str
    folder: str
    truth: Truth
    top: list[tuple[str, float]]
    fruits: list[str]  # the fruit of each top class
    fruit: tuple[str, float]  # the fruit whose classes add up to the most, and that sum

    def fine(self, n: int) -> bool:
        return any(label in self.truth.fine for label, _ in self.top[:n])

    def coarse(self, n: int) -> bool:
        return self.truth.coarse in self.fruits[:n]

    @property
    def probability(self) -> float:
        return self.top[0][1]


def read_labels(
    labels: str | None, coarse_map: str | None
) -> tuple[Callable[[str], Truth], Callable[[str], str]]:
    """The truth of a folder and the fruit of a class, from the files given (or folder names)."""
    fruits: dict[str, Any] = _json(coarse_map, "--coarse-map") if coarse_map else {}
    if not all(isinstance(name, str) for name in fruits.values()):
        raise UsageError(f"--coarse-map {coarse_map} must map each class to a fruit's name")

    def fruit(label: str) -> str:
        return _plain(fruits.get(label) or fruit_of(label))

    table: dict[str, Any] = _json(labels, "--labels") if labels else {}

    def truth(folder: str) -> Truth:
        if not labels:
            return Truth(frozenset({folder}), fruit(folder))
        entry = table.get(folder)
        if not isinstance(entry, dict) or not isinstance(entry.get("coarse"), str):
            raise UsageError(
                f"{labels} has no entry {{'fine': [...], 'coarse': ...}} for {folder!r}"
            )
        fine = entry.get("fine") or []
        return Truth(frozenset([fine] if isinstance(fine, str) else fine), _plain(entry["coarse"]))

    return truth, fruit


def _plain(name: str) -> str:
    """A fruit's name as compared: lower case, single spaces ("Passion  Fruit " is ours)."""
    return " ".join(name.split()).lower()


def _json(path: str, flag: str) -> Any:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{flag} {path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{flag} {path} must hold a JSON object")
    return data


def photos_of(images: str) -> list[tuple[str, str]]:
    """(path, folder name) of every image under the local folder ``images``."""
    uri = io.normalize_uri(images)
    if io.scheme(uri) != "file":
        raise UsageError(f"p8 evaluate reads photos from a local folder, not {images}")
    root = io.local_path(uri)
    if not root.is_dir():
        raise UsageError(f"--images {images} is not a folder")
    found = images_under(root)
    if not found:
        raise UsageError(f"no image files under {images}")
    return found


@dataclass
class Report:
    """The scored photos of one ``p8 evaluate``, and the tables made from them."""

    model: str
    images: str
    photos: list[Scored]
    unreadable: list[str]
    # What the labels name that the model cannot answer: its photos are never right there.
    unknown_classes: list[str] = field(default_factory=list)
    unknown_fruits: list[str] = field(default_factory=list)

    def _share(self, right: Callable[[Scored], bool], of: list[Scored] | None = None) -> float:
        rows = self.photos if of is None else of
        return sum(map(right, rows)) / len(rows) if rows else 0.0

    def totals(self) -> dict[str, float]:
        """Top-1 and top-3 at both levels, over every readable photo."""
        return {
            "photos": len(self.photos),
            "fine_top1": self._share(lambda s: s.fine(1)),
            "fine_top3": self._share(lambda s: s.fine(3)),
            "coarse_top1": self._share(lambda s: s.coarse(1)),
            "coarse_top3": self._share(lambda s: s.coarse(3)),
        }

    def per_folder(self) -> list[dict[str, Any]]:
        """Per folder (a product): photos, top-1 at both levels, the fruit most often named."""
        out = []
        for folder in sorted({s.folder for s in self.photos}):
            rows = [s for s in self.photos if s.folder == folder]
            named = Counter(s.fruits[0] for s in rows).most_common(1)[0]
            out.append(
                {
                    "folder": folder,
                    "fruit": rows[0].truth.coarse,
                    "photos": len(rows),
                    "fine_top1": self._share(lambda s: s.fine(1), rows),
                    "coarse_top1": self._share(lambda s: s.coarse(1), rows),
                    "most_named": f"{named[0]} ({named[1]})",
                }
            )
        return out

    def unsure_curve(self) -> list[dict[str, float]]:
        """For each threshold: the share of photos answered (top probability at or above it)
        and the share of those answers right, coarse and fine; and the same for the fruit
        alone (the sum of its classes at or above it, and it is the photo's fruit)."""
        curve = []
        for t in THRESHOLDS:
            answered = [s for s in self.photos if s.probability >= t]
            fruit = [s for s in self.photos if s.fruit[1] >= t]
            curve.append(
                {
                    "threshold": t,
                    "answered": len(answered) / max(len(self.photos), 1),
                    "coarse_right": self._share(lambda s: s.coarse(1), answered),
                    "fine_right": self._share(lambda s: s.fine(1), answered),
                    "fruit_answered": len(fruit) / max(len(self.photos), 1),
                    "fruit_right": self._share(lambda s: s.fruit[0] == s.truth.coarse, fruit),
                }
            )
        return curve

    def confusion(self) -> tuple[np.ndarray, list[str]]:
        """Fruit × fruit counts: rows the photo's fruit, columns the fruit named first."""
        names = sorted({s.truth.coarse for s in self.photos} | {s.fruits[0] for s in self.photos})
        index = {name: i for i, name in enumerate(names)}
        matrix = np.zeros((len(names), len(names)), dtype=np.int64)
        for s in self.photos:
            matrix[index[s.truth.coarse], index[s.fruits[0]]] += 1
        return matrix, names

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "images": self.images,
            **self.totals(),
            "unreadable": self.unreadable,
            "unknown_classes": self.unknown_classes,
            "unknown_fruits": self.unknown_fruits,
            "per_folder": self.per_folder(),
            "unsure_curve": self.unsure_curve(),
            "photos_scored": [
                {
                    "path": s.path,
                    "folder": s.folder,
                    "top": [{"label": label, "probability": p} for label, p in s.top],
                    "fruit": {"name": s.fruit[0], "probability": s.fruit[1]},
                    "fine_top1": s.fine(1),
                    "coarse_top1": s.coarse(1),
                }
                for s in self.photos
            ],
        }

    def lines(self) -> list[str]:
        t = self.totals()
        out = [
            f"{t['photos']} photos: fine top-1 {t['fine_top1']:.1%}, top-3 {t['fine_top3']:.1%}"
            f" · coarse (the fruit) top-1 {t['coarse_top1']:.1%}, top-3 {t['coarse_top3']:.1%}"
        ]
        if self.unreadable:
            n, more = len(self.unreadable), "…" if len(self.unreadable) > 1 else ""
            out.append(
                f"{n} photo{'s' if n != 1 else ''} could not be read: {self.unreadable[0]}{more}"
            )
        for names, what in ((self.unknown_classes, "classes"), (self.unknown_fruits, "fruits")):
            if names:
                out.append(
                    f"not {what} of this model, so never right: {', '.join(names)} "
                    "(see --labels, --coarse-map)"
                )
        out.append("per folder: photos, fine top-1, coarse top-1, the fruit most often named")
        out += [
            f"  {r['folder']}: {r['photos']}, {r['fine_top1']:.0%}, {r['coarse_top1']:.0%}, "
            f"{r['most_named']}"
            for r in self.per_folder()
        ]
        out.append(
            "unsure below p: photos answered, and right among them (coarse, fine); "
            "the fruit alone: answered, right"
        )
        out += [
            f"  p {c['threshold']:.1f}: {c['answered']:.0%} answered, "
            f"{c['coarse_right']:.1%} coarse, {c['fine_right']:.1%} fine; "
            f"{c['fruit_answered']:.0%}, {c['fruit_right']:.1%}"
            for c in self.unsure_curve()
        ]
        return out


def evaluate(
    *,
    model: str,
    images: str,
    labels: str | None = None,
    coarse_map: str | None = None,
    output: str | None = None,
    weights: str = "imagenet",
    engine: str = "openvino",
    s3_endpoint: str | None = None,
    log: Callable[[str], None] | None = None,
    live: bool = False,
) -> Report:
    """Score ``model`` on the photos under ``images``; with ``output``, write
    ``evaluation.json`` and the fruits' confusion heatmap there (a new or empty folder)."""
    target = _output_folder(output)
    if labels and coarse_map is None and (Path(labels).parent / "coarse_map.json").is_file():
        coarse_map = str(Path(labels).parent / "coarse_map.json")
    truth_of, fruit = read_labels(labels, coarse_map)
    found = photos_of(images)
    truths = {folder: truth_of(folder) for folder in sorted({f for _, f in found})}
    classifier = load_classifier(model, s3_endpoint=s3_endpoint)
    predictions = predict_photos(
        [p for p, _ in found],
        model=classifier,
        weights=weights,
        engine=engine,
        log=log,
        live=live,
        fruit=fruit,
    )
    report = Report(model, images, [], [])
    report.unknown_classes = sorted(
        {c for t in truths.values() for c in t.fine} - set(classifier.labels)
    )
    fruits = {fruit(label) for label in classifier.labels}
    report.unknown_fruits = sorted({t.coarse for t in truths.values()} - fruits)
    for (path, folder), p in zip(found, predictions, strict=True):
        _score(report, p, truths[folder], folder, fruit, path)
    if target is not None:
        _write(report, target)
    return report


def _score(
    report: Report,
    prediction: PhotoPrediction,
    truth: Truth,
    folder: str,
    fruit: Callable[[str], str],
    path: str,
) -> None:
    if prediction.error is not None:
        report.unreadable.append(f"{path}: {prediction.error}")
        return
    fruits = [fruit(label) for label, _ in prediction.top]
    assert prediction.fruit is not None  # every readable photo has one
    report.photos.append(Scored(path, folder, truth, prediction.top, fruits, prediction.fruit))


def _output_folder(output: str | None) -> Path | None:
    if output is None:
        return None
    folder = Path(output).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"--output {output} exists and is not an empty folder: give a new one")
    return folder


def _write(report: Report, folder: Path) -> None:
    matrix, names = report.confusion()
    figure = plots.confusion_figure(matrix, names, cells=plots.confusion_cells(matrix, 20))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFUSION_FILE).write_bytes(plots.to_png(figure))
    (folder / EVALUATION_FILE).write_text(json.dumps(report.as_dict(), indent=2))

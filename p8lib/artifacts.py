"""What p8 writes and reads back: file names, column names, the run manifest and model info.

Every reader goes through here. Each JSON record carries ``format_version``; reading one of an
unknown (newer) or older version is refused in one line that says what to do.

Examples
--------
>>> from p8lib.artifacts import RunManifest
>>> RunManifest.from_dict({"format_version": 99}, where="out/manifest.json")
Traceback (most recent call last):
...
p8lib.errors.UsageError: out/manifest.json was written by a newer p8lib (format 99; this one \
reads format 1): upgrade p8lib
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from p8lib.errors import UsageError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

FORMAT_VERSION = 1
FEATURE_DIM = 1280  # MobileNetV2's pooled features

# A `p8 run` output folder.
PARQUET = "features.parquet"
PLOT = "explained_variance.png"
MANIFEST = "manifest.json"
OUTPUT_COLUMNS = [
    "path",
    "label",
    "features",
    "pca_features",
    "color",
    "error",
    "size",
    "modification_time",
    "variant",  # 0: the image itself; 1..N: its photo-like variants (p8 run --augment N)
]

# A notebook's figure output names itself with this metadata key (p8lib.report writes it,
# p8lib.notebook.save_figures saves the PNG under that name).
FIGURE_KEY = "p8_figure"

# A `p8 train` model folder.
SPARK_MODEL = "spark_model"
MODEL_INFO = "model.json"
EVALUATION = "evaluation.json"
CONFUSION = "confusion.png"


class Col:
    """Column names inside the saved Spark ML pipelines (their stages read and write these)."""

    VECTOR = "_vec"  # the 1280 features as a Spark ML vector
    SCALED = "_scaled"
    PCA = "_pca"
    COLOR = "_color"  # the colour histogram as a vector
    COLOR_SCALED = "_color_scaled"
    INPUT = "_input"  # what the regression reads: PCA (or scaled) features + histogram
    LABEL_INDEX = "_label_index"


@dataclass(frozen=True)
class Inputs:
    """What a run read and computed its rows with."""

    images: str
    glob: str | None
    extensions: list[str] | None  # None: narrowed by ``glob``
    weights: str
    weights_sha256: str
    color: str | None = None  # the colour histogram's descriptor; None: no histograms


@dataclass(frozen=True)
class Counts:
    """Images a run saw, from its rows."""

    images: int
    featurized: int
    reused: int
    succeeded: int
    failed: int
    failed_by_reason: dict[str, int]


@dataclass(frozen=True)
class PcaRecord:
    """The reduction a run fitted."""

    k: int
    variance_threshold: float | None
    variance_reached: float
    explained_variance: list[float]


class Featurization(NamedTuple):
    """What a run's rows were computed with: rows are comparable only when these are equal."""

    weights_sha256: str
    image_size: int
    color: str | None  # the colour histogram's descriptor
    precision: str = "fp32"  # the network's: fp32 (OpenVINO or Keras), bf16, int8
    augment: str = ""  # "N descriptor" of the photo-like variants (p8lib.augment), "" for none


@dataclass(frozen=True)
class RunManifest:
    """``manifest.json`` of a `p8 run` output: settings, inputs, counts, PCA, timings."""

    run_id: str
    started_at: str
    finished_at: str
    config: dict[str, Any]
    inputs: Inputs
    outputs: dict[str, str]
    counts: Counts
    listing: dict[str, Any]
    pca: PcaRecord
    seconds: dict[str, float]
    inference_images: int
    spark: dict[str, Any]
    versions: dict[str, str]
    plan: dict[str, Any] = field(default_factory=dict)  # the featurize stage's tasks (plan.Plan)
    network: dict[str, Any] = field(default_factory=dict)  # engine, precision, key, calibration
    augmentation: dict[str, Any] = field(default_factory=dict)  # variants, descriptor
    format_version: int = FORMAT_VERSION

    @property
    def featurization(self) -> Featurization:
        variants = self.augmentation.get("variants", 0)
        return Featurization(
            self.inputs.weights_sha256,
            int(self.config["image_size"]),
            self.inputs.color,
            str(self.config.get("precision", "fp32")),
            f"{variants} {self.augmentation['descriptor']}" if variants else "",
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), indent=2).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str) -> RunManifest:
        data = _checked(data, where=where, kind="p8 run manifest", again="p8 run")
        return _build(
            cls,
            data,
            where=where,
            inputs=Inputs,
            counts=Counts,
            pca=PcaRecord,
        )

    @classmethod
    def from_json(cls, text: bytes | str, *, where: str) -> RunManifest:
        return cls.from_dict(_parse(text, where=where), where=where)


@dataclass(frozen=True)
class ModelInfo:
    """``model.json`` of a `p8 train` model: how it was fitted and what it expects."""

    created_at: str
    p8lib: str
    features: str
    test: str | None
    input: str
    color: str | None  # the histogram's descriptor, None when the model takes no histogram
    k: int | None
    variance_threshold: float | None
    reg_param: float
    reg_param_scores: dict[str, float]
    reg_param_log_loss: dict[str, float]
    max_iter: int
    iterations: int | None
    train_rows: int
    labels: list[str]
    image_size: int
    weights_sha256: str
    evaluation: dict[str, Any]
    spark: dict[str, Any]
    versions: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"  # of the features it was trained on: p8 predict computes the same
    network: dict[str, Any] = field(default_factory=dict)  # the run's (engine, key, …)
    augmentation: dict[str, Any] = field(default_factory=dict)  # the training rows' variants
    standardization: bool = True  # the regression's inputs at unit variance before the penalty
    # With photo-like variants: the photo model's file, shrinkage, unit length, cell margin.
    photo_model: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), indent=2).encode()

    @classmethod
    def from_json(cls, text: bytes | str, *, where: str) -> ModelInfo:
        data = _checked(_parse(text, where=where), where=where, kind="p8 model", again="p8 train")
        return _build(cls, data, where=where)


def read_run(spark: SparkSession, uri: str, *, what: str) -> RunManifest:
    """The manifest of the ``p8 run`` output at ``uri`` (``what``: the flag that named it)."""
    from p8lib import io

    if not io.exists(spark, f"{uri}/{PARQUET}") or not io.exists(spark, f"{uri}/{MANIFEST}"):
        raise UsageError(
            f"{what} {uri} holds no p8 run results ({PARQUET} and {MANIFEST}): "
            f"make them with `p8 run --images IMAGES --output {uri}`"
        )
    where = f"{what} {uri}/{MANIFEST}"
    return RunManifest.from_json(io.read_bytes(spark, f"{uri}/{MANIFEST}"), where=where)


def read_rows(spark: SparkSession, parquet: str) -> DataFrame:
    """A run's table; rows written before ``p8 run --augment`` get ``variant`` 0."""
    from pyspark.sql import functions as F

    table = spark.read.parquet(parquet)
    return table if "variant" in table.columns else table.withColumn("variant", F.lit(0))


def only_images(rows: DataFrame) -> DataFrame:
    """The rows of the images themselves, not of their photo-like variants."""
    from pyspark.sql import functions as F

    return rows.where(F.col("variant") == 0)


def _parse(text: bytes | str, *, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        raise UsageError(f"{where} is not JSON: not written by p8, or cut short") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where} is not a p8 record (a JSON object)")
    return data


def _checked(data: dict[str, Any], *, where: str, kind: str, again: str) -> dict[str, Any]:
    """``data`` if its format_version is the one this p8lib reads; else one clear line."""
    version = data.get("format_version")
    if version is None or (isinstance(version, int) and version < FORMAT_VERSION):
        raise UsageError(
            f"{where} was written by an older p8lib (format {version or 0}; this one reads "
            f"format {FORMAT_VERSION}): make it again with `{again}`"
        )
    if version != FORMAT_VERSION:
        raise UsageError(
            f"{where} was written by a newer p8lib (format {version}; this one reads "
            f"format {FORMAT_VERSION}): upgrade p8lib"
        )
    return data


T = TypeVar("T")


def _build(cls: type[T], data: dict[str, Any], *, where: str, **nested: type) -> T:
    """``cls(**data)`` with the ``nested`` records built too; a missing key is one line."""
    try:
        values = {
            f.name: nested[f.name](**data[f.name]) if f.name in nested else data[f.name]
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.name in data
            or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        }
        return cls(**values)
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{where} is not a complete {cls.__name__} ({exc})") from None

"""Typed settings of each command, with defaults; validated before anything is read or written.

The Spark/S3 part and the PCA part are defined once and shared by ``RunConfig`` and
``TrainConfig`` (the CLI's option groups mirror them)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from p8lib.artifacts import FEATURE_DIM
from p8lib.augment import MAX_AUGMENT
from p8lib.engine import check as check_engine
from p8lib.errors import UsageError
from p8lib.listing import glob_regex
from p8lib.s3 import endpoint_url

Mode = Literal["error", "overwrite", "incremental"]
MODES: tuple[str, ...] = ("error", "overwrite", "incremental")
Input = Literal["pca", "features"]
INPUTS: tuple[str, ...] = ("pca", "features")
URI_RE = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*://.*|[^:]+)$")
# local, local[4], local[*], local[4,2], local-cluster[2,1,1024], spark://h:7077[,h2:7077], yarn,
# k8s://https://host:443, mesos://host:5050 (no local[0]: Spark cannot start with no thread)
MASTER_RE = re.compile(
    r"^(local(\[(\*|[1-9]\d*)(,\d+)?\])?|local-cluster\[[1-9]\d*,[1-9]\d*,[1-9]\d*\]"
    r"|spark://[\w.-]+:\d+(,[\w.-]+:\d+)*|yarn|k8s://\S+|mesos://[\w.-]+:\d+)$"
)


def check_master(master: str) -> None:
    """Refuse a Spark master URL Spark would not understand, before a JVM starts.

    Examples
    --------
    >>> check_master("spark://127.0.0.1:7077")
    >>> check_master("nonsense")
    Traceback (most recent call last):
    ...
    p8lib.errors.UsageError: --master 'nonsense' is not a Spark master URL: use local[*], \
local[N], spark://HOST:PORT or yarn
    """
    if not MASTER_RE.match(master):
        raise UsageError(
            f"--master {master!r} is not a Spark master URL: use local[*], local[N], "
            "spark://HOST:PORT or yarn"
        )


@dataclass(frozen=True, kw_only=True)
class SparkSettings:
    """Where Spark runs and how it reaches S3 (``p8 run`` and ``p8 train`` share them).

    ``s3_endpoint``: an S3 server other than AWS; None reads ``$AWS_ENDPOINT_URL`` here, once.
    """

    master: str = "local[*]"
    s3_endpoint: str | None = None
    spark_conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_master(self.master)
        object.__setattr__(self, "s3_endpoint", endpoint_url(self.s3_endpoint))


@dataclass(frozen=True, kw_only=True)
class PcaSettings:
    """How many PCA components: ``k``, or the smallest count reaching ``variance``."""

    k: int | None = None
    variance: float = 0.99

    def __post_init__(self) -> None:
        # A notebook's or a caller's "10" or True: said here, not as a TypeError further on.
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int)):
            raise UsageError(f"--k must be a whole number, got {self.k!r}")
        if isinstance(self.variance, bool) or not isinstance(self.variance, int | float):
            raise UsageError(f"--variance must be a number, got {self.variance!r}")
        if self.k is not None and not 1 <= self.k <= FEATURE_DIM:
            raise UsageError(f"--k must be between 1 and {FEATURE_DIM}, got {self.k}")
        if not 0.0 < self.variance <= 1.0:
            raise UsageError(f"--variance must be in (0, 1], got {self.variance}")

    @property
    def variance_threshold(self) -> float | None:
        """The variance that chose k, or None when k was given."""
        return None if self.k is not None else self.variance


def _check_uri(flag: str, value: str, what: str) -> None:
    if not value.strip():
        raise UsageError(f"--{flag} is empty: give {what}")
    if not URI_RE.match(value):
        raise UsageError(f"--{flag} is not a valid path or URI: {value!r}")


@dataclass(frozen=True, kw_only=True)
class RunConfig(PcaSettings, SparkSettings):
    """Everything one ``p8 run`` needs.

    Examples
    --------
    >>> RunConfig(images="data/Test", output="out").k is None
    True
    >>> RunConfig(images="data/Test", output="out", k=0)
    Traceback (most recent call last):
    ...
    p8lib.errors.UsageError: --k must be between 1 and 1280, got 0
    """

    images: str
    output: str
    glob: str | None = None  # None: every image extension Pillow reads, any case
    weights: str = "imagenet"
    image_size: int = 224
    batch_size: int | None = None  # images per forward pass; None: the engine's (engine.BATCH)
    mode: Mode = "error"
    partitions: int | None = None  # featurize tasks; None: planned from the capacity (plan.py)
    engine: str = "openvino"  # or "keras", the reference
    precision: str = "fp32"  # or "bf16", "int8" (OpenVINO)
    calibration: str | None = None  # int8: a folder/URI of images; None: a sample of --images
    augment: int = 0  # photo-like variants per image (p8lib.augment), for training sets

    def __post_init__(self) -> None:
        _check_uri("images", self.images, "the folder or URI that holds the images")
        _check_uri("output", self.output, "a folder or URI for the results")
        PcaSettings.__post_init__(self)
        if self.image_size < 32:
            raise UsageError(f"--image-size must be at least 32, got {self.image_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch-size must be positive, got {self.batch_size}")
        check_engine(self.engine, self.precision)
        if self.calibration is not None and self.precision != "int8":
            raise UsageError("--calibration is for --precision int8 only")
        if self.calibration is not None:
            _check_uri("calibration", self.calibration, "a folder or URI of images")
        if self.partitions is not None and self.partitions < 1:
            raise UsageError(f"--partitions must be positive, got {self.partitions}")
        if not 0 <= self.augment <= MAX_AUGMENT:
            raise UsageError(f"--augment must be between 0 and {MAX_AUGMENT}, got {self.augment}")
        if self.mode not in MODES:
            raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.glob is not None and not self.glob.strip():
            raise UsageError("--glob is empty: give a pattern such as '*.jpg'")
        if self.glob is not None:
            glob_regex(self.glob)  # an unclosed '{' is refused here, not at the first file
        SparkSettings.__post_init__(self)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the manifest (no secrets live here)."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(PcaSettings, SparkSettings):
    """Everything one ``p8 train`` needs.

    ``input``: ``"pca"`` (k components) or ``"features"`` (all 1280, scaled). ``color``: the
    colour histogram goes to the regression too. ``reg_param``: L2 strength, None to choose it
    on held-out rows. ``test``: a ``p8 run`` output to evaluate on, None to set a fifth aside.

    Examples
    --------
    >>> TrainConfig(features="f", model="m", max_iter=0)
    Traceback (most recent call last):
    ...
    p8lib.errors.UsageError: --max-iter must be positive, got 0
    """

    features: str
    model: str
    test: str | None = None
    input: Input = "pca"
    color: bool = True
    reg_param: float | None = None
    max_iter: int = 200
    standardization: bool = True  # the regression's inputs scaled to unit variance (Spark's)
    photo_model: bool = True  # with variants in --features: also fit p8lib.photo's model
    mode: Literal["error", "overwrite"] = "error"

    def __post_init__(self) -> None:
        _check_uri("features", self.features, "a `p8 run` output to train on")
        _check_uri("model", self.model, "a folder or URI for the model")
        if self.test is not None:
            _check_uri("test", self.test, "a `p8 run` output to evaluate on")
        if self.input not in INPUTS:
            raise UsageError(f"--input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        PcaSettings.__post_init__(self)
        if self.reg_param is not None and not 0 <= self.reg_param < math.inf:
            raise UsageError(f"--reg-param must be 0 or more (and finite), got {self.reg_param}")
        if self.max_iter < 1:
            raise UsageError(f"--max-iter must be positive, got {self.max_iter}")
        if self.mode not in ("error", "overwrite"):
            raise UsageError(f"--mode must be error or overwrite, got {self.mode!r}")
        SparkSettings.__post_init__(self)

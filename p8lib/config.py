"""Typed run settings with defaults; validated before anything is read or written."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from p8lib.errors import UsageError
from p8lib.listing import glob_regex

Mode = Literal["error", "overwrite", "incremental"]
MODES: tuple[str, ...] = ("error", "overwrite", "incremental")
FEATURE_DIM = 1280
URI_RE = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*://.*|[^:]+)$")
# local, local[4], local[*], local[4,2], local-cluster[2,1,1024], spark://h:7077[,h2:7077], yarn,
# k8s://https://host:443, mesos://host:5050
MASTER_RE = re.compile(
    r"^(local(\[(\*|\d+)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]"
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
class RunConfig:
    """Everything one pipeline run needs.

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
    k: int | None = None
    variance: float = 0.99
    glob: str | None = None  # None: every image extension Pillow reads, any case
    master: str = "local[*]"
    weights: str = "imagenet"
    image_size: int = 224
    batch_size: int = 32
    mode: Mode = "error"
    s3_endpoint: str | None = None
    spark_conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.images.strip():
            raise UsageError("--images is empty: give the folder or URI that holds the images")
        if not self.output.strip():
            raise UsageError("--output is empty: give a folder or URI for the results")
        for name in ("images", "output"):
            value = getattr(self, name)
            if not URI_RE.match(value):
                raise UsageError(f"--{name} is not a valid path or URI: {value!r}")
        if self.k is not None and not 1 <= self.k <= FEATURE_DIM:
            raise UsageError(f"--k must be between 1 and {FEATURE_DIM}, got {self.k}")
        if not 0.0 < self.variance <= 1.0:
            raise UsageError(f"--variance must be in (0, 1], got {self.variance}")
        if self.image_size < 32:
            raise UsageError(f"--image-size must be at least 32, got {self.image_size}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be positive, got {self.batch_size}")
        if self.mode not in MODES:
            raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.glob is not None and not self.glob.strip():
            raise UsageError("--glob is empty: give a pattern such as '*.jpg'")
        if self.glob is not None:
            glob_regex(self.glob)  # an unclosed '{' is refused here, not at the first file
        check_master(self.master)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the manifest (no secrets live here)."""
        return asdict(self)

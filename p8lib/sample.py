"""The 34-image data sample: a manifest in the repo, images fetched from a Fruits-360 copy."""

from __future__ import annotations

import csv
import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from p8lib.errors import P8Error, UsageError
from p8lib.packaged import SAMPLE_MANIFEST, workspace, write_whole

# The official Fruits-360 (100x100) repository; the manifest's paths are relative to its root.
DEFAULT_BASE_URL = "https://raw.githubusercontent.com/fruits-360/fruits-360-100x100/main/"


@dataclass(frozen=True)
class SampleImage:
    """One manifest row: the class, the path under the Fruits-360 root, the file's sha256."""

    label: str
    path: str
    sha256: str


def read_manifest(manifest: Path = SAMPLE_MANIFEST) -> list[SampleImage]:
    """The manifest's rows."""
    if not manifest.is_file():
        raise UsageError(f"sample manifest not found: {manifest}")
    with manifest.open(newline="") as fh:
        return [SampleImage(r["label"], r["path"], r["sha256"]) for r in csv.DictReader(fh)]


def _fetch(source: str, image: SampleImage) -> bytes:
    if source.startswith(("http://", "https://")):
        url = source.rstrip("/") + "/" + quote(image.path)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return bytes(response.read())
        except (OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise P8Error(
                f"could not download {url} ({reason}); point p8 at a local Fruits-360 copy: "
                "set FRUITS360_DIR (or `p8 sample --from DIR`)"
            ) from None
    local = Path(source).expanduser() / image.path
    if not local.is_file():
        raise UsageError(f"{local} not found: --from must be a Fruits-360 folder holding Test/")
    return local.read_bytes()


def materialize(
    *, dest: str | Path, source: str | None = None, manifest: Path = SAMPLE_MANIFEST
) -> list[Path]:
    """Put the sample's images in ``dest/<label>/<file>``; return their paths.

    ``source`` is a local Fruits-360 folder or a base URL (default: ``$FRUITS360_DIR`` when set,
    else the official repository). Files already there with the right checksum are kept; every
    file is checked against the manifest's sha256. Another file where a sample image would go
    is never replaced: nothing is written then (a UsageError names it).
    """
    source = source or os.environ.get("FRUITS360_DIR") or DEFAULT_BASE_URL
    root = Path(dest).expanduser()
    images = [
        (image, root / image.label / Path(image.path).name) for image in read_manifest(manifest)
    ]
    present = {target for image, target in images if _holds(target, image)}
    _refuse_other_files(t for _, t in images if t not in present and t.exists())
    for image, target in images:
        if target not in present:
            write_whole(target, _checked(_fetch(source, image), image, source))
    return [target for _, target in images]


def _holds(target: Path, image: SampleImage) -> bool:
    return target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == image.sha256


def _refuse_other_files(others: Iterable[Path]) -> None:
    """Someone's files where the sample's would go are never replaced (nothing is written)."""
    found = list(others)
    if found:
        raise UsageError(
            f"{found[0]} exists and is not the sample's image"
            + (f" (nor are {len(found) - 1} more)" if len(found) > 1 else "")
            + ": choose another --dest, or move them away"
        )


def _checked(data: bytes, image: SampleImage, source: str) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != image.sha256:
        raise P8Error(
            f"{image.path} from {source} has sha256 {digest[:12]}…, the manifest expects "
            f"{image.sha256[:12]}… (the sample is Fruits-360 release 2024.08.04.0)"
        )
    return data


def ensure_sample(dest: Path | None = None, *, source: str | None = None) -> Path:
    """The sample's folder (default ``data_sample/images`` of the workspace), materialized
    first if needed (see :func:`materialize`)."""
    dest = dest or workspace() / "data_sample" / "images"
    materialize(dest=dest, source=source)
    return dest

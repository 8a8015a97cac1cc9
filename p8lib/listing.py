"""What a run reads: every image file under an input folder or S3 prefix, listed on the driver.

Local folders are walked with symlinks followed, but never into one of the walk's own
ancestors (a loop), and every real file is listed once however many links reach it. S3
prefixes are listed with boto3. By default every file whose extension, in any case, is one
Pillow decodes is selected; ``glob`` narrows that to a file-name pattern. Everything left out
is counted, so that a run can say what it did not read and why.
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from p8lib.errors import UsageError

# What Pillow decodes, and a phone's HEIC/HEIF through the pillow-heif plug-in.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".heic",
    ".heif",
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=8)
def glob_regex(glob: str) -> re.Pattern[str]:
    """A file-name pattern (``*``, ``?``, ``[abc]``, ``[!abc]``, ``{a,b}``) as a regex, any case.

    Examples
    --------
    >>> bool(glob_regex("*.{jpg,png}").fullmatch("IMG_1.JPG"))
    True
    >>> bool(glob_regex("a[!0-9]?.jpg").fullmatch("a1x.jpg"))
    False
    >>> bool(glob_regex("photo (1) [x].jpg").fullmatch("photo (1) x.jpg"))
    True
    """
    out, i, depth = [], 0, 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            start = i + 2 if glob[i + 1 : i + 2] in ("!", "^") else i + 1
            end = glob.find("]", start)
            if end < 0:
                out.append(re.escape(c))
            else:
                negate = start == i + 2
                body = glob[start:end].replace("\\", "\\\\")
                out.append(f"[{'^' if negate else ''}{body}]")
                i = end
        elif c == "{":
            depth += 1
            out.append("(?:")
        elif c == "}" and depth:
            depth -= 1
            out.append(")")
        elif c == "," and depth:
            out.append("|")
        elif c == "\\" and i + 1 < len(glob):
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(c))
        i += 1
    if depth:
        raise UsageError(f"--glob {glob!r} has an unclosed '{{'")
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def extension(name: str) -> str:
    """The lower-case extension with its dot, ``"(none)"`` when there is none."""
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if suffix and suffix != name.lower() else "(none)"


@dataclass(frozen=True)
class ImageFile:
    """One selected file: its URI as Spark writes paths, label, size and modification time."""

    path: str
    label: str
    size: int
    modification_time: datetime


@dataclass
class Listing:
    """The files selected under an input, and what was left out (counts by reason)."""

    root: str
    glob: str | None
    files: list[ImageFile] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # extension → files not selected
    hidden: int = 0  # names starting with '.', files or folders (.DS_Store, ._IMG_1.JPG, .trash)
    symlink_loops: int = 0
    broken_symlinks: int = 0
    duplicates: int = 0  # a real file reached again through a link: read once

    def select(self, name: str) -> bool:
        """Whether a file of this name is read; counts it as skipped when not."""
        if name.startswith("."):
            self.hidden += 1
            return False
        chosen = (
            extension(name) in IMAGE_EXTENSIONS
            if self.glob is None
            else bool(glob_regex(self.glob).fullmatch(name))
        )
        if not chosen:
            self.skipped[extension(name)] += 1
        return chosen

    def counts(self) -> dict[str, Any]:
        """The manifest's record of what was listed and left out."""
        return {
            "listed": len(self.files),
            "skipped_by_extension": dict(sorted(self.skipped.items())),
            "hidden": self.hidden,
            "symlink_loops": self.symlink_loops,
            "broken_symlinks": self.broken_symlinks,
            "duplicate_links": self.duplicates,
        }

    def notes(self) -> list[str]:
        """One sentence for each kind of file left out, for the run's summary."""
        out = []
        if self.skipped:
            why = "not images" if self.glob is None else f"not matching --glob {self.glob!r}"
            kinds = ", ".join(f"{ext} {n}" for ext, n in self.skipped.most_common())
            n = sum(self.skipped.values())
            out.append(f"{n} file{'s' if n != 1 else ''} skipped ({why}: {kinds})")
        if self.hidden:
            out.append(f"{self.hidden} hidden files or folders skipped (names starting with '.')")
        if self.symlink_loops:
            out.append(f"{self.symlink_loops} symlink loops not followed")
        if self.broken_symlinks:
            out.append(f"{self.broken_symlinks} broken symlinks skipped")
        if self.duplicates:
            out.append(f"{self.duplicates} links to files already read skipped")
        return out


def _mtime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def list_local(root: Path, *, glob: str | None = None) -> Listing:
    """Every selected file under the folder ``root``, walked loop-safely, sorted by path."""
    listing = Listing(root=str(root), glob=glob)
    seen: set[str] = set()
    stack = [(root, frozenset({os.path.realpath(root)}))]
    while stack:
        folder, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError as exc:
            raise UsageError(f"cannot list {folder}: {exc.strerror or exc}") from None
        for entry in entries:
            if entry.is_symlink() and not os.path.exists(entry.path):
                listing.broken_symlinks += 1
            elif entry.is_dir():
                real = os.path.realpath(entry.path)
                if entry.name.startswith("."):
                    listing.hidden += 1
                elif real in ancestors:
                    listing.symlink_loops += 1
                else:
                    stack.append((Path(entry.path), ancestors | {real}))
            elif entry.is_file() and listing.select(entry.name):
                real = os.path.realpath(entry.path)
                if real in seen:
                    listing.duplicates += 1
                    continue
                seen.add(real)
                st = entry.stat()
                listing.files.append(
                    ImageFile(
                        path=f"file:{entry.path}",
                        label=folder.name,
                        size=st.st_size,
                        modification_time=_mtime(st.st_mtime_ns // 1_000_000),
                    )
                )
    listing.files.sort(key=lambda f: f.path)
    return listing


def list_s3(uri: str, *, glob: str | None = None, endpoint: str | None = None) -> Listing:
    """Every selected object under the prefix of ``uri`` (``s3://`` or ``s3a://``)."""
    from p8lib import s3

    location = s3.S3Location.parse(uri)
    listing = Listing(root=uri, glob=glob)
    scheme = uri.split("://", 1)[0]
    for key, size, modified in s3.list_objects(location, endpoint=endpoint):
        if key.endswith("/"):
            continue  # a folder marker
        parts = key.split("/")
        if any(p.startswith(".") for p in parts[:-1]):
            listing.hidden += 1
            continue
        if listing.select(parts[-1]):
            label = parts[-2] if len(parts) > 1 else location.bucket
            listing.files.append(
                ImageFile(
                    path=f"{scheme}://{location.bucket}/{key}",
                    label=label,
                    size=size,
                    modification_time=modified,
                )
            )
    listing.files.sort(key=lambda f: f.path)
    return listing

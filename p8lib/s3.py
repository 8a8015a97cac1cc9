"""S3 through boto3: clear errors before Spark touches a bucket, and `p8 upload`.

Credentials come from the standard AWS chain (environment, profile, instance role); they are
never printed, logged or written anywhere by p8.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from p8lib.errors import P8Error, UsageError
from p8lib.progress import Reporter


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (no leading or trailing slash)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        """``s3://bucket/a/b/`` → ``S3Location("bucket", "a/b")``.

        Examples
        --------
        >>> S3Location.parse("s3a://fruits/data/Test/")
        S3Location(bucket='fruits', prefix='data/Test')
        """
        scheme, sep, rest = uri.partition("://")
        bucket, _, prefix = rest.partition("/")
        if not sep or scheme.lower() not in ("s3", "s3a", "s3n") or not bucket:
            raise UsageError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
        # Keys are taken as written: '#', '?', '%' and spaces are part of the name.
        return cls(bucket, prefix.strip("/"))


def endpoint_url(endpoint: str | None = None) -> str | None:
    """The S3 endpoint: the argument, else ``$AWS_ENDPOINT_URL``, else AWS itself (None)."""
    return endpoint or os.environ.get("AWS_ENDPOINT_URL") or None


def client(endpoint: str | None = None) -> Any:
    """A boto3 S3 client for ``endpoint`` (path-style addressing off AWS), quick to give up."""
    import boto3
    from botocore.config import Config

    url = endpoint_url(endpoint)
    config = Config(
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path"} if url else {},
    )
    # botocore's region rule (AWS_DEFAULT_REGION, else the profile's), as `p8 emr` follows it.
    region = boto3.session.Session().region_name or "us-east-1"
    return boto3.client("s3", endpoint_url=url, config=config, region_name=region)


def _explain(exc: Exception, bucket: str, endpoint: str | None) -> P8Error:
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    where = endpoint_url(endpoint) or "AWS S3"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return P8Error(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    if isinstance(exc, EndpointConnectionError):
        return P8Error(f"cannot reach the S3 endpoint {where}: check --s3-endpoint")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return P8Error(
                f"access denied to bucket {bucket!r} at {where}: check the AWS credentials"
            )
        if code in ("404", "NoSuchBucket"):
            return P8Error(f"bucket not found: {bucket!r} at {where}")
        return P8Error(f"S3 error on bucket {bucket!r} at {where}: {code}")
    return P8Error(f"S3 error on bucket {bucket!r} at {where}: {type(exc).__name__}")


def check_bucket(uri: str, *, endpoint: str | None = None) -> None:
    """Fail with one clear line when the bucket of ``uri`` can't be reached or used."""
    location = S3Location.parse(uri)
    try:
        client(endpoint).head_bucket(Bucket=location.bucket)
    except Exception as exc:  # botocore's errors are mapped to one line each
        raise _explain(exc, location.bucket, endpoint) from None


# Prefixes listed at once: ListObjectsV2 gives 1,000 keys a call, so a listing of millions of
# keys is thousands of round trips; one per class folder, in parallel, divides that time.
LIST_THREADS = 16


def list_objects(
    location: S3Location, *, endpoint: str | None = None, page_size: int = 1000
) -> Iterator[tuple[str, int, datetime]]:
    """Key, size and modification time of every object under ``location``, all pages.

    The objects directly under the prefix come first, then those of each sub-prefix (a class
    folder), :data:`LIST_THREADS` sub-prefixes listed at a time."""
    prefix = f"{location.prefix}/" if location.prefix else ""
    try:
        s3 = client(endpoint)
        top, subfolders = _list_level(s3, location.bucket, prefix, page_size)
        yield from top
        with ThreadPoolExecutor(max_workers=LIST_THREADS) as pool:
            parts = [
                pool.submit(_list_all, s3, location.bucket, sub, page_size) for sub in subfolders
            ]
            for part in parts:
                yield from part.result()
    except Exception as exc:
        raise _explain(exc, location.bucket, endpoint) from None


def _list_level(
    s3: Any, bucket: str, prefix: str, page_size: int
) -> tuple[list[tuple[str, int, datetime]], list[str]]:
    """The objects directly under ``prefix``, and its sub-prefixes (``Delimiter='/'``)."""
    found: list[tuple[str, int, datetime]] = []
    subfolders: list[str] = []
    config = {"PageSize": page_size}
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, Delimiter="/", PaginationConfig=config
    )
    for page in pages:
        found += _entries(page)
        subfolders += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    return found, subfolders


def _list_all(s3: Any, bucket: str, prefix: str, page_size: int) -> list[tuple[str, int, datetime]]:
    """Every object under ``prefix``, however deep."""
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
    )
    return [entry for page in pages for entry in _entries(page)]


def _entries(page: dict[str, Any]) -> list[tuple[str, int, datetime]]:
    """Key, size and modification time of the objects of one ListObjectsV2 page."""
    return [(o["Key"], int(o["Size"]), o["LastModified"]) for o in page.get("Contents", [])]


def list_sizes(uri: str, *, endpoint: str | None = None) -> dict[str, int]:
    """Every object under the prefix of ``uri`` with its size, across all listing pages."""
    found = list_objects(S3Location.parse(uri), endpoint=endpoint)
    return {key: size for key, size, _ in found}


def read_object(uri: str, *, endpoint: str | None = None, s3: Any = None) -> bytes:
    """The bytes of one object (``s3://bucket/key``); ``s3``: a client to reuse."""
    location = S3Location.parse(uri)
    answer = (s3 or client(endpoint)).get_object(Bucket=location.bucket, Key=location.prefix)
    return bytes(answer["Body"].read())


@dataclass(frozen=True)
class UploadResult:
    """How many files were uploaded and how many were already there."""

    uploaded: int
    skipped: int


def upload(
    source: str | Path,
    dest: str,
    *,
    endpoint: str | None = None,
    workers: int = 8,
    log: Callable[[str], None] | None = None,
    live: bool = False,
) -> UploadResult:
    """Copy the tree under ``source`` to ``dest`` (``s3://bucket/prefix``).

    Objects already there with the same size are skipped, so an interrupted upload resumes.
    Progress (files and bytes) goes to ``log``, or is redrawn in place with ``live``.
    """
    root = Path(source).expanduser()
    if not root.is_dir():
        raise UsageError(f"not a folder: {source}")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise UsageError(f"nothing to upload under {source}")
    check_bucket(dest, endpoint=endpoint)
    location = S3Location.parse(dest)
    existing = list_sizes(dest, endpoint=endpoint)

    def key(path: Path) -> str:
        relative = path.relative_to(root).as_posix()
        return f"{location.prefix}/{relative}" if location.prefix else relative

    todo = [p for p in files if existing.get(key(p)) != p.stat().st_size]
    s3 = client(endpoint)

    def put(path: Path) -> None:
        s3.upload_file(str(path), location.bucket, key(path))

    sizes = [p.stat().st_size for p in todo]
    sent = [0, 0]  # files, bytes
    to_send = f"{sum(sizes) / 1e6:,.1f} MB to send"
    reporter = Reporter("uploading", len(todo), "files", log=log, live=live, extra=to_send)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for size, _ in zip(sizes, pool.map(put, todo), strict=True):
                sent[0], sent[1] = sent[0] + 1, sent[1] + size
                reporter.update(sent[0])
        reporter.finish(sent[0], note=f"{sent[1] / 1e6:,.1f} MB")
    except Exception as exc:
        raise _explain(exc, location.bucket, endpoint) from None
    finally:
        reporter.close()  # after Ctrl-C too: the redrawn line ends before p8 says why
    return UploadResult(uploaded=len(todo), skipped=len(files) - len(todo))


def download(location: S3Location, dest: Path, *, endpoint: str | None = None) -> int:
    """Copy every object under ``location`` into ``dest`` (keys relative to the prefix)."""
    uri = f"s3://{location.bucket}/{location.prefix}"
    sizes = list_sizes(uri, endpoint=endpoint)
    if not sizes:
        raise UsageError(f"nothing under {uri}")
    s3 = client(endpoint)
    prefix = f"{location.prefix}/" if location.prefix else ""
    try:
        for key in sizes:
            if key.endswith("/"):
                continue  # a "folder" marker
            target = dest / key[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(location.bucket, key, str(target))
    except Exception as exc:
        raise _explain(exc, location.bucket, endpoint) from None
    return len(sizes)

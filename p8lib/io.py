"""Images in (binaryFile, labels from folders), results out (parquet, files), URIs.

Every file operation goes through Hadoop's FileSystem API in the driver's JVM, so the same code
works on the local disk, on S3 through S3A and on EMR through EMRFS.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from p8lib.errors import UsageError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

S3_SCHEMES = ("s3", "s3a", "s3n")
OTHER_SCHEMES = ("hdfs", "viewfs", "gs", "abfs", "abfss", "wasb", "wasbs")
# The label is the name of the folder that holds the image.
LABEL_RE = r"([^/]+)/[^/]+$"


def scheme(uri: str) -> str:
    """The URI's scheme, ``"file"`` for a plain path."""
    parsed = urlparse(uri)
    return parsed.scheme.lower() if len(parsed.scheme) > 1 else "file"


def is_s3(uri: str) -> bool:
    """True for ``s3://``, ``s3a://`` and ``s3n://`` URIs."""
    return scheme(uri) in S3_SCHEMES


def normalize_uri(uri: str, *, emr: bool = False) -> str:
    """A URI Spark can open: plain paths become absolute ``file:`` URIs; off EMR ``s3://`` → ``s3a://``.

    Examples
    --------
    >>> normalize_uri("s3://bucket/data/Test")
    's3a://bucket/data/Test'
    >>> normalize_uri("s3://bucket/data/Test", emr=True)
    's3://bucket/data/Test'
    >>> normalize_uri("/tmp/x/")
    'file:///tmp/x'
    """
    s = scheme(uri)
    if s == "file":
        path = uri[len("file:") :] if uri.startswith("file:") else uri
        path = re.sub(r"^/+", "/", path) if path.startswith("//") else path
        return Path(path).expanduser().resolve().as_uri()
    if s in S3_SCHEMES:
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise UsageError(f"S3 URI has no bucket: {uri!r} (expected s3://bucket/prefix)")
        target = "s3" if emr and s == "s3" else "s3a"
        return f"{target}://{parsed.netloc}{parsed.path.rstrip('/')}"
    if s in OTHER_SCHEMES:
        return uri.rstrip("/")
    raise UsageError(
        f"unsupported URI scheme {s!r} in {uri!r}: use a path, s3://, s3a:// or hdfs://"
    )


def _fs(spark: SparkSession, uri: str) -> tuple[Any, Any]:
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    path = jvm.org.apache.hadoop.fs.Path(uri)
    conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    return path.getFileSystem(conf), path


def exists(spark: SparkSession, uri: str) -> bool:
    """True when a file or folder (or any S3 object under the prefix) is at ``uri``."""
    fs, path = _fs(spark, uri)
    return bool(fs.exists(path))


def is_empty_dir(spark: SparkSession, uri: str) -> bool:
    """True for a folder with nothing in it."""
    fs, path = _fs(spark, uri)
    return bool(fs.getFileStatus(path).isDirectory()) and len(fs.listStatus(path)) == 0


def make_dirs(spark: SparkSession, uri: str, *, what: str = "folder") -> None:
    """Create a folder (and its parents), or fail with a clear line if it can't be written."""
    fs, path = _fs(spark, uri)
    try:
        created = bool(fs.mkdirs(path))
    except Exception as exc:  # py4j wraps the Java IOException
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot write the {what} at {uri}: {_java_reason(reason)}") from None
    if not created:
        raise UsageError(f"cannot write the {what} at {uri}")


def _java_reason(text: str) -> str:
    # "An error occurred while calling o42.mkdirs.\n: java.io.IOException: msg" → "msg"
    return text.rsplit("Exception:", 1)[-1].strip() or text


def write_bytes(spark: SparkSession, uri: str, data: bytes) -> None:
    """Write one small file (PNG, JSON) through Hadoop's FileSystem."""
    fs, path = _fs(spark, uri)
    fs.setWriteChecksum(False)  # no .crc side files next to the PNG and JSON
    out = fs.create(path, True)
    try:
        out.write(bytearray(data))
    finally:
        out.close()


def read_bytes(spark: SparkSession, uri: str) -> bytes:
    """Read one small file through Hadoop's FileSystem."""
    fs, path = _fs(spark, uri)
    stream = fs.open(path)
    try:
        jvm = spark.sparkContext._jvm
        assert jvm is not None
        return bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def delete(spark: SparkSession, uri: str) -> None:
    """Delete a file or a folder recursively (no error when absent)."""
    fs, path = _fs(spark, uri)
    if fs.exists(path):
        fs.delete(path, True)


def rename(spark: SparkSession, src: str, dst: str) -> None:
    """Move ``src`` to ``dst``: atomic on local disks and HDFS, copy-then-delete on S3."""
    fs, src_path = _fs(spark, src)
    _, dst_path = _fs(spark, dst)
    if not fs.rename(src_path, dst_path):
        raise OSError(f"could not move {src} to {dst}")


def sibling(uri: str, prefix: str) -> str:
    """A hidden sibling of ``uri``: ``.../out`` → ``.../.out<prefix>``."""
    head, _, name = uri.rstrip("/").rpartition("/")
    return f"{head}/.{name}{prefix}"


def publish(spark: SparkSession, staged: str, final: str, *, run_id: str) -> None:
    """Replace ``final`` with the complete results in ``staged``.

    The previous results stay whole until the new ones are complete; they are moved aside,
    the new ones moved in, and only then is the old copy deleted.
    """
    old = sibling(final, f".old-{run_id}")
    had_old = exists(spark, final)
    if had_old:
        rename(spark, final, old)
    try:
        rename(spark, staged, final)
    except Exception:
        if had_old:
            rename(spark, old, final)
        raise
    if had_old:
        delete(spark, old)


@contextmanager
def staging(spark: SparkSession, final: str, *, run_id: str, what: str) -> Iterator[str]:
    """A hidden sibling of ``final`` to write into: published whole when the block ends,
    deleted if it fails. Made on entry, so an unwritable ``final`` fails before any work."""
    staged = sibling(final, f".tmp-{run_id}")
    make_dirs(spark, staged, what=what)
    try:
        yield staged
        publish(spark, staged, final, run_id=run_id)
    except BaseException:
        delete(spark, staged)
        raise


def hadoop_path(uri: str) -> str:
    """A URI as Hadoop's ``Path.toString`` spells it (the form binaryFile's ``path`` column uses).

    Examples
    --------
    >>> hadoop_path("file:///tmp/a%20b/x.jpg")
    'file:/tmp/a b/x.jpg'
    >>> hadoop_path("s3a://bucket/a%20b/x.jpg")
    's3a://bucket/a b/x.jpg'
    """
    parsed = urlparse(uri)
    path = unquote(parsed.path)
    if parsed.netloc:
        return f"{parsed.scheme}://{parsed.netloc}{path}"
    return f"{parsed.scheme}:{path}"


def read_images(spark: SparkSession, uri: str, *, glob: str = "*.jpg") -> DataFrame:
    """Every file under ``uri`` matching ``glob``, recursively, with its label.

    Columns: ``path, label, size, modification_time, content``. Zero-byte files, which Spark's
    file scan skips, are kept with empty content so that every file gets a row.
    """
    from pyspark.sql import functions as F

    raw = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", glob)
        .option("recursiveFileLookup", "true")
        .load(uri)
    )
    listed = raw._jdf.inputFiles()  # every matching file, empty ones included
    if len(listed) > raw.count():
        present = {row["path"] for row in raw.select("path").collect()}
        missing = [hadoop_path(str(f)) for f in listed if hadoop_path(str(f)) not in present]
        rows = []
        for path in missing:
            fs, jpath = _fs(spark, path)
            status = fs.getFileStatus(jpath)
            modified = datetime.fromtimestamp(status.getModificationTime() / 1000)
            rows.append((path, modified, int(status.getLen()), b""))
        raw = raw.unionByName(spark.createDataFrame(rows, schema=raw.schema))
    return raw.select(
        "path",
        F.regexp_extract("path", LABEL_RE, 1).alias("label"),
        F.col("length").alias("size"),
        F.col("modificationTime").alias("modification_time"),
        "content",
    )


def preview_images(
    spark: SparkSession, uri: str, *, n: int = 12, glob: str = "*.jpg"
) -> list[tuple[bytes, str]]:
    """The first ``n`` images under ``uri`` (by path) as ``(bytes, label)``, for a grid."""
    rows = read_images(spark, uri, glob=glob).orderBy("path").limit(n).collect()
    return [(bytes(row["content"]), row["label"]) for row in rows]


def read_results(spark: SparkSession, output: str) -> Any:
    """The parquet results of a run under ``output`` as a pandas DataFrame, sorted by path."""
    table: Any = spark.read.parquet(f"{output.rstrip('/')}/features.parquet").toPandas()
    return table.sort_values("path").reset_index(drop=True)

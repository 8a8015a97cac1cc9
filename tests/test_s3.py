"""The same pipeline on s3:// paths, against a real S3 server on loopback."""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

import numpy as np
import pytest
from helpers import ctrl_c_once_started, p8
from pyspark.sql import functions as F
from s3server import SECRET_KEY

from p8lib import io, s3
from p8lib.artifacts import MODEL_INFO
from p8lib.pipeline import run
from p8lib.s3 import list_sizes, upload


def _by_path(table, prefix: str):
    table = table.assign(rel=table["path"].str.split(prefix).str[-1]).sort_values("rel")
    return table.reset_index(drop=True)


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    s3_server.client().create_bucket(Bucket="fruits")
    return "fruits"


@pytest.mark.slow
def test_pipeline_on_s3_equals_the_local_run(
    spark, s3_server, bucket, sample_dir, sample_run, sample_table
):
    done = upload(sample_dir, f"s3://{bucket}/data/Test", endpoint=s3_server.endpoint)
    assert (done.uploaded, done.skipped) == (34, 0)
    again = upload(sample_dir, f"s3://{bucket}/data/Test", endpoint=s3_server.endpoint)
    assert (again.uploaded, again.skipped) == (0, 34)

    result = run(
        images=f"s3://{bucket}/data/Test",
        output=f"s3://{bucket}/data/Results",
        s3_endpoint=s3_server.endpoint,
    )
    assert result.output == f"s3a://{bucket}/data/Results"
    keys = list_sizes(f"s3://{bucket}/data/Results", endpoint=s3_server.endpoint)
    assert {"data/Results/manifest.json", "data/Results/explained_variance.png"} <= set(keys)
    assert any(k.startswith("data/Results/features.parquet/part-") for k in keys)

    remote = _by_path(spark.read.parquet(result.parquet).toPandas(), "/data/Test/")
    local = _by_path(sample_table, str(sample_dir) + "/")
    assert list(remote["rel"]) == list(local["rel"]) and len(remote) == 34
    assert list(remote["label"]) == list(local["label"])
    np.testing.assert_allclose(np.stack(remote["features"]), np.stack(local["features"]), atol=1e-5)
    assert result.k == sample_run.k
    a, b = np.stack(remote["pca_features"]), np.stack(local["pca_features"])
    np.testing.assert_allclose(np.abs(a), np.abs(b), atol=1e-4)

    manifest = json.loads(io.read_bytes(spark, f"{result.output}/manifest.json"))
    assert manifest["counts"]["images"] == 34
    assert SECRET_KEY not in json.dumps(manifest)


def test_a_prefix_with_more_than_1000_objects_is_read_completely(
    spark, s3_server, bucket, fruits_dir, tmp_path
):
    tree = tmp_path / "many"
    classes = sorted((fruits_dir / "Test").iterdir())[:8]
    count = 0
    for folder in classes:
        for image in sorted(folder.glob("*.jpg"))[:140]:
            (tree / folder.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, tree / folder.name / image.name)
            count += 1
    assert count > 1000
    uri = f"s3://{bucket}/many"
    assert upload(tree, uri, endpoint=s3_server.endpoint).uploaded == count
    assert len(list_sizes(uri, endpoint=s3_server.endpoint)) == count
    # One page holds 1,000 keys at most: this prefix needs more than one listing page.
    page = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="many/", MaxKeys=1000)
    assert page["KeyCount"] == 1000 and page["IsTruncated"]
    assert upload(tree, uri, endpoint=s3_server.endpoint).skipped == count

    listing = io.list_images(io.normalize_uri(uri), s3_endpoint=s3_server.endpoint)
    assert len(listing.files) == count
    images = io.read_images(spark, listing, partitions=4)
    content = io.file_content(F.col("path"), s3_endpoint=s3_server.endpoint)
    read: Any = images.select("path", "label", F.length(content).alias("n")).toPandas()
    assert len(read) == count and read["path"].is_unique
    assert read["label"].nunique() == len(classes)
    sizes = list_sizes(uri, endpoint=s3_server.endpoint)
    assert sorted(read["n"]) == sorted(sizes.values()), "every object's bytes were read"


def test_the_listing_by_prefix_in_parallel_finds_what_s3_lists(s3_server, bucket) -> None:
    """Class folders listed at once (several pages each) give exactly S3's own plain listing."""
    client = s3_server.client()
    keys = ["tree/top.jpg", "tree/marker/", "tree/b/deep/er/x.jpg", "tree/c d/é.jpg"]
    keys += [f"tree/{label}/{i}.jpg" for label in ("a", "b", "z") for i in range(7)]
    keys += ["tree-sibling/not-under.jpg", "tree/.hidden/h.jpg"]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    expected = {
        (o["Key"], o["Size"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="tree/")
        for o in page.get("Contents", [])
    }
    location = s3.S3Location.parse(f"s3://{bucket}/tree")
    found = [
        (k, n) for k, n, _ in s3.list_objects(location, endpoint=s3_server.endpoint, page_size=2)
    ]
    assert len(found) == len(set(found)) == len(expected) == len(keys) - 1
    assert set(found) == expected


def _assert_one_error_line(result, fragment: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert (
        len(lines) == 1 and lines[0].startswith("p8: error: ") and fragment in lines[0]
    ), result.stderr
    assert SECRET_KEY not in result.stderr + result.stdout
    assert "wrong-secret" not in result.stderr + result.stdout


def test_wrong_credentials(s3_server, bucket) -> None:
    args = ["run", "--images", f"s3://{bucket}/data/Test", "--output", f"s3://{bucket}/x"]
    result = p8(
        *args, "--s3-endpoint", s3_server.endpoint, env={"AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    )
    _assert_one_error_line(result, "access denied")


def test_missing_bucket(s3_server) -> None:
    args = ["run", "--images", "s3://no-such-bucket/data", "--output", "s3://no-such-bucket/x"]
    _assert_one_error_line(p8(*args, "--s3-endpoint", s3_server.endpoint), "bucket not found")


def test_unreachable_endpoint(sample_dir) -> None:
    args = ["run", "--images", "s3://fruits/data", "--output", "s3://fruits/x"]
    _assert_one_error_line(p8(*args, "--s3-endpoint", "http://127.0.0.1:9"), "cannot reach")
    upload_args = [
        "upload",
        str(sample_dir),
        "s3://fruits/data",
        "--s3-endpoint",
        "http://127.0.0.1:9",
    ]
    _assert_one_error_line(p8(*upload_args), "cannot reach")


@pytest.mark.slow
def test_a_model_trained_into_s3_predicts_from_there_and_leaves_no_copy(
    s3_server, bucket, sample_run, sample_model, sample_dir, tmp_path
) -> None:
    local = sample_model.model.removeprefix("file://")
    remote = f"s3://{bucket}/models/sample"
    endpoint = ["--s3-endpoint", s3_server.endpoint]
    features = ["--features", sample_run.output, "--test", sample_run.output, "--k", "10"]
    trained = p8("train", *features, "--model", remote, *endpoint)
    assert trained.returncode == 0, trained.stderr
    keys = list_sizes(remote, endpoint=s3_server.endpoint)
    assert f"models/sample/{MODEL_INFO}" in keys, sorted(keys)
    photos = [str(p) for p in sorted(sample_dir.rglob("*.jpg"))[:3]]
    scratch = tmp_path / "tmp"  # the predicting process's temporary folder
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    here = p8("predict", *photos, "--model", local, "--json")
    there = p8("predict", *photos, "--model", remote, *endpoint, "--json", env=env)
    assert there.returncode == 0 and here.returncode == 0, there.stderr + here.stderr
    # The model trained into S3 answers as the same training saved locally (sample_model).
    answers = [[json.loads(line) for line in r.stdout.splitlines()] for r in (here, there)]
    assert [a["path"] for a in answers[1]] == photos
    for a, b in zip(*answers, strict=True):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        probabilities = [[t["probability"] for t in x["top"]] for x in (a, b)]
        assert probabilities[0] == pytest.approx(probabilities[1], abs=1e-6)
    assert not list(scratch.glob("p8-model-*")), "the model's download was left behind"
    scores = [["evaluate", "--model", m, "--images", str(sample_dir)] for m in (local, remote)]
    scored_here, scored_there = p8(*scores[0]), p8(*scores[1], *endpoint, env=env)
    assert scored_there.returncode == 0, scored_there.stderr
    assert scored_there.stdout == scored_here.stdout
    assert "34 photos: fine top-1" in scored_here.stdout
    assert not list(scratch.glob("p8-model-*"))
    missing = p8("predict", *photos, "--model", f"s3://{bucket}/models/none", *endpoint, env=env)
    _assert_one_error_line(missing, "nothing under s3://fruits/models/none")
    assert missing.returncode == 2 and not list(scratch.glob("p8-model-*"))


def test_ctrl_c_during_an_upload_says_what_stays(s3_server, bucket, fruits_dir, tmp_path) -> None:
    args = ["upload", str(fruits_dir / "Test"), f"s3://{bucket}/interrupted"]
    cmd = [sys.executable, "-m", "p8lib.cli", *args, "--s3-endpoint", s3_server.endpoint]
    code, stderr = ctrl_c_once_started(cmd, tmp_path / "stderr.txt", seen="uploading", after=1)
    assert code == 130, stderr[-3000:]
    last = stderr.rstrip().splitlines()[-1]
    assert last == "p8: interrupted, the files sent so far stay; the same command sends the rest"
    sent = list_sizes(f"s3://{bucket}/interrupted", endpoint=s3_server.endpoint)
    assert 0 < len(sent) < sum(1 for p in (fruits_dir / "Test").rglob("*") if p.is_file())

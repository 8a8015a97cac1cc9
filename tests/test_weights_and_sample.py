"""Weights from Keras's cache or a download; the data sample from a folder or over HTTP."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from helpers import ROOT, p8

from p8lib.errors import P8Error, UsageError
from p8lib.featurize import WEIGHTS_FILE, resolve_weights
from p8lib.sample import materialize, read_manifest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_offline_and_absent_name_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(P8Error) as info:
        resolve_weights("imagenet", url="http://127.0.0.1:9/")
    message = str(info.value)
    assert WEIGHTS_FILE in message and str(tmp_path / "keras" / "models") in message
    assert "--weights PATH" in message and "Traceback" not in message


def test_weights_are_downloaded_into_keras_cache(tmp_path, monkeypatch, weights_path, http_server):
    url = http_server(weights_path.parent)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    got = resolve_weights("imagenet", url=url)
    assert got == tmp_path / "keras" / "models" / WEIGHTS_FILE
    assert _sha(got) == _sha(weights_path)
    # Cached now: a second call does not need the server.
    assert resolve_weights("imagenet", url="http://127.0.0.1:9/") == got


def test_an_empty_keras_home_means_the_default(tmp_path, monkeypatch, weights_path, http_server):
    """`make` exports KERAS_HOME (and P8_JARS_DIR) empty when the user sets none: that is
    ~/.keras, not a `models/` folder in the checkout (weights that `git add -A` would take)."""
    from p8lib.session import jars_dir

    url = http_server(weights_path.parent)
    monkeypatch.setenv("KERAS_HOME", "")
    monkeypatch.setenv("P8_JARS_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    got = resolve_weights("imagenet", url=url)
    assert got == tmp_path / "home" / ".keras" / "models" / WEIGHTS_FILE and got.is_file()
    assert not (tmp_path / "models").exists()
    assert jars_dir() == tmp_path / "home" / ".cache" / "p8" / "jars"


def test_weights_path_must_exist_and_be_keras_file(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        resolve_weights(str(tmp_path / "missing.h5"))
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"\.h5/\.keras"):
        resolve_weights(str(tmp_path / "w.bin"))


def test_manifest_lists_34_images_of_several_classes() -> None:
    rows = read_manifest()
    assert len(rows) == 34 and len({r.label for r in rows}) >= 10
    assert all(r.path.startswith(f"Test/{r.label}/") for r in rows)


def test_sample_from_a_local_copy(fruits_dir, tmp_path):
    result = p8("sample", "--from", str(fruits_dir), "--dest", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "s").rglob("*.jpg"))
    assert len(files) == 34
    for row in read_manifest():
        target = tmp_path / "s" / row.label / Path(row.path).name
        assert _sha(target) == row.sha256 == _sha(fruits_dir / row.path)


def test_sample_over_http_from_a_loopback_server(fruits_dir, tmp_path, http_server):
    url = http_server(fruits_dir)
    paths = materialize(dest=tmp_path / "s", source=url)
    assert len(paths) == 34
    assert all(_sha(p) == r.sha256 for p, r in zip(paths, read_manifest(), strict=True))


def test_sample_rejects_a_file_that_differs_from_the_manifest(fruits_dir, tmp_path, http_server):
    first = read_manifest()[0]
    mirror = tmp_path / "mirror"
    for row in read_manifest():
        (mirror / row.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fruits_dir / row.path, mirror / row.path)
    (mirror / first.path).write_bytes(b"not the same image")
    with pytest.raises(P8Error, match="sha256"):
        materialize(dest=tmp_path / "s", source=http_server(mirror))
    assert not (tmp_path / "s" / first.label / Path(first.path).name).exists()


def test_sample_never_replaces_someone_elses_file(fruits_dir, tmp_path):
    """--dest pointed at a folder of one's own photos (or another Fruits-360 release) whose
    file sits where a sample image goes: refused before anything is written, the file kept."""
    first = read_manifest()[0]
    dest = tmp_path / "my photos"
    mine = dest / first.label / Path(first.path).name
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own photo")
    result = p8("sample", "--from", str(fruits_dir), "--dest", str(dest))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{mine} exists and is not the sample's image" in result.stderr
    assert mine.read_bytes() == b"my own photo"
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == [
        Path(first.label),
        mine.relative_to(dest),
    ]
    mine.unlink()  # moved away: now the sample comes, whole
    again = p8("sample", "--from", str(fruits_dir), "--dest", str(dest))
    assert again.returncode == 0, again.stderr
    assert len(list(dest.rglob("*.jpg"))) == 34 and not list(dest.rglob(".p8-*"))


def test_sample_download_failure_is_one_clear_line(tmp_path):
    result = p8("sample", "--from", "http://127.0.0.1:9/", "--dest", str(tmp_path / "s"))
    assert result.returncode == 1
    assert (
        result.stderr.startswith("p8: error: could not download")
        and "Traceback" not in result.stderr
    )
    # What to do, in words a notebook's user can follow too (no --from there).
    assert "set FRUITS360_DIR" in result.stderr and len(result.stderr.splitlines()) == 1
    assert ROOT.exists()

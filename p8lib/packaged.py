"""The files that ship inside the p8lib wheel, and where a command puts what it makes.

The notebooks, the sample's manifest, the EMR cluster template and its bootstrap script live in
``p8lib/resources/`` and are read with :mod:`importlib.resources`, so ``p8 sample``,
``p8 notebook`` and ``p8 emr`` work from a ``pip install`` as from a checkout (the checkout's
``notebooks/``, ``bootstrap.sh``, ``emr_config/cluster.json`` and ``data_sample/manifest.csv``
are links to them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import IO


def resource(name: str) -> Path:
    """The packaged file or folder ``resources/<name>`` (p8lib is installed as files, never
    zipped: a wheel, an editable install or a checkout)."""
    path = files("p8lib").joinpath("resources", name)
    assert isinstance(path, Path), f"p8lib is not installed as files: {path}"
    return path


NOTEBOOKS = resource("notebooks")
SAMPLE_MANIFEST = resource("sample_manifest.csv")
CLUSTER_JSON = resource("cluster.json")
BOOTSTRAP = resource("bootstrap.sh")
LOG4J_CONF = resource("log4j2.properties")
# The source checkout p8lib runs from, or None for an installed wheel.
_ROOT = Path(__file__).resolve().parents[1]
CHECKOUT: Path | None = _ROOT if (_ROOT / "pyproject.toml").is_file() else None


def workspace() -> Path:
    """Where the sample and the notebooks' results go by default: the checkout when p8lib runs
    from one (``data_sample/images``, ``results/``), else the current folder."""
    return CHECKOUT or Path.cwd()


def write_whole(target: Path, source: bytes | IO[bytes]) -> None:
    """``source`` (bytes, or a stream read to its end) at ``target``, whole or not at all: written
    to a hidden temporary file beside it, removed if that fails, then renamed over ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".p8-", delete=False) as tmp:
        try:
            if isinstance(source, bytes):
                tmp.write(source)
            else:
                shutil.copyfileobj(source, tmp)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, target)

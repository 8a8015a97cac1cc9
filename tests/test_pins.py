"""Versions are pinned once, in pyproject.toml; environment.yml mirrors them."""

from __future__ import annotations

import re
import tomllib

from helpers import ROOT


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = project["dependencies"] + extras["spark"] + extras["notebooks"]
    return dict(p.split("==") for p in pins)


def test_every_runtime_dependency_is_pinned_exactly() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    everything = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    pinned = r"[A-Za-z0-9_.-]+(\[[a-z,]+\])?==[0-9][0-9A-Za-z.]*"  # extras allowed
    assert all(re.fullmatch(pinned, p) for p in everything)


def test_environment_yml_mirrors_pyproject() -> None:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    pins = dict(line.strip().removeprefix("- ").split("==") for line in lines if "==" in line)
    assert pins == _pyproject_pins()
    assert "  - python=3.11" in lines

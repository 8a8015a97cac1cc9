"""p8lib as a pip user has it: the wheel installed in a fresh environment outside the checkout,
its commands run from an empty folder. Everything they need ships in the wheel."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT
from venvs import build_wheel, java_home, make_venv

SECRET = "p8-test-secret-key-never-printed"


@pytest.fixture(scope="module")
def installed_p8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `p8` command of a new environment holding p8lib[spark,notebooks] from its wheel."""
    folder = tmp_path_factory.mktemp("pip-user")
    wheel = build_wheel(folder / "dist")
    python = make_venv(folder / "venv", f"{wheel}[spark,notebooks]")
    return python.parent / "p8"


def _p8(p8: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK", "VIRTUAL"))}
    env["PATH"] = f"{p8.parent}:{os.environ['PATH']}"
    if java_home():
        env["JAVA_HOME"] = str(java_home())
    return subprocess.run(
        [str(p8), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def test_the_wheel_is_built_outside_the_tree_and_holds_the_resources(tmp_path: Path) -> None:
    import zipfile

    # What an earlier in-tree build left: a module since deleted from p8lib/ must not ship.
    stale = ROOT / "build" / "lib" / "p8lib" / "ghost.py"
    made = not stale.parent.exists()
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("GHOST = True\n")
    before = {p.name for p in ROOT.iterdir()}
    try:
        wheel = build_wheel(tmp_path)
    finally:
        stale.unlink()
        if made:
            shutil.rmtree(ROOT / "build" / "lib" / "p8lib")
    assert {p.name for p in ROOT.iterdir()} == before, "the build left files in the checkout"
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "p8lib/ghost.py" not in names
    for resource in (
        "notebooks/P8_local.ipynb",
        "notebooks/P8_AWS.ipynb",
        "sample_manifest.csv",
        "cluster.json",
        "bootstrap.sh",
        "log4j2.properties",
    ):
        assert f"p8lib/resources/{resource}" in names, resource


@pytest.mark.slow
def test_commands_work_from_the_installed_wheel(installed_p8: Path, tmp_path: Path) -> None:
    work = tmp_path / "a new user's folder"
    work.mkdir()
    where = subprocess.run(
        [str(installed_p8.parent / "python"), "-c", "import p8lib; print(p8lib.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(ROOT) not in where and "site-packages" in where

    sample = _p8(installed_p8, work, "sample", "--from", os.environ["FRUITS360_DIR"], "--dest", "s")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("34 images") and len(list((work / "s").rglob("*.jpg"))) == 34

    # No parameters: the sample goes to ./data_sample/images, the results to ./results/P8_local.
    notebook = _p8(installed_p8, work, "notebook", "P8_local", "--results", "executed")
    assert notebook.returncode == 0, notebook.stderr
    assert (work / "executed" / "P8_local.ipynb").is_file()
    assert {p.stem for p in (work / "executed" / "P8_local").glob("*.png")} == {
        "images",
        "explained_variance",
        "pca_scatter",
    }
    manifest = json.loads((work / "results" / "P8_local" / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 34
    assert len(list((work / "data_sample" / "images").rglob("*.jpg"))) == 34

    package = _p8(installed_p8, work, "emr", "package", "--bucket", "fruits-wheel", "--dry-run")
    assert package.returncode == 0, package.stderr
    for key in ("p8/bootstrap.sh", "jupyter/jovyan/P8_AWS.ipynb", "jupyter/jovyan/P8_local.ipynb"):
        assert f"s3://fruits-wheel/{key}" in package.stderr, key
    for name in ("bootstrap.sh", "P8_AWS.ipynb", "P8_local.ipynb"):  # read from the wheel
        assert re.search(rf"<[1-9][0-9]* bytes of [^>]*{re.escape(name)}>", package.stdout), name

    up = _p8(installed_p8, work, "emr", "up", "--bucket", "fruits-wheel", "--dry-run")
    assert up.returncode == 0, up.stderr
    assert "RunJobFlow" in up.stdout and "s3://fruits-wheel/p8/bootstrap.sh" in up.stdout
    assert SECRET not in sample.stdout + notebook.stdout + package.stdout + up.stdout

    # Without a checkout there is no wheel to build: say which one to pass.
    real = _p8(installed_p8, work, "emr", "package", "--bucket", "fruits-wheel")
    assert real.returncode == 2 and "--wheel" in real.stderr, real.stderr


def test_the_colab_cell_asks_for_the_install_source_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In Colab without `p8_requirement`, the install cell stops before installing anything."""
    from types import ModuleType

    from IPython.core.interactiveshell import InteractiveShell

    from p8lib.packaged import NOTEBOOKS

    cells = json.loads((NOTEBOOKS / "P8_local.ipynb").read_text())["cells"]
    install = next("".join(c["source"]) for c in cells if "google.colab" in "".join(c["source"]))
    monkeypatch.setitem(sys.modules, "google.colab", ModuleType("google.colab"))
    shell = InteractiveShell.instance()
    shell.user_ns["p8_requirement"] = None
    ran: list[str] = []
    # What `!command` would run, instead of running it.
    monkeypatch.setattr(shell, "system", lambda cmd: ran.append(shell.var_expand(cmd)))
    result = shell.run_cell(install)
    error = result.error_in_exec
    assert isinstance(error, RuntimeError) and not ran
    assert str(error).startswith("Set p8_requirement in the parameters cell")
    assert str(error).count(". ") == 0  # one sentence

    shell.user_ns["p8_requirement"] = "p8lib[spark] @ https://example.invalid/p8lib.whl"
    assert shell.run_cell(install).error_in_exec is None
    assert ran[-1] == 'pip install -q "p8lib[spark] @ https://example.invalid/p8lib.whl"'

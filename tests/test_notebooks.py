"""The notebooks, executed headless by papermill: local on the sample, AWS against local S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import ROOT, p8
from PIL import Image

from p8lib.errors import UsageError
from p8lib.notebook import dirty_cells, run_notebook
from p8lib.s3 import upload
from p8lib.session import configure_s3

FIGURES = {"images", "explained_variance", "pca_scatter"}


def _assert_executed_cleanly(executed: Path) -> None:
    cells = json.loads(executed.read_text())["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    assert all(c.get("execution_count") for c in cells if c["cell_type"] == "code")


def _assert_figures(folder: Path) -> None:
    assert {p.stem for p in folder.glob("*.png")} == FIGURES
    for png in folder.glob("*.png"):
        with Image.open(png) as img:
            img.verify()
            assert img.format == "PNG" and img.size[0] >= 300


@pytest.mark.parametrize(
    "notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem
)
def test_committed_notebooks_have_no_outputs(notebook: Path) -> None:
    assert dirty_cells(notebook) == []
    tags = [
        t for c in json.loads(notebook.read_text())["cells"] for t in c["metadata"].get("tags", [])
    ]
    assert tags.count("parameters") == 1


@pytest.mark.slow
def test_p8_local_runs_on_the_sample(spark, sample_dir, tmp_path):
    output = tmp_path / "out"
    executed = run_notebook(
        "P8_local",
        parameters={"images": str(sample_dir), "output": str(output), "sample_size": 6},
        results=tmp_path / "results",
    )
    assert executed == tmp_path / "results" / "P8_local.ipynb"
    _assert_executed_cleanly(executed)
    _assert_figures(tmp_path / "results" / "P8_local")
    assert spark.read.parquet(f"{output}/features.parquet").count() == 34


@pytest.mark.slow
def test_p8_aws_runs_against_a_local_s3_server(spark, s3_server, sample_dir, tmp_path):
    s3_server.client().create_bucket(Bucket="notebooks")
    upload(sample_dir, "s3://notebooks/data/Test", endpoint=s3_server.endpoint)
    executed = run_notebook(
        "P8_AWS",
        parameters={
            "images": "s3://notebooks/data/Test",
            "output": "s3://notebooks/data/Results",
            "k": 5,
            "s3_endpoint": s3_server.endpoint,
        },
        results=tmp_path / "results",
    )
    _assert_executed_cleanly(executed)
    _assert_figures(tmp_path / "results" / "P8_AWS")
    configure_s3(spark, s3_server.endpoint)
    table = spark.read.parquet("s3a://notebooks/data/Results/features.parquet")
    assert table.count() == 34 and len(table.first()["pca_features"]) == 5
    assert "p8-test-secret" not in executed.read_text()


def test_an_unknown_parameter_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown parameter.*colour"):
        run_notebook("P8_local", parameters={"colour": "red"}, results=tmp_path)
    result = p8("notebook", "P8_local", "-p", "colour", "red", "--results", str(tmp_path))
    assert result.returncode == 2 and "unknown parameter" in result.stderr
    assert not list(tmp_path.glob("*.ipynb")), "nothing was executed"

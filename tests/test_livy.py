"""P8_AWS through EMR JupyterHub's PySpark kernel: every code cell goes to Livy 0.8's own REPL
(``../shared/livy/fake_shell.py``), in an environment holding exactly what bootstrap.sh installs
on an EMR node, plus pyspark (EMR provides Spark) and the p8lib wheel — no IPython, no papermill.
Images and results are on the SeaweedFS S3 server, through s3a://."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT
from PIL import Image
from venvs import bootstrap_pins, build_wheel, extra_pins, installed, java_home, make_venv

from p8lib.s3 import upload
from p8lib.session import ensure_s3_jars

FAKE_SHELL = ROOT.parent / "shared" / "livy" / "fake_shell.py"
NOTEBOOK = ROOT / "notebooks" / "P8_AWS.ipynb"


class LivyRepl:
    """Livy's Python REPL as the Livy server drives it: JSON lines in, JSON lines out."""

    def __init__(self, python: Path, env: dict[str, str], log: Path) -> None:
        self.stderr = log.open("w")
        self.proc = subprocess.Popen(
            [str(python), str(FAKE_SHELL)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        ready = self._line()
        assert ready.startswith("READY("), ready

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the REPL exited ({self.proc.poll()}); see its stderr"
        return line.strip()

    def execute(self, code: str) -> dict[str, Any]:
        """The ``content`` of the REPL's execute_reply to ``code``."""
        assert self.proc.stdin is not None
        message = {"msg_type": "execute_request", "content": {"code": code}}
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        line = self._line()
        while not line.startswith("{"):  # something a library wrote to the real stdout
            line = self._line()
        reply = json.loads(line)
        assert reply["msg_type"] == "execute_reply", reply
        return reply["content"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.stderr.close()


@pytest.fixture(scope="module")
def emr_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EMR node's Python: bootstrap.sh's pins, pyspark, the p8lib wheel (no dependencies),
    nothing else."""
    folder = tmp_path_factory.mktemp("emr-node")
    wheel = build_wheel(folder / "dist")
    packages = [*bootstrap_pins(), *extra_pins("spark")]
    return make_venv(folder / "venv", *packages, no_deps=(str(wheel),))


@pytest.fixture()
def livy(emr_python: Path, s3_server, tmp_path: Path) -> Iterator[LivyRepl]:
    # The cluster's Spark configuration, as EMR writes it to /etc/spark/conf: the S3 jars are
    # on the classpath; the endpoint of this S3 server is the notebook's s3_endpoint parameter.
    conf = tmp_path / "spark-conf"
    conf.mkdir()
    defaults = {
        "spark.master": "local[2]",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.jars": ",".join(str(p) for p in ensure_s3_jars()),
        "spark.ui.enabled": "false",
    }
    (conf / "spark-defaults.conf").write_text("".join(f"{k} {v}\n" for k, v in defaults.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK", "SPARK", "VIRTUAL"))}
    env.update(
        LIVY_TEST="true",
        SPARK_CONF_DIR=str(conf),
        PYSPARK_PYTHON=str(emr_python),
        PATH=f"{emr_python.parent}:{os.environ['PATH']}",
    )
    if java_home():
        env["JAVA_HOME"] = str(java_home())
    repl = LivyRepl(emr_python, env, tmp_path / "repl-stderr.log")
    yield repl
    repl.close()


def _cells(notebook: Path) -> list[dict[str, Any]]:
    return [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]


def _ok(reply: dict[str, Any], code: str) -> dict[str, Any]:
    assert reply["status"] == "ok", f"{code}\n→ {reply.get('ename')}: {reply.get('evalue')}\n" + (
        "".join(reply.get("traceback", []))
    )
    return reply["data"]


@pytest.mark.slow
def test_p8_aws_runs_in_livys_repl_on_an_emr_like_node(livy, emr_python, s3_server, sample_dir):
    assert "ipython" not in installed(emr_python) and "papermill" not in installed(emr_python)
    s3_server.client().create_bucket(Bucket="livy")
    upload(sample_dir, "s3://livy/data/Test", endpoint=s3_server.endpoint)

    # Livy's session: the kernel defines `spark` before the first cell.
    session = "from pyspark.sql import SparkSession\nspark = SparkSession.builder.getOrCreate()"
    _ok(livy.execute(session), session)
    cells = _cells(NOTEBOOK)
    assert any("parameters" in c["metadata"].get("tags", []) for c in cells)
    figures, texts = {}, []
    for cell in cells:
        code = "".join(cell["source"])
        data = _ok(livy.execute(code), code)
        texts.append(data.get("text/plain", ""))
        tags = cell["metadata"].get("tags", [])
        if "parameters" in tags:  # what papermill would inject after it
            injected = (
                f"images = 's3a://livy/data/Test'\noutput = 's3a://livy/data/Results'\n"
                f"k = 5\ns3_endpoint = {s3_server.endpoint!r}\nsample_size = 6"
            )
            _ok(livy.execute(injected), injected)
        figure = [t.removeprefix("figure-") for t in tags if t.startswith("figure-")]
        if figure:
            assert "image/png" in data, f"{figure[0]}: {data}"
            figures[figure[0]] = base64.b64decode(data["image/png"])
    assert set(figures) == {"images", "explained_variance", "pca_scatter"}
    # Text comes back: the run's summary, the first rows and the counts as plain tables.
    assert any("34 images (34 featurized, 0 failed)" in t for t in texts)
    assert any("pca_features" in t and "Apple 6" in t for t in texts)
    assert any("featurized" in t and "seconds total" in t for t in texts)
    for name, png in figures.items():
        path = Path(livy.stderr.name).with_name(f"{name}.png")
        path.write_bytes(png)
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] >= 300, name

    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket="livy")["Contents"]}
    assert {"data/Results/manifest.json", "data/Results/explained_variance.png"} <= keys
    assert any(k.startswith("data/Results/features.parquet/part-") for k in keys)
    body = s3_server.client().get_object(Bucket="livy", Key="data/Results/manifest.json")["Body"]
    manifest = json.loads(body.read())
    assert manifest["counts"]["images"] == 34 and manifest["pca"]["k"] == 5

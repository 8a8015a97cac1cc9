"""Run the project's notebooks headless with papermill; check that committed ones are clean."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from p8lib.artifacts import FIGURE_KEY
from p8lib.errors import P8Error, UsageError
from p8lib.packaged import NOTEBOOKS

FIGURE_TAG = "figure-"


def resolve(name: str) -> Path:
    """``P8_local`` → ``notebooks/P8_local.ipynb``; a path is taken as it is."""
    path = Path(name)
    if path.suffix != ".ipynb":
        path = NOTEBOOKS / f"{name}.ipynb"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")))
        raise UsageError(f"notebook not found: {name} (known: {known})")
    return path


def parse_value(text: str) -> Any:
    """A ``-p key value`` value: numbers, booleans and None are typed, anything else is text.

    Examples
    --------
    >>> [parse_value(v) for v in ["5", "0.99", "None", "true", "s3://b/x"]]
    [5, 0.99, None, True, 's3://b/x']
    """
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def run_notebook(
    name: str, *, parameters: dict[str, Any] | None = None, results: str | Path = "results"
) -> Path:
    """Execute a notebook with papermill into ``results/``; its figures become PNG files.

    An unknown parameter name is an error (papermill itself only warns). Returns the executed
    notebook's path; figures are saved as ``results/<notebook>/<figure>.png``.
    """
    import papermill as pm

    source = resolve(name)
    parameters = dict(parameters or {})
    declared = pm.inspect_notebook(str(source))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise UsageError(
            f"unknown parameter(s) for {source.stem}: {', '.join(unknown)} "
            f"(known: {', '.join(declared)})"
        )
    out_dir = Path(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / source.name
    try:
        pm.execute_notebook(
            str(source),
            str(executed),
            parameters=parameters,
            cwd=str(Path.cwd()),  # relative parameters mean what they mean to the caller
            progress_bar=False,
            kernel_name="python3",
            language="python",
        )
    except pm.PapermillExecutionError as exc:
        raise P8Error(
            f"{source.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
            f"(executed notebook: {executed})"
        ) from None
    save_figures(executed, out_dir / source.stem)
    return executed


def save_figures(notebook: Path, folder: Path) -> list[Path]:
    """Write each PNG output that names its figure to ``folder/NAME.png``: outputs carrying
    ``{"p8_figure": NAME}`` (:mod:`p8lib.report`), and the first PNG of a cell tagged
    ``figure-NAME``."""
    cells = json.loads(notebook.read_text())["cells"]
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for cell in cells:
        tags = [t for t in cell.get("metadata", {}).get("tags", []) if t.startswith(FIGURE_TAG)]
        named = [
            (
                o.get("metadata", {}).get(FIGURE_KEY)
                or (tags[0][len(FIGURE_TAG) :] if tags else None),
                o,
            )
            for o in cell.get("outputs", [])
            if "image/png" in o.get("data", {})
        ]
        for name, output in named:
            path = folder / f"{name}.png"
            if name is None or path in saved:
                continue
            path.write_bytes(base64.b64decode(output["data"]["image/png"]))
            saved.append(path)
    return saved


def dirty_cells(notebook: Path) -> list[int]:
    """Indexes of code cells that carry outputs or an execution count."""
    cells = json.loads(notebook.read_text())["cells"]
    return [
        i
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m p8lib.notebook NOTEBOOK...``: fail when a notebook has outputs (for lint)."""
    import sys

    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    bad = {p: dirty_cells(p) for p in paths}
    for path, cells in bad.items():
        if cells:
            print(f"{path}: cells {cells} have outputs or execution counts; clear them first")
    return 1 if any(bad.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())

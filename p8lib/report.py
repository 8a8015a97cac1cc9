"""What the notebooks show of a run, in one call: ``report.show(result, spark=spark)``.

The views, in order: a grid of sample images, the first rows of the results, the explained
variance, the first two principal components, the counts and the time per stage. Each view is
also a function, for a notebook that shows them one cell at a time.

In Jupyter (IPython) :func:`show` displays each view as a heading and a figure or table; a
figure's output carries ``{"p8_figure": NAME}`` so :func:`p8lib.notebook.save_figures` saves it
as NAME.png.

EMR JupyterHub's PySpark kernel runs cells in Livy's plain Python REPL: no IPython, text back,
and a figure only through Livy's ``%matplot plt`` magic, which sends pyplot's current figure.
There a figure cell reads ``report.plot(report.explained_variance, result)`` then
``%matplot plt``. Imported under IPython, this module registers a ``%matplot`` line magic that
does the same, so those cells also run with papermill.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from p8lib import io, plots
from p8lib.artifacts import FIGURE_KEY, only_images, read_rows

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from pyspark.sql import DataFrame, SparkSession

    from p8lib.pipeline import RunResult


SCATTER_POINTS = 5_000  # the scatter plot's sample: enough to see the classes, never a table


def sample_images(
    spark: SparkSession,
    result: RunResult,
    *,
    n: int = 12,
    s3_endpoint: str | None = None,
    figure: plots.MakeFigure | None = None,
) -> Figure:
    """The first ``n`` images of the results (by path) with their labels: ``n`` rows read."""
    rows = _originals(spark, result).select("path", "label").orderBy("path").limit(n)
    images = [(io.read_file(r["path"], endpoint=s3_endpoint), r["label"]) for r in rows.collect()]
    return plots.image_grid_figure(images, figure=figure)


def _originals(spark: SparkSession, result: RunResult) -> DataFrame:
    """The results' rows of the images themselves (not the variants of ``p8 run --augment``)."""
    return only_images(read_rows(spark, result.parquet))


def first_rows(spark: SparkSession, result: RunResult, *, n: int = 5) -> pd.DataFrame:
    """The first ``n`` rows by path: path, label, features and pca_features (their first values
    and length, to read as text), error."""
    columns = ("path", "label", "features", "pca_features", "error")
    table = _originals(spark, result).select(*columns)
    rows: Any = table.orderBy("path").limit(n).toPandas()
    for column in ("features", "pca_features"):
        rows[column] = rows[column].map(_short)
    return rows


def _short(values: Any, shown: int = 3) -> str | None:
    """``[0.12, 0.00, 1.30, …] (1280)``: an array's first values and its length.

    Examples
    --------
    >>> _short([0.123, 0.0, 1.3, 2.0]), _short(None)
    ('[0.12, 0.00, 1.30, …] (4)', None)
    """
    if values is None:
        return None
    head = ", ".join(f"{v:.2f}" for v in list(values)[:shown])
    return f"[{head}{', …' if len(values) > shown else ''}] ({len(values)})"


def explained_variance(result: RunResult, *, figure: plots.MakeFigure | None = None) -> Figure:
    """Per component and cumulative; the threshold and the chosen k are marked."""
    pca = result.manifest.pca
    return plots.explained_variance_figure(
        np.array(pca.explained_variance),
        k=pca.k,
        threshold=pca.variance_threshold,
        figure=figure,
    )


def pca_scatter(
    spark: SparkSession,
    result: RunResult,
    *,
    points: int = SCATTER_POINTS,
    figure: plots.MakeFigure | None = None,
) -> Figure:
    """Featurized images on the first two principal components, coloured by label: all of
    them up to ``points``, else that many, spread over the table (the same ones each time)."""
    from pyspark.sql import functions as F

    table = _originals(spark, result).where(F.col("error").isNull())
    chosen = table.orderBy(F.xxhash64("path")).limit(points)
    rows: Any = chosen.select("label", F.slice("pca_features", 1, 2).alias("xy")).toPandas()
    xy = np.stack(rows["xy"]) if len(rows) else np.zeros((0, 2))
    return plots.pca_scatter_figure(xy, rows["label"].tolist(), figure=figure)


def counts(result: RunResult) -> pd.DataFrame:
    """Images featurized, reused and failed, and the seconds of each stage."""
    import pandas as pd

    values: dict[str, Any] = dict(vars(result.manifest.counts))
    values.update({f"seconds {k}": v for k, v in result.seconds.items()})
    return pd.DataFrame({"value": values})


def views(
    result: RunResult, *, spark: SparkSession, sample_size: int = 12, s3_endpoint: str | None = None
) -> Iterator[tuple[str, str, Callable[[], Any]]]:
    """(name, title, make) of each view, in the order the notebooks show them."""
    yield (
        "images",
        "Sample images",
        lambda: sample_images(spark, result, n=sample_size, s3_endpoint=s3_endpoint),
    )
    yield "rows", "Features (first rows)", lambda: first_rows(spark, result)
    yield "explained_variance", "Explained variance", lambda: explained_variance(result)
    yield "pca_scatter", "The first two principal components", lambda: pca_scatter(spark, result)
    yield "counts", "Counts and time per stage", lambda: counts(result)


def show(
    result: RunResult, *, spark: SparkSession, sample_size: int = 12, s3_endpoint: str | None = None
) -> None:
    """Display every view of :func:`views` in turn (see the module's docstring)."""
    for name, title, make in views(
        result, spark=spark, sample_size=sample_size, s3_endpoint=s3_endpoint
    ):
        _display(name, title, make())


def _display(name: str, title: str, view: Any) -> None:
    from matplotlib.figure import Figure

    try:
        from IPython.display import Image, Markdown, display
    except ImportError:  # a plain Python REPL: text only
        print(f"\n## {title}")
        print(view if not isinstance(view, Figure) else f"[figure {name}]")
        return
    display(Markdown(f"## {title}"))
    if isinstance(view, Figure):
        display(Image(plots.to_png(view)), metadata={FIGURE_KEY: name})
    else:
        display(view)


def plot(view: Callable[..., Figure], *args: Any, **kwargs: Any) -> None:
    """Draw a figure ``view`` (e.g. :func:`explained_variance`) as pyplot's current figure,
    the only one, for ``%matplot plt`` in the next line."""
    import matplotlib.pyplot as plt

    plt.close("all")
    view(*args, figure=plt.figure, **kwargs)


def _matplot(line: str) -> None:
    """``%matplot plt`` under IPython, as Livy does it: show ``plt.gcf()`` as a PNG."""
    from IPython import get_ipython
    from IPython.display import Image, display

    shell = get_ipython()
    name = line.strip() or "plt"
    figure = shell.user_ns[name].gcf()
    display(Image(plots.to_png(figure)))
    shell.user_ns[name].close(figure)  # shown once: not again by the inline backend


def _register_matplot() -> None:
    try:
        from IPython import get_ipython
    except ImportError:  # Livy's REPL: it has %matplot itself
        return
    shell = get_ipython()
    if shell is not None and "matplot" not in shell.magics_manager.magics["line"]:
        shell.register_magic_function(_matplot, "line", "matplot")


_register_matplot()

"""Matplotlib figures (object API: no pyplot state, no display backend needed).

Each function takes ``figure``, what makes the empty figure: ``Figure`` by default, or
``matplotlib.pyplot.figure`` to draw into pyplot's current figure (for Livy's ``%matplot plt``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MakeFigure = Callable[..., Any]


def _new(figure: MakeFigure | None, **size: Any) -> Figure:
    if figure is None:
        from matplotlib.figure import Figure

        figure = Figure
    made: Figure = figure(**size)
    return made


def explained_variance_figure(
    explained_variance: np.ndarray,
    *,
    k: int,
    threshold: float | None = None,
    figure: MakeFigure | None = None,
) -> Figure:
    """Per-component and cumulative explained variance, the threshold and the chosen k marked."""
    ratios = np.asarray(explained_variance, dtype=float)
    # Show the interesting part of a long tail: up to twice the chosen k.
    shown = ratios[: max(min(len(ratios), 2 * k), min(len(ratios), 10))]
    x = np.arange(1, len(shown) + 1)
    cumulative = np.cumsum(ratios)[: len(shown)]
    fig = _new(figure, figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    ax.bar(x, shown, color="tab:blue", alpha=0.6, label="per component")
    ax.plot(x, cumulative, color="tab:orange", marker=".", label="cumulative")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
    reached = float(np.sum(ratios[:k]))
    ax.axvline(k, color="tab:green", linestyle=":", label=f"k = {k} ({reached:.1%})")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    ax.set_ylim(0, 1.02)
    ax.set_title("PCA explained variance")
    ax.legend(loc="center right")
    fig.tight_layout()
    return fig


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def image_grid_figure(
    images: list[tuple[bytes, str]], *, columns: int = 6, figure: MakeFigure | None = None
) -> Figure:
    """A grid of images (encoded bytes) with their labels as titles."""
    from PIL import Image

    rows = max(1, -(-len(images) // columns))
    fig = _new(figure, figsize=(2 * columns, 2.2 * rows), dpi=100)
    for i, (content, label) in enumerate(images):
        ax = fig.add_subplot(rows, columns, i + 1)
        try:
            ax.imshow(Image.open(io.BytesIO(content)).convert("RGB"))
        except Exception:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def pca_scatter_figure(
    points: np.ndarray, labels: list[str], *, figure: MakeFigure | None = None
) -> Figure:
    """The first two PCA components, one colour per label."""
    from matplotlib import colormaps

    xy = np.asarray(points, dtype=float)[:, :2]
    classes = sorted(set(labels))
    cmap = colormaps["tab20"].resampled(max(len(classes), 1))
    fig = _new(figure, figsize=(8, 6), dpi=100)
    ax = fig.add_subplot()
    names = np.asarray(labels)
    for i, name in enumerate(classes):
        chosen = names == name
        ax.scatter(xy[chosen, 0], xy[chosen, 1], s=18, color=cmap(i), label=name)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("Images on the first two principal components")
    if len(classes) <= 20:
        ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    return fig


def confusion_cells(matrix: np.ndarray, n: int) -> list[tuple[int, int]]:
    """(true, predicted) indices of the ``n`` largest non-zero off-diagonal cells, largest
    first: the cells :func:`confusion_figure` shows.

    Examples
    --------
    >>> confusion_cells(np.array([[5, 2, 0], [0, 4, 3], [1, 0, 6]]), 2)
    [(1, 2), (0, 1)]
    """
    off = np.asarray(matrix).copy()
    np.fill_diagonal(off, 0)
    cells = [np.unravel_index(i, off.shape) for i in np.argsort(off, axis=None)[::-1][:n]]
    return [(int(t), int(p)) for t, p in cells if off[t, p] > 0]


def confusion_figure(
    matrix: np.ndarray,
    labels: list[str],
    *,
    cells: list[tuple[int, int]],
    figure: MakeFigure | None = None,
) -> Figure:
    """Heatmap of the classes in the confusions ``cells`` (true, predicted indices, largest
    first); rows: true class, columns: predicted.

    Cells show the share of each true class's images (row-normalized) and are annotated with
    counts; the diagonal stays visible so each confusion reads against the class's hits.
    """
    matrix = np.asarray(matrix)
    chosen: list[int] = []
    for t, p in cells:
        chosen += [i for i in (t, p) if i not in chosen]
    fig = _new(figure, figsize=(max(6, 0.45 * len(chosen) + 3), max(5, 0.4 * len(chosen) + 2.5)))
    ax = fig.add_subplot()
    if not chosen:
        ax.text(0.5, 0.5, f"no confusions: all {int(matrix.sum())} images right", ha="center")
        ax.axis("off")
        return fig
    sub = matrix[np.ix_(chosen, chosen)]
    support = np.maximum(matrix[chosen].sum(axis=1, keepdims=True), 1)
    share = sub / support
    image = ax.imshow(share, cmap="Reds", vmin=0, vmax=1)
    names = [labels[i] for i in chosen]
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for (r, c), count in np.ndenumerate(sub):
        if count:
            color = "white" if share[r, c] > 0.5 else "black"
            ax.text(c, r, str(count), ha="center", va="center", fontsize=6, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Top {len(cells)} confusions (share of true class)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig

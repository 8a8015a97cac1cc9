"""Matplotlib figures only (object API, no pyplot state, no display backend needed)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def explained_variance_figure(
    explained_variance: np.ndarray, *, k: int, threshold: float | None = None
) -> Figure:
    """Per-component and cumulative explained variance, the threshold and the chosen k marked."""
    from matplotlib.figure import Figure

    ratios = np.asarray(explained_variance, dtype=float)
    # Show the interesting part of a long tail: up to twice the chosen k.
    shown = ratios[: max(min(len(ratios), 2 * k), min(len(ratios), 10))]
    x = np.arange(1, len(shown) + 1)
    cumulative = np.cumsum(ratios)[: len(shown)]
    fig = Figure(figsize=(8, 4.5), dpi=100)
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

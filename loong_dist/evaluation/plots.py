"""PNG line charts for the curves people look at (loss per step, per-frame loss, PSNR against
training time), drawn with matplotlib's file-only Agg backend: no display, no server.

    line_chart({"plain": (steps, loss), "re-weighted": (steps, loss2)}, "run/loss.png",
               title="stage 2", xlabel="step", ylabel="loss")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike,
               title: str = "", xlabel: str = "", ylabel: str = "", hlines: Mapping[str, float] | None = None,
               logy: bool = False) -> Path:
    """One line per series {label: (xs, ys)}, dashed horizontal references {label: y}; written
    atomically to `path` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=label, marker="o" if len(xs) <= 30 else None, markersize=3)
    for label, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", linewidth=1, color="grey", label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) + len(hlines or {}) > 1:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """A matplotlib figure to `path` (PNG), laid out tightly and written atomically; closes it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path

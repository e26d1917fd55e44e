"""Side-by-side comparisons of evaluations under different models or settings, on the same prompts
or clips: what a claim such as "re-encoding keeps a long video on its prompt" is measured with.

    comparison = compare({"top-k 100": eval_a, "plain": eval_b}, first=16)   # generation_eval.json dicts
    comparison = compare({}, frames={"frame groups": frames_a, "token mean": frames_b})  # frames_eval.json
    plot_comparison(comparison, "comparison.png")

Generation evaluations (`jobs.evaluate generation`) are compared on the same prompts: each run's
first `first` videos are summarised again (`generation_quality.summarise`), and a run whose prompts
are not the first run's is refused, since such a comparison would measure the prompts. Frame
evaluations (`jobs.evaluate frames`) give the held-out teacher-forced loss per latent frame of the
object cells, still and moving, and the copy gain (a still object's frame-0 cost minus its later
frames'); they too must come from the same clips.

The plot: the match rate of each attribute, bars per run when the videos have one window, else one
panel per attribute against the window's start; and the loss per latent frame.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from loong_dist.data.synthetic import CHECKED
from loong_dist.errors import UserError
from loong_dist.evaluation.generation_quality import summarise
from loong_dist.evaluation.plots import save_figure

ATTRIBUTES = (*CHECKED, "all")
"""Match-rate columns of a generation comparison: each checked attribute, then all of them at once."""


def _generation(label: str, report: dict, first: int | None) -> tuple[list[str], dict]:
    videos = report.get("per_video")
    if not isinstance(videos, list) or not videos:
        raise UserError(f"compare: run {label!r} has no per_video rows (not a jobs.evaluate generation report)")
    videos = videos[:first] if first else videos
    if not all(v.get("alignment") for v in videos):
        raise UserError(f"compare: run {label!r} has videos without prompt attributes; nothing to compare")
    s = summarise(videos)
    return [v.get("prompt") or "" for v in videos], {
        "videos": len(videos), "per_window": s["alignment"]["per_window"], "drift": s["drift"],
        "settings": report.get("generate", {}), "source": report.get("videos_json", "")}


def _frames(label: str, report: dict) -> tuple[list[str], dict]:
    frames = report.get("frames")
    if not isinstance(frames, list) or not frames:
        raise UserError(f"compare: run {label!r} has no per-frame rows (not a jobs.evaluate frames report)")
    per = {g: [f[g]["loss"] if f[g]["tokens"] else None for f in frames] for g in ("still_object", "moving_object")}
    return [c.get("video", "") for c in report.get("per_clip", [])], {
        "clips": report.get("clips"), **per, "copy_gain": report.get("copy_gain"),
        "checkpoint": report.get("checkpoint", "")}


def compare(generation: dict[str, dict], frames: dict[str, dict] | None = None, first: int | None = None,
            title: str = "", verdict: str = "") -> dict:
    """{label: generation_eval.json} and {label: frames_eval.json}, in the order to show them ->
    the comparison (see the module docstring). Raises UserError naming the run whose prompts or
    clips differ from the first run's."""
    frames = frames or {}
    if not generation and not frames:
        raise UserError("compare: no run to compare (give at least one generation or frames evaluation)")
    out: dict = {"title": title, "verdict": verdict, "first": first, "attributes": list(ATTRIBUTES),
                 "generation": {}, "frames": {}}
    for kind, reports, read in (("generation", generation, lambda k, r: _generation(k, r, first)),
                                ("frames", frames, _frames)):
        reference = None
        for label, report in reports.items():
            keys, row = read(label, report)
            if reference is None:
                reference = (label, keys)
            elif keys != reference[1]:
                what = "prompts" if kind == "generation" else "clips"
                at = next((i for i, (a, b) in enumerate(zip(keys, reference[1])) if a != b),
                          min(len(keys), len(reference[1])))
                raise UserError(f"compare: run {label!r} was evaluated on other {what} than {reference[0]!r} "
                                f"({len(keys)} against {len(reference[1])}; they differ from #{at})")
            out[kind][label] = row
    return out


def plot_comparison(comparison: dict, path: str | os.PathLike) -> Path:
    """The comparison's picture (PNG, written atomically): see the module docstring."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    gen, frames = comparison["generation"], comparison["frames"]
    windows = max((len(r["per_window"]) for r in gen.values()), default=0)
    panels = ([("bars", None)] if windows == 1 else [("window", a) for a in ATTRIBUTES] if windows else [])
    panels += [("frames", None)] if frames else []
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    ratios = [2 if kind == "bars" else 1 for kind, _ in panels[:cols]]  # the bars' panel is twice as wide
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * sum(ratios), 3.4 * rows + 0.4), dpi=100, squeeze=False,
                             gridspec_kw={"width_ratios": ratios})
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (kind, attribute) in zip(axes.flat, panels):
        if kind == "bars":
            x, width = np.arange(len(ATTRIBUTES)), 0.8 / len(gen)
            for i, (label, r) in enumerate(gen.items()):
                ax.bar(x + (i - (len(gen) - 1) / 2) * width, [100 * r["per_window"][0][a] for a in ATTRIBUTES],
                       width, label=f"{label} ({r['videos']})")
            ax.set_xticks(x, ATTRIBUTES, fontsize=8)
            ax.set(ylabel="videos matching (%)", ylim=(0, 105), title="first window")
        elif kind == "window":
            for label, r in gen.items():
                ax.plot([w["start_s"] for w in r["per_window"]], [100 * w[attribute] for w in r["per_window"]],
                        marker="o", markersize=3, label=label)
            ax.set(title=attribute, xlabel="window from (s)", ylabel="matching (%)", ylim=(-5, 105))
        else:
            for i, (label, r) in enumerate(frames.items()):
                colour = f"C{i}"
                for group, style in (("still_object", "-"), ("moving_object", "--")):
                    ys = r[group]
                    ax.plot(range(len(ys)), ys, style, color=colour, marker="o", markersize=3,
                            label=f"{label}, {group.replace('_', ' ')}")
            ax.set(title="held-out loss of object cells", xlabel="latent frame", ylabel="nats per token")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, framealpha=0.6)
    if comparison.get("title"):
        fig.suptitle(textwrap.fill(comparison["title"], 110))
    return save_figure(fig, path)

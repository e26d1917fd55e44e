"""Per-latent-frame loss telemetry: the imbalance that Loong's loss re-weighting is about.

Each step's mean loss per latent-frame index (over the global batch) goes into metrics.jsonl as
`frame_loss` (null where the step's bucket has no such frame) and to TensorBoard as
`loss/frame_{i}`; at the end of a stage `plot_frame_losses` draws the curves into a PNG, so first-
frame loss can be read against later frames, with and without re-weighting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

# Colour per latent frame: first frame red, then a blue ramp; later frames reuse the last colour.
COLOURS = [(214, 39, 40), (31, 119, 180), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def read_frame_losses(metrics: str | Path) -> list[tuple[int, list[float | None]]]:
    """(step, per-frame mean loss) of every line of a metrics.jsonl that carries frame_loss."""
    out = []
    for line in Path(metrics).read_text().splitlines():
        row = json.loads(line)
        if row.get("frame_loss") is not None:
            out.append((int(row["step"]), row["frame_loss"]))
    return out


def frame_loss_summary(rows: Sequence[tuple[int, list[float | None]]], tail: float = 0.2) -> list[float | None]:
    """Mean loss per latent frame over the last `tail` share of the steps that saw that frame."""
    n = max((len(f) for _, f in rows), default=0)
    out: list[float | None] = []
    for i in range(n):
        seen = [f[i] for _, f in rows if i < len(f) and f[i] is not None]
        last = seen[-max(1, int(len(seen) * tail)):] if seen else []
        out.append(sum(last) / len(last) if last else None)
    return out


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for k, v in enumerate(values):
        acc += v
        if k >= window:
            acc -= values[k - window]
        out.append(acc / min(k + 1, window))
    return out


def plot_frame_losses(metrics: str | Path, png: str | Path, title: str, max_lines: int = 8) -> Path | None:
    """Draw the per-frame loss curves of a metrics.jsonl (moving averages) into `png`. Frames past
    `max_lines` - 1 are drawn as one curve: their mean."""
    rows = read_frame_losses(metrics)
    if not rows:
        return None
    n = max(len(f) for _, f in rows)
    series: list[tuple[str, list[tuple[int, float]]]] = []
    for i in range(min(n, max_lines - 1)):
        series.append((f"frame {i}", [(s, f[i]) for s, f in rows if i < len(f) and f[i] is not None]))
    if n > max_lines - 1:
        rest = []
        for s, f in rows:
            vals = [v for v in f[max_lines - 1:] if v is not None]
            if vals:
                rest.append((s, sum(vals) / len(vals)))
        series.append((f"frames {max_lines - 1}-{n - 1}", rest))
    series = [(name, pts) for name, pts in series if pts]

    w, h, left, right, top, bottom = 900, 520, 70, 230, 40, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    steps = [s for _, pts in series for s, _ in pts]
    window = max(1, len(rows) // 20)
    smoothed = [(name, [p[0] for p in pts], _smooth([p[1] for p in pts], window)) for name, pts in series]
    tails = [[v for _, v in pts[-max(1, len(pts) // 5):]] for _, pts in series]  # last 20% of each curve
    ys = [v for _, _, vals in smoothed for v in vals]
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = min(ys), max(ys)
    if math.isclose(y0, y1):
        y0, y1 = y0 - 0.5, y1 + 0.5

    def xy(step: float, loss: float) -> tuple[float, float]:
        return (left + (step - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (loss - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(5):
        v = y0 + (y1 - y0) * k / 4
        _, y = xy(x0, v)
        d.line([left - 4, y, left, y], fill="black")
        d.text((5, y - 6), f"{v:.3f}", fill="black")
    for k in range(5):
        s = x0 + (x1 - x0) * k / 4
        x, _ = xy(s, y0)
        d.line([x, h - bottom, x, h - bottom + 4], fill="black")
        d.text((x - 10, h - bottom + 8), f"{s:.0f}", fill="black")
    d.text((left, 12), f"{title}: mean loss per latent frame (moving average of {window} steps)", fill="black")
    d.text(((w - right) // 2, h - 18), "optimizer step", fill="black")
    for k, (name, xs, vals) in enumerate(smoothed):
        colour = COLOURS[min(k, len(COLOURS) - 1)]
        pts = [xy(s, v) for s, v in zip(xs, vals)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        else:
            d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=colour)
        last = sum(tails[k]) / len(tails[k])
        ly = top + 10 + 18 * k
        d.line([w - right + 15, ly + 6, w - right + 40, ly + 6], fill=colour, width=3)
        d.text((w - right + 48, ly), f"{name}: {last:.3f}" if last is not None else name, fill="black")
    d.text((w - right + 15, top + 18 * len(smoothed) + 20), "(value: mean of the", fill="gray")
    d.text((w - right + 15, top + 18 * len(smoothed) + 34), " last 20% of steps)", fill="gray")
    png = Path(png)
    img.save(png)
    return png


__all__ = ["frame_loss_summary", "plot_frame_losses", "read_frame_losses"]

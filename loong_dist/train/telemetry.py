"""Training telemetry: per-step logs, and the per-latent-frame loss that Loong's loss re-weighting
is about.

Each step's mean loss per latent-frame index (over the global batch) goes into metrics.jsonl as
`frame_loss` (null where the step's bucket has no such frame) and to TensorBoard as
`loss/frame_{i}`; at the end of a stage `plot_frame_losses` draws the curves into a PNG, so first-
frame loss can be read against later frames, with and without re-weighting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from loong_dist.evaluation.plots import line_chart
from loong_dist.io.run_folder import RunFolder


def rewind_logs(run: RunFolder, step: int, names: Sequence[str]) -> None:
    """A run's per-step JSON-lines logs (metrics.jsonl, eval.jsonl) as of `step`, the step it
    continues from, before it logs anything: each is fetched from the run folder (a new node
    continues the published file) and cut back to `step` (`_rewind_rows`); at step 0, a run with no
    checkpoint to resume, the rows of the one that died before its first are removed (its step-0
    evaluation included: it is logged again)."""
    for name in names:
        if step == 0:
            run.path(name).unlink(missing_ok=True)
        else:
            run.fetch(name)
            _rewind_rows(run.path(name), step)


def _rewind_rows(path: Path, step: int) -> None:
    """Keep the lines of a JSON-lines log up to `step`: a run killed after its last checkpoint
    logged steps that it will train again. Lines torn by the kill go too; the file is replaced whole."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except ValueError:
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


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
    `max_lines` - 1 are drawn as one curve: their mean. Each label carries the mean of the last 20%
    of that curve's steps."""
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
    window = max(1, len(rows) // 20)
    curves = {}
    for name, pts in series:
        if pts:
            tail = [v for _, v in pts[-max(1, len(pts) // 5):]]
            curves[f"{name}: {sum(tail) / len(tail):.3f}"] = ([p[0] for p in pts], _smooth([p[1] for p in pts], window))
    return line_chart(curves, png, title=f"{title}: mean loss per latent frame (moving average of {window} steps)",
                      xlabel="optimizer step", ylabel="loss (nats / token)")


__all__ = ["frame_loss_summary", "plot_frame_losses", "read_frame_losses"]

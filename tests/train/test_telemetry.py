"""Per-frame loss telemetry read back from metrics.jsonl: the summary against hand-computed means,
and the plot file."""

import json

from PIL import Image

from loong_dist.train.telemetry import frame_loss_summary, plot_frame_losses, read_frame_losses


def test_summary_and_plot(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0, "frame_loss": [5.0 - 0.1 * s, 1.0 - 0.01 * s] if s % 2 else [4.0 - 0.1 * s, None]}
            for s in range(1, 21)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps({"step": 21, "loss": 1.0}) + "\n")
    got = read_frame_losses(metrics)
    assert [s for s, _ in got] == list(range(1, 21))
    first, second = frame_loss_summary(got)
    # frame 0: the last 20% (4) of its 20 values: steps 17-20; frame 1: last 2 of its 10 (steps 17, 19)
    assert abs(first - (5.0 - 1.7 + 4.0 - 1.8 + 5.0 - 1.9 + 4.0 - 2.0) / 4) < 1e-9
    assert abs(second - (1.0 - 0.17 + 1.0 - 0.19) / 2) < 1e-9
    png = plot_frame_losses(metrics, tmp_path / "frame_loss.png", "stage")
    assert Image.open(png).size == (640, 360)

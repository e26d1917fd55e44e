"""Drift and alignment measures against hand-computed values and the synthetic renderer."""

import numpy as np
import pytest

from loong_dist.data.synthetic import attributes_for, render_clip
from loong_dist.evaluation.generation_quality import (alignment, code_histogram, colour_histogram, drift, entropy_bits,
                                                      motion, summarise, total_variation, window_bounds)


def solid(value, t=2, size=8):
    return np.full((t, size, size, 3), value, np.uint8)


def test_colour_distance_by_hand():
    black, white = colour_histogram(solid(0)), colour_histogram(solid(255))
    assert total_variation(black, black) == 0.0 and total_variation(black, white) == 1.0
    half = np.concatenate([solid(0, 1), solid(255, 1)])  # half the pixels black, half white
    assert total_variation(colour_histogram(half), black) == pytest.approx(0.5)
    assert colour_histogram(solid(40)).argmax() == (1 * 8 + 1) * 8 + 1  # 40 * 8 // 256 = 1 in each channel


def test_code_histogram_and_entropy_by_hand():
    h = code_histogram(np.array([[0, 1], [2, 3]]), 8)
    assert h.tolist() == [0.25] * 4 + [0.0] * 4 and entropy_bits(h) == pytest.approx(2.0)
    assert entropy_bits(code_histogram(np.zeros(10, np.int64), 8)) == 0.0


def test_motion_by_hand():
    frames = np.stack([solid(10, 1)[0], solid(20, 1)[0], solid(20, 1)[0]])
    assert motion(frames) == pytest.approx(5.0)  # differences 10 then 0
    assert motion(frames[:1]) == 0.0


def test_window_bounds():
    assert window_bounds(480, 8.0, 10.0) == [(i * 80, i * 80 + 80) for i in range(6)]
    assert window_bounds(65, 8.0, 4.0) == [(0, 32), (32, 65)]  # a 1-frame tail joins the window before
    assert window_bounds(50, 8.0, 4.0) == [(0, 32), (32, 50)]


def test_drift_of_a_still_video_is_zero_and_a_switch_is_seen():
    a = render_clip({**attributes_for(0, 0), "motion": "still", "speed": None}, 16, 64)
    b = np.concatenate([a[:8], solid(255, 8, 64)])  # half of the second window turns white
    rows = drift(np.concatenate([a, b]), fps=8.0, first_clip_frames=9, window_s=2.0)
    assert [r["start_s"] for r in rows] == [0.0, 2.0]
    assert rows[0]["colour_tv"] == 0.0 and rows[0]["motion"] == 0.0 and "code_tv" not in rows[0]
    white_share = colour_histogram(a)[-1]  # white pixels already in the first clip
    assert rows[1]["colour_tv"] == pytest.approx(0.5 * (1 - white_share))
    assert rows[1]["motion"] > 0


def test_alignment_on_rendered_clips():
    attrs = attributes_for(3, 1)
    frames = render_clip(attrs, 65, 64)
    rows = alignment(frames, attrs, fps=8.0, window_s=4.0)
    assert len(rows) == 2 and all(all(r["match"].values()) for r in rows)
    wrong = {**attrs, "colour": "green" if attrs["colour"] != "green" else "red"}
    assert alignment(frames, wrong, fps=8.0, window_s=8.0)[0]["match"]["colour"] is False
    summary = summarise([{"drift": drift(frames, 8.0, 17, 4.0), "alignment": rows},
                         {"drift": drift(frames[:20], 8.0, 17, 4.0)}])
    assert [w["videos"] for w in summary["drift"]] == [2, 1]
    assert summary["alignment"]["first_window"]["shape"] == 1.0 and summary["alignment"]["videos"] == 1

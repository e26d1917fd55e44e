"""On-screen text drawn over training clips: where it is, how it moves, and that a seed repeats it."""

import numpy as np
import pytest
import torch

from loong_dist.data.text_overlay import overlay_text

BLACK = np.zeros((9, 64, 64, 3), np.uint8)  # darkening a black clip leaves it black: only the text shows


def test_same_generator_same_text_and_the_input_is_kept():
    a = overlay_text(BLACK, np.random.default_rng(3))
    b = overlay_text(BLACK, np.random.default_rng(3))
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == BLACK.shape
    assert not BLACK.any()  # a new array
    assert not np.array_equal(a, overlay_text(BLACK, np.random.default_rng(4)))


@pytest.mark.parametrize("seed", range(4))
def test_static_text_stays_put(seed):
    out = overlay_text(BLACK, np.random.default_rng(seed), motion="static")
    assert out[0].any() and all(np.array_equal(f, out[0]) for f in out)


@pytest.mark.parametrize("seed", range(4))
def test_scrolling_text_moves_up_a_growing_whole_number_of_rows(seed):
    out = overlay_text(BLACK, np.random.default_rng(seed), motion="scroll").astype(int)
    shifts = []
    for i in range(1, len(out)):  # frame i is frame 0 moved up by some rows: find how many
        s = next(s for s in range(3 * i + 1) if np.array_equal(out[i][:64 - s], out[0][s:]))
        shifts.append(s)
    assert shifts == sorted(shifts) and shifts[-1] >= 4  # at least 0.5 px per frame over 8 frames


def test_fading_text_brightens_then_holds():
    out = overlay_text(BLACK, np.random.default_rng(0), motion="fade").astype(float)
    sums = out.sum(axis=(1, 2, 3))
    assert np.all(np.diff(sums) >= -1e-6) and sums[0] < 0.5 * sums[-1]
    assert np.array_equal(out[-1], out[len(out) // 2])  # full strength from the middle frame on


def test_over_a_picture_text_covers_part_of_it_and_the_rest_is_darkened_evenly():
    grey = np.full((9, 64, 64, 3), 120, np.uint8)
    for seed in range(8):
        out = overlay_text(grey, np.random.default_rng(seed), motion="static")
        values, counts = np.unique(out, return_counts=True)
        background = values[counts.argmax()]  # 120, or 120 x one darkening factor
        assert 18 <= background <= 120
        text = (out != background).any(-1)
        assert 0.005 < text.mean() < 0.5


def test_training_draws_put_text_on_a_share_and_keep_the_rest_as_without_text():
    from loong_dist.train.tokenizer_trainer import draw_clips

    bank = np.random.default_rng(0).integers(0, 256, (12, 5, 48, 48, 3), dtype=np.uint8)
    plain = draw_clips(bank, 8, [0, 7, 0], crop=32)
    texted = draw_clips(bank, 8, [0, 7, 0], crop=32, text_overlay=0.5)
    assert plain.shape == texted.shape == (8, 5, 32, 32, 3)
    same = [torch.equal(a, b) for a, b in zip(plain, texted)]
    assert 0 < sum(same) < 8  # the same clips, crops and flips; text on some of them
    assert not any(torch.equal(a, b) for a, b in zip(plain, draw_clips(bank, 8, [0, 7, 0], crop=32, text_overlay=1.0)))
    assert torch.equal(texted, draw_clips(bank, 8, [0, 7, 0], crop=32, text_overlay=0.5))


def test_an_unknown_motion_is_named():
    with pytest.raises(ValueError, match="motion='slide'"):
        overlay_text(BLACK, np.random.default_rng(0), motion="slide")

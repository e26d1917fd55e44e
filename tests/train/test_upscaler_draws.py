"""The upscaler's training draws (`draw_sequences`): every augmentation is applied to the input and
its target alike, the clean input is the area shrink of the target, all eight symmetries of the
square occur, and drawn text moves as one picture, a whole number of pixels a frame."""

import numpy as np

from loong_dist.data.upscaler_pairs import SCALE, shrink
from loong_dist.train.upscaler_trainer import draw_sequences

N, T, HR = 3, 5, 64


def _bank(seed=0):
    hr = np.random.default_rng(seed).integers(0, 256, (N, T, HR, HR, 3), dtype=np.uint8)
    return hr, shrink(hr)  # the "tokenizer" input is the shrink too: both kinds must match their target


def _symmetries(a):
    """The eight images of a (t, h, w, 3) under the dihedral group, as (name, array)."""
    out = []
    for turn in (False, True):
        b = a.transpose(0, 2, 1, 3) if turn else a
        for fy in (False, True):
            for fx in (False, True):
                c = b[:, ::-1] if fy else b
                out.append(((turn, fy, fx), c[:, :, ::-1] if fx else c))
    return out


def test_inputs_match_their_targets_under_every_augmentation():
    hr, lr = _bank()
    for share, text in ((0.0, 0.0), (0.5, 0.0), (1.0, 0.0), (0.5, 1.0), (1.0, 0.5)):
        x, y = draw_sequences(hr, lr, 16, [0, 7], 3, 8, share, text)
        assert x.shape == (16, 3, 8, 8, 3) and y.shape == (16, 3, 8 * SCALE, 8 * SCALE, 3)
        np.testing.assert_array_equal(shrink(y.numpy()), x.numpy())


def test_draws_are_crops_of_the_bank_and_cover_the_symmetries():
    hr, lr = _bank(1)
    x, y = draw_sequences(hr, lr, 64, [3, 1], 2, 8, 0.0)
    seen = set()
    for target in y.numpy():
        found = [name for i in range(N) for t0 in range(T - 1) for name, image in _symmetries(hr[i, t0:t0 + 2])
                 for oy in range(0, HR - 8 * SCALE + 1, SCALE) for ox in range(0, HR - 8 * SCALE + 1, SCALE)
                 if np.array_equal(image[:, oy:oy + 8 * SCALE, ox:ox + 8 * SCALE], target)]
        assert len(found) == 1, "each target is exactly one crop of one clip under one symmetry"
        seen.add(found[0])
    assert len(seen) == 8  # 64 draws over 8 equally likely symmetries: all of them
    # the draw is a function of its seed: a resumed run draws the same sequences
    x2, y2 = draw_sequences(hr, lr, 64, [3, 1], 2, 8, 0.0)
    assert np.array_equal(x.numpy(), x2.numpy()) and np.array_equal(y.numpy(), y2.numpy())


def _shift_between(a, b, most=8):
    """The (dy, dx) with b[y, x] == a[y - dy, x - dx] wherever both are in the frame, searched over
    whole pixels up to `most` along one axis; None if there is none."""
    h, w = a.shape[:2]
    for dy, dx in [(0, 0)] + [(s * d, 0) for d in range(1, most + 1) for s in (1, -1)] + \
            [(0, s * d) for d in range(1, most + 1) for s in (1, -1)]:
        if np.array_equal(b[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)],
                          a[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]):
            return dy, dx
    return None


def test_text_is_drawn_over_clean_draws_only_and_moves_as_one_picture():
    hr, _ = _bank(2)
    lr = 255 - shrink(hr)  # a "tokenizer" input unlike the clean shrink, so the two kinds tell apart
    (x0, y0), (x1, y1) = (tuple(a.numpy() for a in draw_sequences(hr, lr, 32, [5, 2], 3, 8, 0.5, text))
                          for text in (0.0, 1.0))
    clean = np.array([np.array_equal(shrink(t), s) for s, t in zip(x0, y0)])
    changed = np.array([not np.array_equal(a, b) for a, b in zip(y0, y1)])
    assert 0 < clean.sum() < len(clean)
    assert not changed[~clean].any()  # no text where the input is the tokenizer's: it could not show it
    assert changed[clean].mean() > 0.5  # text on the clean ones (a little of it may fall outside a crop)
    np.testing.assert_array_equal(x1[~clean], x0[~clean])  # the same clips, crops and symmetries as before
    np.testing.assert_array_equal(shrink(y1[clean]), x1[clean])  # the input is the shrink of the texted frames

    flat = np.full((N, 9, 4 * HR, 4 * HR, 3), 90, np.uint8)  # a still grey bank: what moves is the text
    _, y = draw_sequences(flat, shrink(flat), 48, [1, 1], 9, 32, 1.0, 1.0)
    moving, shown = 0, 0
    for clip in y.numpy():
        shown += (clip != 90).any()
        shifts = {_shift_between(a, b) for a, b in zip(clip[:-1], clip[1:]) if (a != 90).any() and (b != 90).any()}
        assert None not in shifts and len(shifts) <= 1, shifts  # one motion, every frame the same picture moved
        moving += shifts != {(0, 0)} and bool(shifts)
    assert shown > 0.75 * len(y) and 0 < moving < shown  # some text rolls or slides, some stands still

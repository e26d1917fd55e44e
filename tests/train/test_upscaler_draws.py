"""The upscaler's training draws (`draw_sequences`): every augmentation is applied to the input and
its target alike, the clean input is the area shrink of the target, and all eight symmetries of
the square occur."""

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
    for share in (0.0, 0.5, 1.0):
        x, y = draw_sequences(hr, lr, 16, [0, 7], 3, 8, share)
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

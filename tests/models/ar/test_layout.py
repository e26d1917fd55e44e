"""Vocabulary and sequence layout, on a hand-computed case."""

import numpy as np
import pytest

from loong_dist.models.ar.layout import IGNORE, VocabLayout


def test_hand_computed_sequence():
    layout = VocabLayout(text_vocab_size=10, codebook_size=4, vocab_multiple=8)
    assert (layout.video_offset, layout.vocab_size, layout.padded_vocab_size) == (10, 14, 16)
    codes = np.array([[[0, 1]], [[2, 3]]])  # 2 latent frames of 1x2 codes
    s = layout.build([7, 8], codes)       # BOS added
    # full sequence: <s>=2 7 8 <bov>=4 10 11 12 13 <eov>=5
    assert s["tokens"].tolist() == [2, 7, 8, 4, 10, 11, 12, 13]
    assert s["targets"].tolist() == [IGNORE, IGNORE, IGNORE, 10, 11, 12, 13, 5]
    assert s["frame"].tolist() == [-1, -1, -1, 0, 0, 1, 1, 2]
    assert layout.sequence_length(2, 2, 2) == 9
    assert layout.tokens_to_video(np.array([10, 13])).tolist() == [0, 3]


def test_bad_codes():
    layout = VocabLayout(text_vocab_size=10, codebook_size=4)
    with pytest.raises(ValueError, match="outside"):
        layout.build([2], np.array([[[4]]]))
    with pytest.raises(ValueError, match=r"\(frames, h, w\)"):
        layout.build([2], np.array([1, 2]))
    with pytest.raises(ValueError, match="outside the video range"):
        layout.tokens_to_video(np.array([3]))


def test_kept_codes_hand_computed():
    """Levels (3, 2): code = d0 + 3 d1 on the grid d0 in {-1, 0, 1}, d1 in {-1, 1}. Kept: 0 (-1, -1),
    4 (0, 1) and 5 (1, 1), tokens 10, 11, 12; every other code takes the nearest kept one's token."""
    layout = VocabLayout(text_vocab_size=10, codebook_size=6, vocab_multiple=8, codes=(0, 4, 5), fsq_levels=(3, 2))
    assert (layout.video_vocab_size, layout.vocab_size, layout.padded_vocab_size) == (3, 13, 16)
    assert layout.video_to_tokens(np.array([0, 4, 5])).tolist() == [10, 11, 12]
    assert layout.tokens_to_video(np.array([10, 11, 12])).tolist() == [0, 4, 5]
    grid = {0: (-1, -1), 1: (0, -1), 2: (1, -1), 3: (-1, 1), 4: (0, 1), 5: (1, 1)}
    for code, (x, y) in grid.items():  # brute force: nearest kept code, ties to the lower id
        dist = [((x - grid[k][0]) ** 2 + (y - grid[k][1]) ** 2, k) for k in (0, 4, 5)]
        want = (0, 4, 5).index(min(dist)[1])
        assert layout.video_to_tokens(np.array([code]))[0] == 10 + want, code
    s = layout.build([7], np.array([[[5, 0]]]))
    assert s["tokens"].tolist() == [2, 7, 4, 12, 10] and s["targets"].tolist()[-2:] == [10, 5]
    with pytest.raises(ValueError, match="outside the video range"):
        layout.tokens_to_video(np.array([13]))


def test_kept_codes_survive_json_and_are_checked():
    import dataclasses
    import json
    layout = VocabLayout(text_vocab_size=10, codebook_size=6, codes=(0, 4, 5), fsq_levels=(3, 2))
    again = VocabLayout(**json.loads(json.dumps(dataclasses.asdict(layout))))
    assert again == layout and again.codes == (0, 4, 5)
    assert VocabLayout(text_vocab_size=10, codebook_size=6) != layout
    with pytest.raises(ValueError, match="ascending"):
        VocabLayout(text_vocab_size=10, codebook_size=6, codes=(4, 0), fsq_levels=(3, 2))
    with pytest.raises(ValueError, match="fsq_levels"):
        VocabLayout(text_vocab_size=10, codebook_size=6, codes=(0, 4))


def test_nearest_codes_on_the_tokenizer_grid_against_brute_force():
    from loong_dist.models.ar.layout import fsq_grid, nearest_codes
    levels = (8, 5, 5)
    rng = np.random.default_rng(0)
    kept = np.sort(rng.choice(200, 37, replace=False))
    table = nearest_codes(kept, levels, chunk=17)
    grid = fsq_grid(np.arange(200), levels)
    for code in range(200):
        d = ((grid[kept] - grid[code]) ** 2).sum(1)
        assert d[table[code]] == pytest.approx(d.min()), code
    assert (table[kept] == np.arange(len(kept))).all()


def test_code_levels_are_the_quantizers_levels():
    from loong_dist.models.tokenizer.quantizer import FSQ
    import torch

    levels = (8, 8, 8, 5, 5, 5)
    codes = (0, 7, 512, 3000, 40000, 63999)
    layout = VocabLayout(text_vocab_size=20, codebook_size=64000, codes=codes, fsq_levels=levels)
    table = layout.code_levels()
    assert table.shape == (layout.padded_vocab_size, 6)
    assert not table[:layout.video_offset].any() and not table[layout.vocab_size:].any()
    # The quantizer's own value of each code on each dimension, in [-1, 1], back to a level index.
    values = FSQ(list(levels)).codes_from_ids(torch.tensor(codes).view(-1, 1, 1, 1))[..., 0, 0, 0]  # (n, d)
    index = torch.round((values + 1) / 2 * (torch.tensor(levels) - 1)).long().numpy()
    first = 1 + np.cumsum((0,) + levels[:-1])  # each dimension's levels after the ones before it
    np.testing.assert_array_equal(table[20:26], index + first)
    assert table.max() == sum(levels)
    with pytest.raises(ValueError, match="fsq_levels"):
        VocabLayout(text_vocab_size=20, codebook_size=64).code_levels()

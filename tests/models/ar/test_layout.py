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

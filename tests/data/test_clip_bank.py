"""The tokenizer's clip bank: shares per source, and the counts they round to."""

import numpy as np

from loong_dist.data.clip_bank import build_clip_bank, split_counts
from loong_dist.data.manifest import ManifestEntry
from loong_dist.io.video import write_mp4


def test_split_counts_adds_up_by_largest_remainder():
    assert split_counts(10, [0.85, 0.15]) == [9, 1]  # 8.5 / 1.5: the tie goes to the first
    assert split_counts(7, [1, 1, 1]) == [3, 2, 2]
    assert split_counts(5, [1, 0]) == [5, 0]
    assert sum(split_counts(512, [0.85, 0.15])) == 512


def test_bank_takes_each_source_share(tmp_path):
    # Two sources of flat colour videos: a clip's colour tells which source it came from.
    def source(name, colour, n):
        entries = []
        for i in range(n):
            path = tmp_path / f"{name}{i}.mp4"
            write_mp4(path, np.full((9, 32, 32, 3), colour, np.uint8), fps=8)
            entries.append(ManifestEntry(video=str(path), caption=name))
        return entries

    red, blue = source("red", (220, 20, 20), 3), source("blue", (20, 20, 220), 1)
    bank = build_clip_bank([red, blue], 8, 5, 8.0, 32, seed=0, shares=[0.75, 0.25])
    from_red = (bank[:, 0, 16, 16, 0] > 128).sum()
    assert bank.shape == (8, 5, 32, 32, 3) and from_red == 6
    flat = build_clip_bank(red + blue, 8, 5, 8.0, 32, seed=0)  # round-robin over the 4 entries
    assert (flat[:, 0, 16, 16, 0] > 128).sum() == 6
    mostly_blue = build_clip_bank([red, blue], 8, 5, 8.0, 32, seed=0, shares=[1, 3])
    assert (mostly_blue[:, 0, 16, 16, 0] > 128).sum() == 2

"""Sampling functions against hand-computed cases."""

import math

import pytest
import torch

from loong_dist.inference.sampling import guide, restrict, sample, split_guided, top_p_filter, video_range
from loong_dist.models.ar.layout import VocabLayout

INF = float("-inf")


def test_guidance_by_hand():
    c, u = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[1.0, 1.0, -1.0]])
    # u + 3 (c - u) = [1 + 3, 1 - 3, -1 + 0]
    assert guide(c, u, 3.0).tolist() == [[4.0, -2.0, -1.0]]
    assert guide(c, u, 1.0).tolist() == c.tolist()
    assert guide(c, u, 0.0).tolist() == u.tolist()
    both = torch.cat([c, c + 1, u, u * 2])  # rows: cond 0, cond 1, uncond 0, uncond 1
    # 2c - u: row 0 [4 - 1, 0 - 1, -2 + 1]; row 1 (c + 1 = [3, 1, 0], 2u = [2, 2, -2]) [6 - 2, 2 - 2, 0 + 2]
    assert split_guided(both, 2.0).tolist() == [[3.0, -1.0, -1.0], [4.0, 0.0, 2.0]]


def test_restrict_to_video_codes():
    layout = VocabLayout(text_vocab_size=6, codebook_size=3, vocab_multiple=4)  # video ids 6, 7, 8; padded to 12
    lo, hi, extra = video_range(layout)
    out = restrict(torch.zeros(1, 12), lo, hi, extra)
    assert [i for i in range(12) if out[0, i] == 0] == [6, 7, 8]
    lo, hi, extra = video_range(layout, allow_eov=True)
    out = restrict(torch.zeros(1, 12), lo, hi, extra)
    assert [i for i in range(12) if out[0, i] == 0] == [5, 6, 7, 8]


def test_top_k_by_hand():
    x = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.5]]).expand(20000, 5)
    draws = sample(x, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    # only ids 1 and 4, in the ratio e^3 : e^2.5
    freq = torch.bincount(draws, minlength=5).float() / 20000
    p1 = 1 / (1 + math.exp(-0.5))
    torch.testing.assert_close(freq, torch.tensor([0.0, p1, 0.0, 0.0, 1 - p1]), atol=0.015, rtol=0)
    assert freq[[0, 2, 3]].sum() == 0


def test_top_k_then_top_p_by_hand():
    # softmax over the top 3 of log([0.05, 0.5, 0.25, 0.15, 0.05]) is [0.5, 0.25, 0.15] / 0.9;
    # top_p 0.7 keeps 0.556 + 0.278 (the second crosses 0.7)
    x = torch.tensor([[0.05, 0.5, 0.25, 0.15, 0.05]]).log().expand(20000, 5)
    draws = sample(x, 1.0, top_k=3, top_p=0.7, generator=torch.Generator().manual_seed(2))
    freq = torch.bincount(draws, minlength=5).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.0, 2 / 3, 1 / 3, 0.0, 0.0]), atol=0.015, rtol=0)


def test_top_p_by_hand():
    probs = torch.tensor([[0.1, 0.5, 0.25, 0.15]])
    x = probs.log()
    # sorted: 0.5, 0.25, 0.15, 0.1; mass before each: 0, 0.5, 0.75, 0.9
    kept = lambda p: [i for i in range(4) if top_p_filter(x, p)[0, i] > INF]  # noqa: E731
    assert kept(0.5) == [1]           # 0.5 alone reaches 0.5
    assert kept(0.6) == [1, 2]        # 0.5 < 0.6: the next one crosses it
    assert kept(0.8) == [1, 2, 3]
    assert kept(1.0) == [0, 1, 2, 3]
    assert kept(0.01) == [1]          # the most likely id is always kept


def test_temperature_zero_is_argmax_and_temperature_scales():
    x = torch.tensor([[0.0, 1.0, 0.5], [2.0, -1.0, 0.0]])
    assert sample(x, temperature=0).tolist() == [1, 0]
    # temperature 0.5 doubles the logits: with 20,000 draws the frequencies follow softmax(2x)
    g = torch.Generator().manual_seed(0)
    draws = sample(x[:1].expand(20000, 3), temperature=0.5, generator=g)
    freq = torch.bincount(draws, minlength=3).float() / 20000
    expect = torch.tensor([math.exp(0), math.exp(2), math.exp(1)])
    torch.testing.assert_close(freq, expect / expect.sum(), atol=0.015, rtol=0)


def test_top_k_sampling_never_leaves_the_top_k():
    x = torch.tensor([[0.0, 1.0, 0.9, 0.8, 5.0]]).expand(5000, 5)
    draws = sample(x, temperature=2.0, top_k=3, generator=torch.Generator().manual_seed(1))
    assert set(draws.tolist()) == {1, 2, 4}


def test_seeded_sampling_is_reproducible():
    x = torch.randn(8, 100, generator=torch.Generator().manual_seed(0))
    a = sample(x, 1.0, 20, 0.9, torch.Generator().manual_seed(7))
    b = sample(x, 1.0, 20, 0.9, torch.Generator().manual_seed(7))
    c = sample(x, 1.0, 20, 0.9, torch.Generator().manual_seed(8))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


@pytest.mark.parametrize("k,p", [(1, 1.0), (0, 1e-6)])
def test_k1_and_tiny_p_are_greedy(k, p):
    x = torch.randn(16, 50, generator=torch.Generator().manual_seed(3))
    assert sample(x, 1.0, k, p, torch.Generator().manual_seed(0)).tolist() == x.argmax(-1).tolist()

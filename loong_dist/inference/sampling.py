"""Next-token sampling as pure functions over logits (no model, no state).

    logits = guide(cond, uncond, scale)            # classifier-free guidance
    logits = restrict(logits, lo, hi)              # video codes only
    ids = sample(logits, temperature, top_k, top_p, generator)

Order, as in LlamaGen: guidance on raw logits, then the vocabulary restriction, then temperature,
then top-k, then top-p, then one multinomial draw from a seeded `torch.Generator` (temperature 0
is argmax). Loong's remedy for error accumulation over a minute of tokens is temperature with a
small top-k rather than plain multinomial sampling.

Notation: b rows, v vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from loong_dist.models.ar.layout import VocabLayout


def guide(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: u + scale * (c - u). cond, uncond: (b, v). scale 1: cond alone;
    0: uncond alone; above 1 pushes away from the unconditional prediction."""
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


def split_guided(logits: Tensor, scale: float) -> Tensor:
    """Logits (2b, v) with the conditional rows first and the unconditional rows after them (one
    batch through the model) -> guided (b, v)."""
    cond, uncond = logits.chunk(2, dim=0)
    return guide(cond, uncond, scale)


def restrict(logits: Tensor, lo: int, hi: int, extra: tuple[int, ...] = ()) -> Tensor:
    """-inf outside ids [lo, hi) (and the ids in `extra`): (b, v) -> (b, v). Keeps the padded
    vocabulary, text and specials from ever being drawn where the layout wants a video code."""
    allowed = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    allowed[lo:hi] = True
    for i in extra:
        allowed[i] = True
    return logits.masked_fill(~allowed, float("-inf"))


def video_range(layout: VocabLayout, allow_eov: bool = False) -> tuple[int, int, tuple[int, ...]]:
    """(lo, hi, extra) of `restrict` for a video position: the codebook, plus <eov> when the
    number of frames is left to the model."""
    return layout.video_offset, layout.vocab_size, (layout.eov_id,) if allow_eov else ()


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus: keep the smallest set of largest-probability ids whose mass reaches p (the id
    that crosses p is kept), -inf elsewhere. p >= 1: unchanged."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the ids ranked above each one
    drop_sorted = before >= p              # the first id is never dropped (before = 0 < p)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> Tensor:
    """(b, v) logits -> (b,) int64 ids. temperature 0: argmax (greedy). top_k: draw among the k
    largest logits only (0 or >= v: all; ties at the k-th value are broken by torch.topk), then
    top_p within them. With top-k the softmax and the draw run over k values, not the whole
    vocabulary (at 64,000 codes a draw over all of them cost about 1 ms on CPU)."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        values, ids = torch.topk(logits, top_k, dim=-1)  # (b, k), largest first
        pick = torch.multinomial(top_p_filter(values, top_p).softmax(dim=-1), 1, generator=generator)  # (b, 1)
        return ids.gather(-1, pick)[:, 0]
    probs = top_p_filter(logits, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]

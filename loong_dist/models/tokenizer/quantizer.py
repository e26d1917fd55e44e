"""Finite scalar quantization (FSQ, Mentzer et al. 2023): the tokenizer's discrete bottleneck.

Why FSQ and not the paper's clustering VQ. Loong reports a VQ codebook kept alive by
re-clustering; FSQ gets the same thing (a fixed set of discrete codes, one id per latent
position) with no codebook to learn: each of the d latent channels is squashed into [0, L_i - 1]
and rounded, and the id is the mixed-radix number of the d rounded values. So there is no
codebook collapse or dead codes to revive, no commitment or codebook loss, no k-means pass, and
nothing that needs synchronising across data-parallel ranks; gradients pass the rounding
straight through. Peers that chose it: Cosmos DV tokenizers. The default levels
[8, 8, 8, 5, 5, 5] give 64,000 codes.

The one failure seen with FSQ on this project (DESIGN.md): the values entering FSQ grew to about
50, saturated tanh, the gradient vanished and the model collapsed to the mean image. The encoder
normalises before its final projection, and `bound_penalty` (returned as an auxiliary loss for
the trainer to add with a weight) pulls values beyond |z| > 2 back: for levels up to 16, |z| = 2
already rounds to the outermost level, so the penalty never fights a value the codes can use.

Notation: b batch, d latent channels (one per level), t latent frames, h, w latent height, width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BOUND = 2.0
"""|z| beyond which `bound_penalty` starts (tanh(2) = 0.964: the outer level for levels <= 16)."""


class FSQ(nn.Module):
    """z (b, d, t, h, w) float -> codes (b, d, t, h, w) in [-1, 1] and ids (b, t, h, w) int64."""

    def __init__(self, levels: list[int]):
        super().__init__()
        self.levels_list = list(levels)
        basis = [math.prod(levels[:i]) for i in range(len(levels))]
        shape = (1, len(levels), 1, 1, 1)
        # Not saved: rebuilt from the config, so a checkpoint holds learned weights only.
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.int64).view(shape), persistent=False)

    @property
    def dim(self) -> int:
        return len(self.levels_list)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels_list)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes with a straight-through gradient, ids, bound penalty); always in float32."""
        z = z.float()
        top = self.levels - 1
        u = (torch.tanh(z) + 1) * (top / 2)  # (b, d, t, h, w) in [0, L - 1]
        index = torch.round(u)
        u = u + (index - u).detach()  # value of the rounding, gradient of the identity
        codes = u * (2 / top) - 1
        ids = (index.long() * self.basis).sum(dim=1)  # (b, t, h, w)
        return codes, ids, bound_penalty(z)

    def codes_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (b, t, h, w) -> codes (b, d, t, h, w) in [-1, 1], the inverse of `forward`'s ids."""
        index = (ids.long().unsqueeze(1) // self.basis) % self.levels.long()  # (b, d, t, h, w)
        return index.float() * (2 / (self.levels - 1)) - 1


def bound_penalty(z: torch.Tensor, bound: float = BOUND) -> torch.Tensor:
    """Mean of relu(|z| - bound)^2: zero while FSQ's tanh is in its useful range."""
    return torch.relu(z.abs() - bound).square().mean()


def code_usage(ids: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """How much of the codebook a batch of ids uses: share of codes seen at least once, and the
    perplexity exp(entropy) of the id histogram (codebook_size when all codes are equally used)."""
    counts = torch.bincount(ids.reshape(-1).long().cpu(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"used": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())}

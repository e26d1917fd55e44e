"""Upscaler quality on held-out pairs (loong_dist.data.upscaler_pairs), against bicubic on the same
inputs. Shared by the training job's periodic evaluation and `jobs.evaluate upscaler`.

For each input kind - "clean" (the real frames shrunk 4x) and "tokenizer" (the video tokenizer's
reconstruction of those, what generation hands the upscaler) - both the upscaler and bicubic
upsampling make a 4x video, scored against the real frames:
  - psnr, ssim: `video_metrics` (PSNR over the whole clip, SSIM per frame and channel);
  - flicker: how far the output's frame-to-frame changes are from the real ones, the mean
    |(y_t - y_{t-1}) - (g_t - g_{t-1})| over pixels and channels, in 8-bit levels (0: the real
    motion exactly; a method that flickers, or freezes, scores higher).

From tokenizer output two more scores say how much of the gap to the real frames is the tokenizer's:
  - input_psnr: the tokenizer's output against the clean frames it was given, at low resolution;
  - clean_correction_psnr (and _gain over bicubic): bicubic of the tokenizer's output plus what the
    model adds to bicubic from clean input (ours - bicubic, clean). That is what the model would gain
    from tokenizer output if the tokenizer kept every detail the model reads; a larger gain asks the
    model to repair the tokenizer's own error as well.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from loong_dist.evaluation.video_metrics import psnr, ssim
from loong_dist.models.upscaler import VideoUpscaler

INPUTS = {"clean": "clean", "tokenizer": "tok"}
"""Input kind -> the pair's array holding it."""


def bicubic_upscale(video: np.ndarray, scale: int = 4) -> np.ndarray:
    """uint8 (T, h, w, 3) -> uint8 (T, s h, s w, 3): bicubic (a = -0.75, torch's), clamped and rounded."""
    x = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).float()  # (T, 3, h, w)
    y = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def flicker(video: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute difference between the frame-to-frame changes of `video` and of `truth`,
    uint8 (T, H, W, 3) each, in 8-bit levels (0 for a single frame)."""
    if video.shape != truth.shape:
        raise ValueError(f"shapes differ: {video.shape} vs {truth.shape}")
    if len(video) < 2:
        return 0.0
    a, b = video.astype(np.int16), truth.astype(np.int16)
    return float(np.abs(np.diff(a, axis=0) - np.diff(b, axis=0)).mean())


def scores(video: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {"psnr": psnr(truth, video), "ssim": ssim(truth, video), "flicker": flicker(video, truth)}


def evaluate_pairs(model: VideoUpscaler, pairs: list[dict], chunk_frames: int = 16) -> dict:
    """Score the upscaler and bicubic on every pair, from both inputs.

    Returns {"clean": {...}, "tokenizer": {...}} means over the clips - psnr, ssim, flicker (ours)
    and bicubic_psnr, bicubic_ssim, bicubic_flicker, psnr_gain (ours - bicubic, dB); from tokenizer
    output also input_psnr, clean_correction_psnr and clean_correction_gain (the module's doc) - plus
    "by_size" (the same means over the clips of each target size, {"512": {"clips": n, "clean":
    ..., "tokenizer": ...}}: 512 is what generation's 128 px videos become), "per_clip" (the same
    per clip and input) and "outputs" ({kind: [ours uint8 (T, H, W, 3)]}, bicubic's beside it as
    "bicubic")."""
    was_training = model.training
    model.eval()
    per_clip: list[dict] = [{"video": p["video"], "source": p["source"], "start": p["start"], "size": p["size"]}
                            for p in pairs]
    outputs: dict = {"ours": {}, "bicubic": {}}
    for kind, key in INPUTS.items():
        ours_all, ref_all = [], []
        for row, p in zip(per_clip, pairs):
            ours = model.upscale(torch.from_numpy(np.ascontiguousarray(p[key]))[None], chunk_frames)[0].numpy()
            ref = bicubic_upscale(p[key])
            o, r = scores(ours, p["hr"]), scores(ref, p["hr"])
            row[kind] = {**o, **{f"bicubic_{k}": v for k, v in r.items()}, "psnr_gain": o["psnr"] - r["psnr"]}
            ours_all.append(ours)
            ref_all.append(ref)
        outputs["ours"][kind], outputs["bicubic"][kind] = ours_all, ref_all
    for i, (row, p) in enumerate(zip(per_clip, pairs)):
        correction = outputs["ours"]["clean"][i].astype(np.int16) - outputs["bicubic"]["clean"][i]
        corrected = np.clip(outputs["bicubic"]["tokenizer"][i] + correction, 0, 255).astype(np.uint8)
        tok = row["tokenizer"]
        tok["input_psnr"] = psnr(p["clean"], p["tok"])
        tok["clean_correction_psnr"] = psnr(p["hr"], corrected)
        tok["clean_correction_gain"] = tok["clean_correction_psnr"] - tok["bicubic_psnr"]
    summary = {kind: _means([r[kind] for r in per_clip]) for kind in INPUTS}
    by_size = {}
    for size in sorted({r["size"] for r in per_clip}, reverse=True):
        rows = [r for r in per_clip if r["size"] == size]
        by_size[str(size)] = {"clips": len(rows), **{kind: _means([r[kind] for r in rows]) for kind in INPUTS}}
    model.train(was_training)
    return {**summary, "by_size": by_size, "per_clip": per_clip, "outputs": outputs}


def _means(rows: list[dict]) -> dict[str, float]:
    """The mean of each score over rows of scores ({} for no rows)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


def side_by_side(bicubic: np.ndarray, ours: np.ndarray, truth: np.ndarray, gutter: int = 4) -> np.ndarray:
    """uint8 (T, H, W, 3) x 3 -> (T, H, 3W + 2 gutter, 3): bicubic | ours | original, white gutters."""
    t, h = truth.shape[:2]
    white = np.full((t, h, gutter, 3), 255, np.uint8)
    return np.concatenate([bicubic, white, ours, white, truth], axis=2)


def stack_rows(rows: list[np.ndarray], gutter: int = 4) -> np.ndarray:
    """Images (..., H_i, W_i, 3) one under the other, padded white on the right to the widest, with
    white gutters between them."""
    width = max(r.shape[-2] for r in rows)
    lead = rows[0].shape[:-3]
    out = []
    for i, r in enumerate(rows):
        pad = [(0, 0)] * len(lead) + [(0, 0), (0, width - r.shape[-2]), (0, 0)]
        out.append(np.pad(r, pad, constant_values=255))
        if i + 1 < len(rows):
            out.append(np.full((*lead, gutter, width, 3), 255, np.uint8))
    return np.concatenate(out, axis=-3)


def centre_crop(video: np.ndarray, side: int) -> np.ndarray:
    """The centred side x side window of uint8 (..., H, W, 3) (the whole frame when smaller)."""
    h, w = video.shape[-3:-1]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return video[..., top:top + side, left:left + side, :]

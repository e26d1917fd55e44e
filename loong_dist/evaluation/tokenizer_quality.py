"""Tokenizer quality on uint8 clips: reconstruction through the uint8 API, scored against the
bilinear reference, plus codebook use. Shared by the training job's periodic evaluation and
`jobs.evaluate tokenizer`."""

from __future__ import annotations

import numpy as np
import torch

from loong_dist.evaluation.video_metrics import bilinear_reference, psnr, ssim
from loong_dist.models.tokenizer import VideoTokenizer
from loong_dist.models.tokenizer.quantizer import code_usage


def evaluate_clips(model: VideoTokenizer, clips: np.ndarray, batch: int = 4) -> dict:
    """Encode/decode uint8 clips (N, T, H, W, 3): per-clip PSNR/SSIM, the bilinear reference, code use."""
    was_training = model.training
    model.eval()
    recons, ids = [], []
    for i in range(0, len(clips), batch):
        x = torch.from_numpy(np.ascontiguousarray(clips[i:i + batch]))
        code = model.encode(x)
        ids.append(code)
        recons.append(model.decode(code).cpu().numpy())
    model.train(was_training)
    recon = np.concatenate(recons)
    per_clip = [{"psnr": psnr(c, r), "ssim": ssim(c, r), "ref_psnr": psnr(c, bilinear_reference(c))}
                for c, r in zip(clips, recon)]
    usage = code_usage(torch.cat(ids), model.codebook_size)
    means = {k: float(np.mean([p[k] for p in per_clip])) for k in ("psnr", "ssim", "ref_psnr")}
    return {**means, **usage, "per_clip": per_clip, "recon": recon}

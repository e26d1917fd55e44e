"""A generated video written again 4x larger by the video upscaler, streamed: the upscaler runs
`chunk_frames` frames at a time (its state carried across chunks, so there are no seams) and each
chunk goes straight into the mp4 encoder, so a minute of 512 px video is never in memory whole -
only the 128 px frames the generator returns and one chunk of upscaled ones.

    info = write_upscaled(upscaler, frames, "video_x4.mp4", fps=8, chunk_frames=16, strip="video_x4.png")
"""

from __future__ import annotations

import os
import time

import numpy as np
from PIL import Image

from loong_dist.io.video import Mp4Writer, frame_strip
from loong_dist.models.upscaler import VideoUpscaler


def write_upscaled(upscaler: VideoUpscaler, frames: np.ndarray, path: str | os.PathLike, fps: float,
                   chunk_frames: int = 16, strip: str | os.PathLike | None = None, strip_frames: int = 8) -> dict:
    """Upscale uint8 (T, H, W, 3) into an mp4 at `path` (and a PNG strip of `strip_frames` frames,
    as jobs.generate draws them, at `strip`). Returns {"size": [4H, 4W], "upscale_s": seconds}."""
    t = len(frames)
    picked = set(np.linspace(0, t - 1, num=min(strip_frames, t)).round().astype(int).tolist())  # frame_strip's
    kept, done, t0 = [], 0, time.perf_counter()
    with Mp4Writer(path, fps=fps) as mp4:
        for piece in upscaler.upscale_chunks(frames[None], chunk_frames):  # (1, n, 4H, 4W, 3)
            piece = piece[0].numpy()
            mp4.write(piece)
            kept += [piece[i - done] for i in range(done, done + len(piece)) if i in picked]
            done += len(piece)
    seconds = time.perf_counter() - t0
    if strip is not None:
        Image.fromarray(frame_strip(np.stack(kept), strip_frames)).save(strip)
    return {"size": [int(kept[0].shape[0]), int(kept[0].shape[1])], "upscale_s": round(seconds, 3)}

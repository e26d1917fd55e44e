"""Video decode throughput: `read_clip` (seek + FFmpeg swscale area resize + crop) against a
naive reference measured in the same run (decode every frame to full-size RGB, resize with PIL).

    python bench/video_io.py [--video PATH] [--seconds 20]

Prints frames/s of 128x128 output for both and the ratio. Without --video it uses Big Buck Bunny
from the sample cache (python -m data_prep.samples) when present, else a generated 1280x720 clip.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from loong_dist.io.video import probe_video, read_clip, write_mp4

SIZE, FPS_OUT, CLIP = 128, 8.0, 17


def find_video(tmp: Path) -> Path:
    cache = Path(os.environ.get("LOONG_CACHE_DIR", Path.home() / ".cache" / "loong"))
    for candidate in cache.rglob("bbb.mp4"):
        return candidate
    t = np.arange(96)[:, None, None]
    y, x = np.mgrid[0:720, 0:1280]
    frames = np.stack([(x[None] + 8 * t) % 256, (y[None] + 4 * t) % 256,
                       (x[None] + y[None]) // 8 % 256 + 0 * t], -1)
    return write_mp4(tmp / "gen720p.mp4", frames.astype(np.uint8), fps=24)


def naive_clip(path: Path, start: float, n: int) -> np.ndarray:
    """Decode from the beginning, every frame to full-size RGB, PIL resize + crop the ones needed."""
    out, step = [], 1.0 / FPS_OUT
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            if len(out) == n:
                break
            rgb = frame.to_ndarray(format="rgb24")
            if frame.time + 1e-6 < start + len(out) * step:
                continue
            h, w = rgb.shape[:2]
            s = SIZE / min(h, w)
            img = Image.fromarray(rgb).resize((round(w * s), round(h * s)), Image.BILINEAR)
            a = np.asarray(img)
            top, left = (a.shape[0] - SIZE) // 2, (a.shape[1] - SIZE) // 2
            out.append(a[top:top + SIZE, left:left + SIZE])
    return np.stack(out)


def rate(fn, starts) -> float:
    t0 = time.perf_counter()
    frames = sum(len(fn(s)) for s in starts)
    return frames / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path)
    parser.add_argument("--seconds", type=float, default=20.0, help="span of the video the clips come from")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video or find_video(Path(tmp))
        info = probe_video(video)
        span = min(args.seconds, info.duration - CLIP / FPS_OUT - 0.5)
        starts = list(np.linspace(0.0, span, 6))
        ours = rate(lambda s: read_clip(video, start=s, num_frames=CLIP, fps=FPS_OUT, size=SIZE), starts)
        naive = rate(lambda s: naive_clip(video, s, CLIP), starts)
    print(f"video: {video.name} {info.width}x{info.height} @ {info.fps:g} fps; {len(starts)} clips of {CLIP} frames "
          f"at {FPS_OUT:g} fps -> {SIZE}x{SIZE}")
    print(f"read_clip:          {ours:8.1f} output frames/s")
    print(f"naive (ref, same run): {naive:5.1f} output frames/s")
    print(f"ratio read_clip / naive: {ours / naive:.2f}x")


if __name__ == "__main__":
    main()

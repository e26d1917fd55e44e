"""Low/high-resolution clip pairs for the video upscaler: real frames, and the inputs generation
would hand the upscaler for them.

The transformer and the video tokenizer work at 128 px, so what the upscaler sees in use is the
tokenizer's decoding of a 128 px clip. A pair is made the same way from real footage:
  - hr: the real clip at hr_size (`read_clip`: short side resized with FFmpeg's area filter,
    centre square), the target;
  - clean: hr shrunk by the scale, each output pixel the mean of a scale x scale block (an area
    resize, as FFmpeg's that made the tokenizer's training clips), rounded to uint8;
  - tok: the video tokenizer's reconstruction (encode, decode, float32) of `clean`, the input.
Training draws crops from a bank of such pairs (decoding 720p video and running the tokenizer cost
far more than an upscaler step on a CPU, so both are done once and the bank is kept in the run
folder, as the tokenizer's clip bank is). Held-out pairs are cut at the largest size <= hr_size
that the source has (a multiple of 8 x scale), so no target is an upsampled frame: bikes
(640x272) at 256, carphone (176x144) at 128. The training bank holds one size, so a training video
smaller than hr_size is left out of it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from loong_dist.data.clip_bank import plan_clips
from loong_dist.data.manifest import ManifestEntry
from loong_dist.data.synthetic import DIRECTIONS
from loong_dist.errors import UserError
from loong_dist.io.storage import Storage
from loong_dist.io.video import VideoInfo, probe_video, read_clip
from loong_dist.models.tokenizer import VideoTokenizer

log = logging.getLogger(__name__)

SCALE = 4
"""The upscaler's factor (UpscalerConfig.scale; only 4 is implemented)."""


def shrink(video: np.ndarray | torch.Tensor, factor: int = SCALE) -> np.ndarray:
    """uint8 (..., H, W, 3) -> uint8 (..., H/f, W/f, 3): each pixel the rounded mean of an f x f block."""
    v = torch.from_numpy(np.array(video, dtype=np.uint8))  # a copy: the bank is a read-only memory map
    lead, (h, w) = v.shape[:-3], v.shape[-3:-1]
    x = v.reshape(-1, h, w, 3).permute(0, 3, 1, 2).float()  # (n, 3, H, W)
    small = F.avg_pool2d(x, factor).round().to(torch.uint8)  # (n, 3, H/f, W/f)
    return small.permute(0, 2, 3, 1).reshape(*lead, h // factor, w // factor, 3).numpy()


def moving_text(frames: np.ndarray, rng: np.random.Generator, sizes: tuple[int, int] = (10, 40),
                max_speed: int = 8) -> np.ndarray:
    """Lines of random words drawn over uint8 (T, H, W, 3) frames in one colour and one font size
    (pixels, in `sizes`), anti-aliased, the whole text moving the same whole number of pixels (at
    most `max_speed`) each frame: up, down, sideways or not at all (a credit roll, a ticker, a
    caption). Returns new frames; the draws come from `rng`."""
    from PIL import Image, ImageDraw, ImageFont

    t, h, w = frames.shape[:3]
    size = int(rng.integers(sizes[0], sizes[1] + 1))
    direction = rng.choice(["up", "down", "left", "right", "still"], p=[0.3, 0.2, 0.15, 0.15, 0.2])
    speed = 0 if direction == "still" else int(rng.integers(1, max_speed + 1))
    dx, dy = (speed * step for step in DIRECTIONS[direction])
    span_y, span_x = abs(dy) * (t - 1), abs(dx) * (t - 1)
    canvas = Image.new("L", (w + span_x, h + span_y), 0)  # the text's coverage over everything the frames pass
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=size)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    for _ in range(int(rng.integers(1, 2 + (h + span_y) // (2 * size)))):
        words = ["".join(rng.choice(letters, int(rng.integers(2, 10)))) for _ in range(int(rng.integers(1, 5)))]
        xy = (int(rng.integers(-size, w + span_x - size)), int(rng.integers(-size // 2, h + span_y - size // 2)))
        draw.text(xy, " ".join(words), fill=255, font=font)
    light = rng.random() < 0.5  # credits are mostly white on dark: half the text is near white
    colour = rng.integers(200, 256, 3) if light else rng.integers(0, 256, 3)
    alpha = np.asarray(canvas, np.float32) / 255  # (h + span_y, w + span_x)
    out = np.empty_like(frames)
    for i in range(t):
        y0 = span_y - dy * i if dy >= 0 else -dy * i  # the window onto the canvas moves against the text
        x0 = span_x - dx * i if dx >= 0 else -dx * i
        a = alpha[y0:y0 + h, x0:x0 + w, None]
        out[i] = np.rint(frames[i] * (1 - a) + colour * a).astype(np.uint8)
    return out


def tokenizer_roundtrip(tokenizer: VideoTokenizer, clips: np.ndarray, batch: int = 4) -> np.ndarray:
    """uint8 (N, T, h, w, 3), T = 1 + 4k -> the tokenizer's reconstruction, uint8, same shape."""
    out = np.empty_like(clips)
    for i in range(0, len(clips), batch):
        x = torch.from_numpy(np.ascontiguousarray(clips[i:i + batch]))
        out[i:i + batch] = tokenizer.decode(tokenizer.encode(x)).cpu().numpy()
    return out


def target_side(info: VideoInfo, hr_size: int) -> int:
    """The side of real-frame targets a video holds: hr_size, or the largest multiple of 8 x SCALE
    that its short side holds when it is smaller (0: too small for any). Never an upsampled frame."""
    step = 8 * SCALE
    return min(hr_size, min(info.width, info.height) // step * step)


def spread_by_source(entries: Sequence[ManifestEntry], n: int) -> list[ManifestEntry]:
    """Up to n entries taking the manifest's sources (extra "source", else the video) in turn, each
    source's entries in manifest order: a few clips still cover every source."""
    queues: dict[str, list[ManifestEntry]] = {}
    for e in entries:
        queues.setdefault(str(e.extra.get("source", e.video)), []).append(e)
    picked: list[ManifestEntry] = []
    while len(picked) < n and any(queues.values()):
        for queue in queues.values():
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


def build_pair_bank(entries: Sequence[ManifestEntry], n: int, frames: int, fps: float, hr_size: int, seed: int,
                    tokenizer: VideoTokenizer, folder: Path, storage: Storage | None = None, chunk: int = 4) -> None:
    """Training pairs into `folder`: pairs_hr.npy, uint8 (n, frames, hr_size, hr_size, 3), and
    pairs_lr.npy, the tokenizer's reconstruction of their shrunk frames, uint8 (n, frames,
    hr_size / 4, hr_size / 4, 3). Clip starts as the tokenizer's clip bank draws them (`plan_clips`:
    seeded, spread over the entries' windows). Videos whose short side is below hr_size are skipped
    with a warning: every target is a real frame, none an upsampled one.

    Resumable: `chunk` clips at a time go into memory-mapped pairs_*.partial.npy files and are
    counted in pairs.partial.json (with the plan), so a build killed after hours of tokenizer work
    continues where it stopped when started again with the same plan; the final names appear last."""
    storage = storage or Storage()
    durations = {}
    for video in sorted({e.video for e in entries}):
        try:
            with storage.local_copy(video) as path:
                info = probe_video(path, name=video)
        except UserError as err:
            log.warning("skipping %s: %s", video, err)
            continue
        if target_side(info, hr_size) < hr_size:
            log.warning("skipping %s: its %dx%d frames are smaller than upscaler_train.hr_size=%d", video,
                        info.width, info.height, hr_size)
            continue
        durations[video] = info.duration
    if not durations:
        raise UserError(f"upscaler_train.manifests: none of their {len(entries)} training entries is a video that "
                        f"can be read with frames of at least upscaler_train.hr_size={hr_size} px")
    plan = plan_clips([e for e in entries if e.video in durations], n, frames, fps, seed, durations)
    key = {"hr_size": hr_size, "plan": [[e.video, round(start, 6)] for e, start in plan]}
    progress = folder / "pairs.partial.json"
    parts = {name: folder / f"pairs_{name}.partial.npy" for name in ("hr", "lr")}
    shapes = {"hr": (n, frames, hr_size, hr_size, 3), "lr": (n, frames, hr_size // SCALE, hr_size // SCALE, 3)}
    done = 0
    if progress.exists() and all(p.exists() for p in parts.values()):
        saved = json.loads(progress.read_text())
        done = saved["done"] if saved["key"] == key else 0
    arrays = {name: np.lib.format.open_memmap(parts[name], mode="r+" if done else "w+", dtype=np.uint8,
                                              shape=shapes[name]) for name in parts}
    if done:
        log.info("upscaler pairs: %d of %d clips made before, continuing", done, n)
    for i in tqdm(range(done, n, chunk), desc="upscaler pairs", unit=f"{chunk} clips", initial=done // chunk,
                  total=-(-n // chunk)):
        for j, (e, start) in enumerate(plan[i:i + chunk]):
            with storage.local_copy(e.video) as path:
                arrays["hr"][i + j] = read_clip(path, start=start, num_frames=frames, fps=fps, size=hr_size,
                                                name=e.video)
        arrays["lr"][i:i + chunk] = tokenizer_roundtrip(tokenizer, shrink(arrays["hr"][i:i + chunk]))
        for array in arrays.values():
            array.flush()
        tmp = progress.with_name(progress.name + ".tmp")
        tmp.write_text(json.dumps({"done": min(n, i + chunk), "key": key}))
        tmp.replace(progress)
    del arrays
    parts["hr"].replace(folder / "pairs_hr.npy")
    parts["lr"].replace(folder / "pairs_lr.npy")  # last: it marks a complete bank
    progress.unlink()


def held_out_pairs(entries: Sequence[ManifestEntry], n: int, frames: int, fps: float, hr_size: int, seed: int,
                   tokenizer: VideoTokenizer, storage: Storage | None = None) -> list[dict]:
    """Up to n evaluation pairs, one clip per entry (`spread_by_source`), each at its own `target_side`:
    [{"hr", "clean", "tok": uint8 arrays, "video", "source", "start", "size"}]. Entries too small
    for a 32 px target, or too short for the clip, are skipped with a warning."""
    storage = storage or Storage()
    pairs = []
    for e in spread_by_source(entries, len(entries)):
        if len(pairs) == n:
            break
        try:
            with storage.local_copy(e.video) as path:
                info = probe_video(path, name=e.video)
                size = target_side(info, hr_size)
                if size < 8 * SCALE:
                    raise UserError(f"{e.video}: frames smaller than {8 * SCALE} px")
                (_, start), = plan_clips([e], 1, frames, fps, seed + len(pairs), {e.video: info.duration})
                hr = read_clip(path, start=start, num_frames=frames, fps=fps, size=size, name=e.video)
        except UserError as err:
            log.warning("held-out pair skipped: %s", err)
            continue
        clean = shrink(hr)
        pairs.append({"hr": hr, "clean": clean, "tok": tokenizer_roundtrip(tokenizer, clean[None])[0], "video": e.video,
                      "source": str(e.extra.get("source", e.video)), "start": round(float(start), 3), "size": size})
    if n and not pairs:
        raise UserError(f"no held-out clip of {frames} frames could be cut from {len(entries)} manifest entries")
    return pairs


def save_pairs(path: Path, pairs: list[dict]) -> None:
    """Held-out pairs into one .npz (atomically), their arrays and fields."""
    arrays = {f"{k}_{i}": p[k] for i, p in enumerate(pairs) for k in ("hr", "clean", "tok")}
    meta = np.array([[p["video"], p["source"], p["start"], p["size"]] for p in pairs], dtype=object)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=meta.astype(str), **arrays)
    tmp.replace(path)


def load_pairs(path: Path) -> list[dict]:
    with np.load(path) as f:
        meta = f["meta"]
        return [{"hr": f[f"hr_{i}"], "clean": f[f"clean_{i}"], "tok": f[f"tok_{i}"], "video": str(m[0]),
                 "source": str(m[1]), "start": float(m[2]), "size": int(m[3])} for i, m in enumerate(meta)]

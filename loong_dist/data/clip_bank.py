"""A bank of decoded clips for tokenizer training and evaluation.

Decoding a 720p video costs far more than a tokenizer step on a CPU, so the clips a run trains on
are decoded once into one uint8 array (N, T, size, size, 3), saved in the run folder, and sampled
from there (with random horizontal flips). Clip starts are a function of (seed, index), spread
over the entries' windows, so the same config always gives the same bank. A video that cannot be
read is skipped with a warning naming it; the bank is filled from the other entries.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from loong_dist.data.manifest import ManifestEntry
from loong_dist.errors import UserError, VideoError
from loong_dist.io.storage import Storage
from loong_dist.io.video import probe_video, read_clip

log = logging.getLogger(__name__)


def plan_clips(entries: Sequence[ManifestEntry], n: int, frames: int, fps: float, seed: int,
               durations: dict[str, float]) -> list[tuple[ManifestEntry, float]]:
    """n (entry, start) pairs: entries in a seeded round-robin, starts uniform in each window."""
    rng = np.random.default_rng(seed)
    span = (frames - 1) / fps + 1.0 / fps
    usable = []
    for e in entries:
        start = e.start or 0.0
        end = min(e.end if e.end is not None else durations[e.video], durations[e.video])
        if end - start >= span:
            usable.append((e, start, end - span))
    if not usable:
        raise UserError(f"no manifest entry is long enough for a {frames}-frame clip at {fps:g} fps")
    order = rng.permutation(len(usable))
    plan = []
    for i in range(n):
        e, lo, hi = usable[order[i % len(usable)]]
        plan.append((e, float(rng.uniform(lo, hi)) if hi > lo else lo))
    return plan


def split_counts(n: int, shares: Sequence[float]) -> list[int]:
    """n split in proportion to shares, rounding so the counts add up to n (largest remainders)."""
    total = float(sum(shares))
    exact = [n * s / total for s in shares]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(shares)), key=lambda i: exact[i] - counts[i], reverse=True)[:n - sum(counts)]:
        counts[i] += 1
    return counts


def build_clip_bank(entries: Sequence[ManifestEntry] | Sequence[Sequence[ManifestEntry]], n: int, frames: int,
                    fps: float, size: int, seed: int, storage: Storage | None = None, desc: str = "clip bank",
                    return_plan: bool = False, shares: Sequence[float] | None = None):
    """uint8 (n, frames, size, size, 3); with return_plan also the [(entry, start)] each clip came from.

    With `shares`, `entries` is one list of entries per source (a manifest) and source i gives
    n * shares[i] / sum(shares) of the clips."""
    storage = storage or Storage()
    groups = [list(g) for g in entries] if shares is not None else [list(entries)]
    durations = {}
    for video in sorted({e.video for g in groups for e in g}):
        try:
            with storage.local_copy(video) as path:
                durations[video] = probe_video(path, name=video).duration
        except UserError as err:
            log.warning("skipping %s: %s", video, err)
    counts = split_counts(n, shares) if shares is not None else [n]
    plan = []
    for i, (group, count) in enumerate(zip(groups, counts)):
        if count:
            group = [e for e in group if e.video in durations]
            plan += plan_clips(group, count, frames, fps, seed + 1000 * i, durations)
    bank = np.empty((n, frames, size, size, 3), np.uint8)
    for i, (e, start) in enumerate(tqdm(plan, desc=desc, unit="clip")):
        try:
            with storage.local_copy(e.video) as path:
                bank[i] = read_clip(path, start=start, num_frames=frames, fps=fps, size=size, name=e.video)
        except VideoError as err:  # a damaged stretch: take the clip from the start of the window
            log.warning("%s", err)
            with storage.local_copy(e.video) as path:
                bank[i] = read_clip(path, start=e.start or 0.0, num_frames=frames, fps=fps, size=size, name=e.video)
    return (bank, plan) if return_plan else bank


def load_or_build(path: Path, build) -> np.ndarray:
    """The bank saved at `path`, or build it and save it there (atomically). Ranks sharing the folder
    may build it at once: each writes its own temporary file (the banks are the same), the last
    rename wins."""
    if path.exists():
        return np.load(path, mmap_mode="r")
    bank = build()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
    np.save(tmp, bank)
    tmp.replace(path)
    return bank

"""Render procedural captioned clips: one shape with attributes, and a caption made from them.

    python -m data_prep.synthetic --n N --frames 1,17,65 --size 64|128 --out DIR
    python -m data_prep.synthetic --prompts N --out DIR [synthetic.held_out=0.2]

Writes DIR/videos/syn-000000.mp4 ..., DIR/manifest.jsonl (video, caption, split, attributes,
frames, fps, size, source), DIR/config.yaml and DIR/preview.png (frame strips of the first clips
under their captions). Clip i has frames[i % len(frames)] frames and the attributes
`attributes_for(i, run.seed, frames, synthetic.still_share, synthetic.start_grid, synthetic.start_inside)`,
so the same config gives the same clips and the same manifest.
An mp4 left by an earlier run with the same seed, frames, size, fps, still share and start (grid,
inside) is kept (a resume).

With --prompts N it renders nothing and writes DIR/prompts.jsonl: N captions of held-out
appearances (`synthetic.held_out`, `synthetic.split_seed`: the same ones a training corpus with
those settings leaves out), no two with the same six attributes, each with its attributes, for
jobs.generate --prompts-file and jobs.evaluate generation.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw
from tqdm import tqdm

from loong_dist.cli import job_parser, resolve_config, run_job
from loong_dist.config import SyntheticConfig, config_yaml
from loong_dist.data.manifest import ManifestEntry, write_manifest
from loong_dist.data.synthetic import (attributes_for, caption, held_out_appearances, held_out_prompts,
                                      render_clip, split_for)
from loong_dist.errors import ConfigError
from loong_dist.io.run_folder import RunFolder
from loong_dist.io.storage import Storage
from loong_dist.io.video import frame_strip, write_mp4

ALIASES = {"--n": "synthetic.n", "--frames": "synthetic.frames", "--size": "synthetic.size",
           "--fps": "synthetic.fps", "--out": "run.out_dir", "--seed": "run.seed"}
PREVIEW_CLIPS = 8
STRIP_FRAMES = 8
CLIPS_PER_WORKER = 32  # fewer clips than this per process do not pay for starting it (~0.5 s)
MAX_WORKERS = 32


def _write_clip(task: tuple[str, dict, int, int, float]) -> None:
    path, attrs, num_frames, size, fps = task
    write_mp4(path, render_clip(attrs, num_frames, size), fps=fps)


PIXEL_KEYS = ("frames", "size", "fps", "still_share", "start_grid", "start_inside")
"""The synthetic settings that, with run.seed, decide every clip's pixels (n, held_out and split_seed do not)."""


def _same_pixels(config_yaml: Path, cfg) -> bool:
    """Did the run that wrote `config_yaml` render the same clips (run.seed and PIXEL_KEYS)? A key that
    run's config lacks (written before the option existed) had its default."""
    if not config_yaml.is_file():
        return False
    old = yaml.safe_load(config_yaml.read_text()) or {}
    syn, new, default = old.get("synthetic", {}), cfg.synthetic, SyntheticConfig()
    return old.get("run", {}).get("seed") == cfg.run.seed and all(
        syn.get(k, getattr(default, k)) == getattr(new, k) for k in PIXEL_KEYS)


def _preview(clips: list[np.ndarray], captions: list[str], size: int) -> Image.Image:
    """Frame strips (STRIP_FRAMES frames each, evenly spaced) stacked, each under its caption."""
    text_h = 14
    sheet = Image.new("RGB", (STRIP_FRAMES * size, len(clips) * (size + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, (clip, text) in enumerate(zip(clips, captions)):
        top = row * (size + text_h)
        draw.text((2, top + 1), text, fill=(0, 0, 0))
        sheet.paste(Image.fromarray(frame_strip(clip, STRIP_FRAMES)), (0, top + text_h))
    return sheet


def write_prompts(out: Path, n: int, cfg) -> Path:
    syn = cfg.synthetic
    held = held_out_appearances(syn.held_out, syn.split_seed)
    if not held:
        raise ConfigError(f"config: synthetic.held_out={syn.held_out}: no appearance is held out to take prompts from")
    try:
        prompts = held_out_prompts(n, cfg.run.seed, held, max(syn.frames))
    except ValueError as e:
        raise ConfigError(f"--prompts {n}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    path = out / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    print(f"synthetic: {len(prompts)} held-out prompts ({len(held)} appearances held out) -> {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("python -m data_prep.synthetic", __doc__.splitlines()[0], ALIASES,
                        sections=("run", "synthetic"))
    parser.add_argument("--prompts", type=int, default=0, metavar="N",
                        help="write N held-out prompts (prompts.jsonl) instead of rendering clips")
    args = parser.parse_intermixed_args(argv)  # key=value items may come between flags
    cfg = resolve_config(args, ALIASES)
    syn, seed = cfg.synthetic, cfg.run.seed
    # An s3:// output is rendered into this node's scratch and published object by object, so the
    # corpus is where every node of a cluster reads it.
    folder = RunFolder(cfg.run.out_dir, Storage(cfg.storage))
    out = folder.local
    if args.prompts:
        write_prompts(out, args.prompts, cfg)
        folder.publish("prompts.jsonl")
        return 0
    folder.fetch("config.yaml")
    keep_existing = _same_pixels(out / "config.yaml", cfg)
    published = set(folder.storage.list(folder.uri_of("videos"))) if folder.remote and keep_existing else set()
    folder.write_text("config.yaml", config_yaml(cfg))  # before rendering: it describes every mp4 in videos/

    start, entries, todo = time.perf_counter(), [], []
    held = held_out_appearances(syn.held_out, syn.split_seed)
    for i in range(syn.n):
        num_frames = syn.frames[i % len(syn.frames)]
        attrs = attributes_for(i, seed, num_frames, syn.still_share, syn.start_grid, syn.start_inside)
        path = out / "videos" / f"syn-{i:06d}.mp4"
        entries.append(ManifestEntry(str(path), caption(attrs, num_frames), extra={
            "split": split_for(attrs, held), "attributes": attrs, "frames": num_frames,
            "fps": syn.fps, "size": syn.size, "source": "synthetic"}))
        if not (keep_existing and (path.is_file() or folder.uri_of("videos", path.name) in published)):
            todo.append((str(path), attrs, num_frames, syn.size, syn.fps))

    # Rendering and x264 each keep one core busy per clip: spread clips over processes.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(cores, MAX_WORKERS, max(1, len(todo) // CLIPS_PER_WORKER))
    with (mp.get_context("spawn").Pool(workers) if workers > 1 else contextlib.nullcontext()) as pool:
        done = pool.imap_unordered(_write_clip, todo, chunksize=4) if pool else map(_write_clip, todo)
        for _ in tqdm(done, total=len(todo), desc="synthetic", unit="clip", mininterval=2.0):
            pass
    for task in todo:  # a local folder: nothing to do
        folder.publish("videos", Path(task[0]).name)

    write_manifest(str(out / "manifest.jsonl"), entries)
    first = entries[:PREVIEW_CLIPS]
    clips = [render_clip(e.extra["attributes"], e.extra["frames"], syn.size) for e in first]
    _preview(clips, [e.caption for e in first], syn.size).save(out / "preview.png")
    folder.publish("preview.png")
    folder.publish("manifest.jsonl")  # last: a manifest on S3 names only clips already there
    manifest = folder.uri_of("manifest.jsonl")
    wall = time.perf_counter() - start
    held_out = sum(e.extra["split"] == "held_out" for e in entries)
    frames = sum(e.extra["frames"] for e in entries)
    print(f"synthetic: {syn.n} clips ({syn.n - held_out} train, {held_out} held_out; {len(todo)} rendered on "
          f"{workers} process(es), {syn.n - len(todo)} kept), {frames} frames of {syn.size}x{syn.size}, "
          f"{wall:.1f} s, {syn.n / wall:.1f} clips/s -> {manifest}")
    return 0


if __name__ == "__main__":
    run_job(main)

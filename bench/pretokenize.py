"""End-to-end pretokenization throughput (decode -> encode -> shards, on a local Ray) against the
tokenizer's encode-only rate measured in the same run, with 1 and 2 tokenizer workers.

    python bench/pretokenize.py [--tokenizer PATH] [--clips 48] [--frames 17] [--size 128]

Without --tokenizer a randomly initialised tokenizer of the default architecture is used (the
speed does not depend on the weights). Clips are synthetic 128x128 mp4s (data_prep.synthetic).
The bound is the encode-only rate of one encoder (same batch, bf16, thread count as an actor),
times the number of encoders; the end-to-end rate is the job's clips/s over its whole wall time
(planning and Ray start-up included) and over its pipeline time (Ray up -> last shard written).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def encode_rate(tokenizer: Path, clips: list[np.ndarray], batch: int, threads: int) -> float:
    from loong_dist.models.tokenizer import load_tokenizer
    torch.set_num_threads(threads)
    tok = load_tokenizer(tokenizer)
    tok.encode(np.stack(clips[:batch]), bf16=True)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(clips), batch):
        tok.encode(np.stack(clips[i:i + batch]), bf16=True)
    return len(clips) / (time.perf_counter() - t0)


def run_job(args, tmp: Path, text: Path, tokenizer: Path, workers: int) -> dict:
    out = tmp / f"out-{workers}"
    cmd = [sys.executable, "-m", "data_prep.pretokenize", "--manifest", str(tmp / "syn" / "manifest.jsonl"),
           "--tokenizer", str(tokenizer), "--text-tokenizer", str(text), "--out", str(out),
           "--frames", str(args.frames), "--fps", "8", "--size", str(args.size), "pretokenize.progress=false",
           f"pretokenize.num_encoders={workers}", "pretokenize.encoder_cpus=1", "pretokenize.decode_cpus=0.5",
           f"pretokenize.local_cpus={workers + 1}", f"pretokenize.encode_batch={args.batch}",
           "pretokenize.shard_target_mb=0.05", "synthetic.held_out=0"]
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    summary = json.loads((out / "summary.json").read_text())
    summary["bench_wall_s"] = time.time() - t0
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from data_prep.synthetic import main as synthetic
    from loong_dist.data.manifest import read_manifest
    from loong_dist.data.text_tokenizer import TextTokenizer, train_text_tokenizer
    from loong_dist.io.video import read_clip
    from loong_dist.models.tokenizer import VideoTokenizer, save_tokenizer

    with tempfile.TemporaryDirectory(prefix="bench-pretok-") as tmp:
        tmp = Path(tmp)
        tokenizer = args.tokenizer or save_tokenizer(VideoTokenizer(), tmp / "tok.safetensors")
        synthetic(["--out", str(tmp / "syn"), "--n", str(args.clips), "--frames", str(args.frames),
                   "--size", str(args.size), "synthetic.held_out=0"])
        entries, _ = read_manifest(str(tmp / "syn" / "manifest.jsonl"))
        text = tmp / "text.model"
        TextTokenizer(train_text_tokenizer([e.caption for e in entries], 300)).save(str(text))
        clips = [read_clip(e.video, 0.0, args.frames, 8.0, args.size) for e in entries]
        bound1 = encode_rate(tokenizer, clips, args.batch, threads=1)
        runs = {w: run_job(args, tmp, text, tokenizer, w) for w in (1, 2)}
    print(f"pretokenize bench: {args.clips} clips of {args.frames}x{args.size}x{args.size}, batch {args.batch}, "
          f"bf16, {os.cpu_count()} cores")
    print(f"encode-only bound (1 encoder, 1 thread, same run): {bound1:7.2f} clips/s")
    for w, s in runs.items():
        print(f"{w} worker(s): {s['clips']} clips in {s['wall_s']:.1f} s job wall -> {s['clips_per_s']:.2f} clips/s "
              f"end to end; pipeline {s['pipeline_clips_per_s']:.2f} clips/s = "
              f"{s['pipeline_clips_per_s'] / (bound1 * w):.2f} of the bound ({bound1 * w:.2f})")
    print(f"ratio 2 workers / 1 worker: {runs[2]['clips_per_s'] / runs[1]['clips_per_s']:.2f}x")


if __name__ == "__main__":
    main()

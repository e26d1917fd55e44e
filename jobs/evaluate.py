"""Evaluate loong-dist models.

    python -m jobs.evaluate tokenizer --checkpoint C --manifest M --out DIR [--clips N] [key=value ...]

tokenizer: one 17-frame 128x128 clip from each manifest entry (up to --clips, seeded starts),
encoded and decoded with the uint8 API; per-clip and mean PSNR and SSIM, the bilinear 8x reference
on the same clips, codebook use (share of codes seen, perplexity); DIR/tokenizer_eval.json and one
side-by-side GIF (original | reconstruction) per clip in DIR/tokenizer_eval/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from loong_dist.cli import job_parser, log, resolve_config, run_job
from loong_dist.data.clip_bank import build_clip_bank
from loong_dist.data.manifest import read_manifest
from loong_dist.errors import ConfigError
from loong_dist.io.storage import Storage
from loong_dist.io.video import write_gif

ALIASES = {"--checkpoint": "tokenizer.path", "--manifest": "data.manifest", "--out": "run.out_dir"}


def evaluate_tokenizer(argv: list[str]) -> int:
    import numpy as np

    from loong_dist.models.tokenizer import load_tokenizer
    from loong_dist.evaluation.tokenizer_quality import evaluate_clips

    parser = job_parser("python -m jobs.evaluate tokenizer", "Tokenizer PSNR/SSIM and codebook use.", ALIASES,
                        sections=("tokenizer", "data", "run"))
    parser.add_argument("--clips", type=int, default=32, help="clips at most (one per entry, in order)")
    parser.add_argument("--frames", type=int, default=17, help="frames per clip (1 + 4k)")
    args = parser.parse_args(argv)
    cfg = resolve_config(args, ALIASES)
    for key, value in (("tokenizer.path", cfg.tokenizer.path), ("data.manifest", cfg.data.manifest)):
        if not value:
            raise ConfigError(f"config: {key} is empty: pass --{'checkpoint' if key == 'tokenizer.path' else 'manifest'}")
    storage = Storage(cfg.storage)
    tok = load_tokenizer(cfg.tokenizer.path)
    tok.latent_shape(args.frames, cfg.data.size, cfg.data.size)
    entries, _ = read_manifest(cfg.data.manifest, storage)
    entries = entries[:args.clips]
    clips, plan = build_clip_bank(entries, len(entries), args.frames, cfg.data.fps, cfg.data.size, cfg.run.seed,
                                  storage, return_plan=True)
    result = evaluate_clips(tok, clips)
    recon = result.pop("recon")
    out = Path(cfg.run.out_dir)
    gifs = out / "tokenizer_eval"
    for i, (clip, rec) in enumerate(zip(clips, recon)):
        write_gif(gifs / f"clip_{i:03d}.gif", np.concatenate([clip, rec], axis=2), fps=cfg.data.fps)
        entry, start = plan[i]
        result["per_clip"][i].update(video=entry.video, start=round(start, 3), caption=entry.caption,
                                     gif=str(gifs / f"clip_{i:03d}.gif"))
    report = {"checkpoint": cfg.tokenizer.path, "manifest": cfg.data.manifest, "clips": len(clips),
              "frames": args.frames, "size": cfg.data.size, "fps": cfg.data.fps, "codebook_size": tok.codebook_size,
              **result}
    storage.write_text(str(out / "tokenizer_eval.json"), json.dumps(report, indent=2) + "\n")
    log.info("tokenizer: PSNR %.2f dB (bilinear 8x reference %.2f dB), SSIM %.3f, %d clips; codes used %.2f%%, "
             "perplexity %.0f -> %s", report["psnr"], report["ref_psnr"], report["ssim"], len(clips),
             100 * report["used"], report["perplexity"], out / "tokenizer_eval.json")
    return 0


TARGETS = {"tokenizer": evaluate_tokenizer}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in TARGETS:
        raise ConfigError(f"usage: python -m jobs.evaluate {{{'|'.join(TARGETS)}}} ... (got {argv[:1] or 'nothing'})")
    return TARGETS[argv[0]](argv[1:])


if __name__ == "__main__":
    run_job(main)

"""Train the 4x video upscaler on real footage against the video tokenizer's output, data-parallel with DeepSpeed.

    python -m jobs.train_upscaler --config configs/upscaler/cpu.yaml --out runs/upscaler_cpu [--nproc 1]
        [--max-minutes M] [key=value ...]

Inputs are what generation hands the upscaler: the tokenizer's (tokenizer.path) reconstruction of
each training clip shrunk 4x; targets are the real frames (upscaler_train.manifests, held-out
entries never). Writes into the run folder: upscaler.safetensors (load_upscaler), checkpoints/
(resume), pairs_*.npy and eval_pairs.npz (the pairs, made once), metrics.jsonl (loss per step),
eval.jsonl and psnr_curve.png (held-out PSNR/SSIM/flicker against bicubic over training time),
previews/, tensorboard/, config.yaml. Started again with the same folder it resumes where it stopped.
"""

from __future__ import annotations

import os

from loong_dist.cli import job_parser, log, resolve_config, run_job, setup_process
from loong_dist.config import Config, config_yaml
from loong_dist.errors import ConfigError
from loong_dist.io.run_folder import RunFolder
from loong_dist.io.storage import Storage
from loong_dist.parallel.process_groups import run_ranks_here

ALIASES = {"--out": "run.out_dir", "--steps": "optim.steps", "--manifest": "upscaler_train.manifests",
           "--eval-manifest": "upscaler_train.eval_manifest", "--tokenizer": "tokenizer.path"}


def run_rank(cfg: Config, max_seconds: float | None) -> None:
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.train.upscaler_trainer import UpscalerTrainer

    setup_process()  # a spawned rank starts without the parent's logging
    groups = init_parallel(1, None if cfg.parallel.backend == "auto" else cfg.parallel.backend)
    try:
        trainer = UpscalerTrainer(cfg, groups)
        trainer.resume()
        trainer.fit(max_seconds=max_seconds)
    finally:
        destroy_parallel()


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("python -m jobs.train_upscaler", __doc__.splitlines()[0], ALIASES,
                        sections=("upscaler_train", "upscaler", "tokenizer", "optim", "parallel", "data", "run"))
    parser.add_argument("--nproc", type=int, default=1, help="local data-parallel ranks when not under a launcher")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop with a checkpoint after the first step that ends past this long (0: one step)")
    args = parser.parse_intermixed_args(argv)  # key=value items may come between flags
    cfg = resolve_config(args, ALIASES)
    if not cfg.upscaler_train.manifests:
        raise ConfigError("config: upscaler_train.manifests is empty: pass --manifest M[,M2]")
    if not cfg.tokenizer.path:
        raise ConfigError("config: tokenizer.path is empty: pass --tokenizer T (the video tokenizer whose "
                          "reconstructions the upscaler learns to take)")
    if cfg.parallel.tp != 1:
        raise ConfigError(f"config: parallel.tp={cfg.parallel.tp}: the upscaler trains data-parallel only")
    max_seconds = args.max_minutes * 60 if args.max_minutes is not None else None
    RunFolder(cfg.run.out_dir, Storage(cfg.storage)).write_text("config.yaml", config_yaml(cfg))  # s3:// too
    if "RANK" in os.environ:
        run_rank(cfg, max_seconds)
        return 0
    log.info("upscaler training on %d local rank(s) -> %s", args.nproc, cfg.run.out_dir)
    run_ranks_here(run_rank, args.nproc, cfg, max_seconds)
    return 0


if __name__ == "__main__":
    run_job(main)

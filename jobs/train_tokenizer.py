"""Train the video tokenizer (causal 3D CNN + FSQ) on manifest clips, data-parallel with DeepSpeed.

    python -m jobs.train_tokenizer --config configs/tokenizer/cpu.yaml --out runs/tokenizer [--nproc 1]
        [--max-minutes M] [key=value ...]

Writes into the run folder: tokenizer.safetensors (load_tokenizer), checkpoints/ (resume),
eval.jsonl (held-out PSNR/SSIM against training time), previews/, tensorboard/, config.yaml.
Started again with the same folder it resumes where it stopped.
"""

from __future__ import annotations

import os

from loong_dist.cli import job_parser, log, resolve_config, run_job, setup_process
from loong_dist.config import Config, config_yaml
from loong_dist.io.run_folder import RunFolder
from loong_dist.io.storage import Storage
from loong_dist.errors import ConfigError
from loong_dist.parallel.process_groups import run_ranks_here

ALIASES = {"--out": "run.out_dir", "--steps": "optim.steps", "--manifest": "tokenizer_train.manifests",
           "--eval-manifest": "tokenizer_train.eval_manifest"}


def run_rank(cfg: Config, max_seconds: float | None) -> None:
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.train.tokenizer_trainer import TokenizerTrainer

    setup_process()  # a spawned rank starts without the parent's logging
    groups = init_parallel(1, None if cfg.parallel.backend == "auto" else cfg.parallel.backend)
    try:
        trainer = TokenizerTrainer(cfg, groups)
        trainer.resume()
        trainer.fit(max_seconds=max_seconds)
    finally:
        destroy_parallel()


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("python -m jobs.train_tokenizer", __doc__.splitlines()[0], ALIASES,
                        sections=("tokenizer_train", "tokenizer", "optim", "parallel", "data", "run"))
    parser.add_argument("--nproc", type=int, default=1, help="local data-parallel ranks when not under a launcher")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop with a checkpoint after the first step that ends past this long (0: one step)")
    args = parser.parse_intermixed_args(argv)  # key=value items may come between flags
    cfg = resolve_config(args, ALIASES)
    if not cfg.tokenizer_train.manifests:
        raise ConfigError("config: tokenizer_train.manifests is empty: pass --manifest M[,M2]")
    if cfg.parallel.tp != 1:
        raise ConfigError(f"config: parallel.tp={cfg.parallel.tp}: the tokenizer trains data-parallel only")
    max_seconds = args.max_minutes * 60 if args.max_minutes is not None else None
    RunFolder(cfg.run.out_dir, Storage(cfg.storage)).write_text("config.yaml", config_yaml(cfg))  # s3:// too
    if "RANK" in os.environ:
        run_rank(cfg, max_seconds)
        return 0
    log.info("tokenizer training on %d local rank(s) -> %s", args.nproc, cfg.run.out_dir)
    run_ranks_here(run_rank, args.nproc, cfg, max_seconds)
    return 0


if __name__ == "__main__":
    run_job(main)

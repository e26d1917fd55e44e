"""Train the AR transformer on token shards with DeepSpeed ZeRO (+ megatron tensor parallelism).

    python -m jobs.train --config configs/....yaml --shards DIR|s3://... [--nproc 2] [key=value ...]
    ray job submit --working-dir . -- python -m jobs.train --config ... --num-workers 16

Under a launcher that sets RANK/WORLD_SIZE (torchrun) each process runs one rank. With
`--num-workers N` the ranks are Ray Train workers (TorchTrainer: one per GPU, or CPU workers) on
the cluster of RAY_ADDRESS (set by `ray job submit`), or on a local Ray. Started plainly, it runs
`--nproc` local ranks (gloo on CPU, NCCL on GPUs; one rank runs in the job's own process). A run
started again with the same output folder resumes from its latest checkpoint; a stage starts from
`train.init_from` (the previous stage's run).
"""

from __future__ import annotations

import os

from loong_dist.cli import job_parser, log, resolve_config, run_job, setup_process
from loong_dist.config import Config, config_yaml
from loong_dist.data.shards import ShardIndex
from loong_dist.io.run_folder import RunFolder
from loong_dist.io.storage import Storage
from loong_dist.errors import ConfigError
from loong_dist.parallel.process_groups import run_ranks_here

ALIASES = {"--shards": "train.shards", "--out": "run.out_dir", "--steps": "optim.steps"}


def run_rank(cfg: Config) -> None:
    import torch.distributed as dist

    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.train.trainer import Trainer

    setup_process()  # a spawned rank starts without the parent's logging
    backend = None if cfg.parallel.backend == "auto" else cfg.parallel.backend
    launcher_group = dist.is_initialized()  # Ray Train made the process group and tears it down
    groups = init_parallel(cfg.parallel.tp, backend)
    try:
        trainer = Trainer(cfg, groups)
        trainer.resume()
        trainer.fit()
    finally:
        destroy_parallel(keep_process_group=launcher_group)


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("python -m jobs.train", __doc__.splitlines()[0], ALIASES,
                        sections=("train", "model", "parallel", "optim", "run"))
    parser.add_argument("--nproc", type=int, default=1, help="local ranks to spawn when not under a launcher")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="Ray Train workers (one per GPU; CPU workers without GPUs); 0: no Ray")
    args = parser.parse_intermixed_args(argv)  # key=value items may come between flags
    cfg = resolve_config(args, ALIASES)
    if not cfg.train.shards:
        raise ConfigError("config: train.shards is empty: pass --shards DIR (written by data_prep.pretokenize)")
    if "RANK" in os.environ:  # torchrun: this process is one rank
        run_rank(cfg)
        return 0
    ranks = args.num_workers or args.nproc
    if ranks % cfg.parallel.tp:
        raise ConfigError(f"config: parallel.tp={cfg.parallel.tp} does not divide the {ranks} ranks")
    RunFolder(cfg.run.out_dir, Storage(cfg.storage)).write_text("config.yaml", config_yaml(cfg))  # s3:// too
    if args.num_workers:
        from loong_dist.train.launch import launch_ray
        launch_ray(run_rank, cfg, args.num_workers)
        return 0
    # A missing or broken shard index is one line now, not after every rank has started.
    ShardIndex.load_many([f for f in cfg.train.shards.split(",") if f], Storage(cfg.storage))
    log.info("training with %d local rank(s) -> %s", args.nproc, cfg.run.out_dir)
    run_ranks_here(run_rank, args.nproc, cfg)
    return 0


if __name__ == "__main__":
    run_job(main)

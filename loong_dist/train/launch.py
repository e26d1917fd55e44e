"""Starting the training ranks: local processes, or Ray Train workers on a cluster.

    launch_ray(run_rank, cfg, num_workers=8)   # TorchTrainer: one worker per GPU (or CPU workers)

Ray Train starts `num_workers` worker processes, sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT in each and initialises the default process group (NCCL with GPUs, gloo without);
`init_parallel` then finds it initialised and only builds the tensor/data-parallel groups, and
DeepSpeed runs inside each worker on top of them (`dist_init_required=False`). The config travels
to the workers as YAML text, so nothing but the code (the job's working dir or an installed
package) has to be on the worker nodes; data and run folders should be on S3 or a shared disk.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable

import yaml

from loong_dist.config import Config, config_to_dict, load_config

log = logging.getLogger(__name__)


def _ray_worker(payload: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.yaml")
        with open(path, "w") as f:
            f.write(payload["config"])
        cfg = load_config(path)
    payload["fn"](cfg)


def launch_ray(fn: Callable[[Config], None], cfg: Config, num_workers: int, address: str | None = None,
               use_gpu: bool | None = None, cpus_per_worker: float = 1.0) -> None:
    """Run `fn(cfg)` in `num_workers` Ray Train workers; an exception in a worker is raised here.

    address: the cluster to join (None: RAY_ADDRESS when set, as under `ray job submit`, else a
    local Ray started in-process). use_gpu: None: one GPU per worker when the cluster has GPUs."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(address="local", num_cpus=max(2, int(num_workers * cpus_per_worker) + 1),
                     include_dashboard=False, logging_level=logging.WARNING)
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    backend = None if cfg.parallel.backend == "auto" else cfg.parallel.backend
    scaling = ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, placement_strategy=cfg.parallel.ray_placement,
                            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})})
    log.info("Ray Train: %d worker(s), %s, %s", num_workers, "1 GPU each" if use_gpu else "CPU",
             address or "local Ray")
    trainer = TorchTrainer(_ray_worker, train_loop_config={"fn": fn, "config": yaml.safe_dump(config_to_dict(cfg))},
                           scaling_config=scaling, torch_config=TorchConfig(backend=backend),
                           run_config=RunConfig(name=f"loong-train-{os.path.basename(cfg.run.out_dir.rstrip('/'))}",
                                                storage_path=os.path.join(tempfile.gettempdir(), "loong-ray-train")))
    trainer.fit()

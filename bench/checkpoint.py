"""Checkpoint save and load: the layout-free form (loong_dist/parallel/layout_free.py, torch DCP)
against DeepSpeed's own save_checkpoint / load_checkpoint of the same engine, in one run.

    python bench/checkpoint.py [--size small] [--nproc 2] [--tp 1] [--zero 1] [--repeats 3]

Spawns --nproc gloo ranks (NCCL on GPUs), builds the model and DeepSpeed engine at that layout,
takes one optimizer step (so Adam has its moments), then times each save and load --repeats times
(median), in a fresh folder each time. Prints seconds, GB written, GB/s and the ratio of ours to
DeepSpeed's: ours gathers each parameter over the data-parallel group and writes single-device
tensors any layout can read; DeepSpeed's writes each rank's flat ZeRO partition as it is, which
only the layout that wrote it can load.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _size_gb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e9


def _rank(size: str, tp: int, zero: int, repeats: int, root: str) -> None:
    import torch
    import torch.distributed as dist

    from loong_dist.config import load_config
    from loong_dist.parallel.engine import build_engine, build_model
    from loong_dist.parallel.layout_free import adam_step, read_state, write_state
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel

    cfg = load_config(None, [f"model.size={size}", f"parallel.tp={tp}", f"parallel.zero_stage={zero}",
                             "parallel.precision=fp32", "optim.warmup_steps=1"])
    groups = init_parallel(tp)
    vocab = 1024 * tp
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab, groups, cfg.parallel)
    engine = build_engine(model, cfg, groups)
    tokens = torch.randint(0, vocab, (2, 256), device=groups.device)
    engine.backward(engine(tokens, tokens).mean())
    engine.step()
    times = {k: [] for k in ("ours save", "ours load", "deepspeed save", "deepspeed load")}

    def timed(key, fn):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        dist.barrier()
        times[key].append(time.perf_counter() - t0)

    sizes = {}
    for i in range(repeats):
        ours, theirs = Path(root, f"ours{i}"), Path(root, f"ds{i}")
        timed("ours save", lambda: write_state(ours, engine, model, groups))
        timed("ours load", lambda: read_state(ours, engine, model, groups, adam_step(engine)))
        timed("deepspeed save", lambda: engine.save_checkpoint(str(theirs), tag="t", save_latest=False))
        timed("deepspeed load", lambda: engine.load_checkpoint(str(theirs), tag="t"))
        sizes = {"ours": _size_gb(ours), "deepspeed": _size_gb(theirs / "t")}
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(ours)
            shutil.rmtree(theirs)
    if dist.get_rank() == 0:
        med = {k: statistics.median(v) for k, v in times.items()}
        params = sum(p.numel() for p in model.parameters()) * groups.tp_size
        print(f"{size}: {params / 1e6:.1f}M parameters, TP={groups.tp_size} x DP={groups.dp_size}, ZeRO-{zero}, "
              f"{groups.device.type}; median of {repeats}")
        for k, v in med.items():
            gb = sizes["ours" if k.startswith("ours") else "deepspeed"]
            print(f"  {k:15s} {v:7.3f} s  {gb:6.3f} GB  {gb / v:6.3f} GB/s")
        print(f"  ours / deepspeed time: save {med['ours save'] / med['deepspeed save']:.2f}x, "
              f"load {med['ours load'] / med['deepspeed load']:.2f}x")
    destroy_parallel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--zero", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from loong_dist.parallel.process_groups import launch_local

    with tempfile.TemporaryDirectory(prefix="loong-bench-ckpt-") as root:
        launch_local(_rank, args.nproc, args.size, args.tp, args.zero, args.repeats, root)


if __name__ == "__main__":
    main()

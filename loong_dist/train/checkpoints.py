"""One training checkpoint, `checkpoints/step<N>/`, that any layout resumes from.

    write_checkpoint(folder, engine, model, groups, client, meta, node_main)   # a collective
    client = read_checkpoint(folder, engine, model, groups)                    # a collective, any layout

A folder holds the layout-free weights, Adam moments and persistent buffers
(loong_dist/parallel/layout_free.py), each rank's client state (`client_rank<R>.pt`: the trainer's
own - step, loader position, RNG streams - plus the optimizer's step count, learning-rate
scheduler and current learning rates) and `meta.json` (step, the layout that wrote it, its global
batch; `META`). The three trainers (transformer, video tokenizer, upscaler) write and read
checkpoints through these, and publish them with loong_dist/train/checkpoint_mirror.py.

Folders of runs older than layout-free checkpoints hold DeepSpeed's own files (no meta.json):
`is_layout_free` tells them apart, and DeepSpeed's engine.load_checkpoint resumes them on the
layout that wrote them.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint import CheckpointException

from loong_dist.errors import UserError
from loong_dist.parallel.engine import load_checkpoint_file
from loong_dist.parallel.layout_free import adam_step, read_state, write_state
from loong_dist.parallel.process_groups import ParallelGroups

log = logging.getLogger(__name__)

META = "meta.json"
"""A checkpoint's description: step, the layout that wrote it, its global batch."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, quota, a lost mount): one line, the last good
    checkpoint stays the one `latest` names."""


def _first_failure(e: CheckpointException) -> str:
    """The first rank's cause of a failed DCP write, as a short text."""
    failures = getattr(e, "failures", {}) or {}
    for rank in sorted(failures):
        cause = failures[rank]
        cause = getattr(cause, "exc", cause)  # DCP wraps each rank's exception
        return f"rank {rank}: {getattr(cause, 'strerror', None) or cause}"
    return str(e)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def optimizer_client(engine) -> dict:
    """What a resume needs of the optimizer beyond the layout-free moments: Adam's step count,
    the scheduler and the learning rates the scheduler set for the next step."""
    return {"adam_step": adam_step(engine),
            "scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler else None,
            "lr": [g["lr"] for g in engine.optimizer.param_groups]}


def write_checkpoint(folder: Path, engine, model: nn.Module, groups: ParallelGroups, client: dict, meta: dict,
                     node_main: bool) -> None:
    """Write checkpoint `folder` (a collective): the layout-free state from every rank, this rank's
    `client` state with the optimizer's (`optimizer_client`), and `meta` as meta.json from rank 0.
    A folder of the same step left by a killed save is replaced. Raises CheckpointWriteError,
    naming the checkpoint `latest` still names, when a file cannot be written."""
    ckpt_dir = folder.parent
    try:
        if node_main and folder.exists():  # a torn save of this step, from a killed run
            shutil.rmtree(folder)
        if dist.is_initialized():
            dist.barrier()
        write_state(folder, engine, model, groups)
        torch.save({**client, **optimizer_client(engine)}, folder / f"client_rank{_rank():05d}.pt")
        if _rank() == 0:
            (folder / META).write_text(json.dumps({**meta, "format": "layout-free/dcp"}, indent=1) + "\n")
    except (OSError, CheckpointException) as e:  # disk full, quota, a vanished mount
        latest = ckpt_dir / "latest"
        kept = latest.read_text().strip() if latest.exists() else None
        why = e.strerror if isinstance(e, OSError) and e.strerror else _first_failure(e)
        still = f"{latest} still names {kept}, which a restart resumes from" if kept else "no checkpoint was kept yet"
        raise CheckpointWriteError(f"checkpoint {folder.name}: writing {folder} failed ({why}); {still}") from None


def is_layout_free(folder: Path) -> bool:
    return (folder / META).exists()


def read_meta(folder: Path) -> dict:
    return json.loads((folder / META).read_text())


def read_client(folder: Path) -> dict:
    """This rank's client state of a checkpoint (rank 0's where the writing layout had fewer ranks)."""
    path = folder / f"client_rank{_rank():05d}.pt"
    return load_checkpoint_file(str(path if path.exists() else folder / "client_rank00000.pt"))


def read_checkpoint(folder: Path, engine, model: nn.Module, groups: ParallelGroups) -> dict:
    """Load a layout-free checkpoint written on any layout into this rank's model and optimizer (a
    collective): weights, moments, buffers, Adam's step, the scheduler and the learning rates.
    Returns this rank's client state."""
    client = read_client(folder)
    read_state(folder, engine, model, groups, client["adam_step"])
    if client.get("scheduler") is not None and engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(client["scheduler"])
    for group, lr in zip(engine.optimizer.param_groups, client["lr"]):
        group["lr"] = lr
    engine.global_steps = int(client["step"])
    return client


def sample_layout(cfg, groups: ParallelGroups) -> dict:
    """The layout of a trainer that draws whole samples (video tokenizer, upscaler), for meta.json:
    data-parallel ranks, ZeRO stage, and the global batch in samples (micro-batch x ranks x
    accumulation), which decides what each step draws."""
    o = cfg.optim
    return {"parallel": {"dp": groups.dp_size, "zero": cfg.parallel.zero_stage},
            "global_batch": {"samples": o.micro_batch_size * groups.dp_size * o.grad_accum_steps}}


def resume_sampled(folder: Path, engine, model: nn.Module, groups: ParallelGroups, layout: dict) -> dict | None:
    """Resume a tokenizer's or upscaler's checkpoint (a collective; `layout`: this run's
    `sample_layout`). A layout-free one loads on any number of ranks and ZeRO stage, and a changed
    global batch is logged: those trainers draw each step's samples by their place in the global
    batch, so the same global batch continues exactly and another one continues with other draws.
    DeepSpeed's own files (runs before layout-free checkpoints) load on the layout that wrote them.
    Returns the client state, None when there was nothing to load."""
    if not is_layout_free(folder):
        path, client = engine.load_checkpoint(str(folder.parent), tag=folder.name)
        return None if path is None else client
    meta = read_meta(folder)
    if _rank() == 0:
        p0, p1 = meta["parallel"], layout["parallel"]
        g0, g1 = meta["global_batch"]["samples"], layout["global_batch"]["samples"]
        if p0 != p1:
            log.info("checkpoint %s: written on %d rank(s) at ZeRO-%d, resumed on %d at ZeRO-%d", folder.name,
                     p0["dp"], p0["zero"], p1["dp"], p1["zero"])
        if g0 != g1:
            log.warning("checkpoint %s: written with a global batch of %d samples, this run's is %d: it continues "
                        "with other draws (optim.grad_accum_steps x ranks x optim.micro_batch_size = %d continues "
                        "it exactly)", folder.name, g0, g1, g0)
    return read_checkpoint(folder, engine, model, groups)


def read_weights(folder: Path) -> dict[str, Tensor]:
    """The single-device fp32 weights and persistent buffers of a layout-free checkpoint, read in
    this process alone (no collective): what the model's state_dict holds."""
    import torch.distributed.checkpoint as dcp

    meta = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    state = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in meta.items()
             if k.startswith(("model.", "buffer."))}
    dcp.load(state, storage_reader=dcp.FileSystemReader(str(folder)), no_dist=True)
    out: dict[str, Tensor] = {}
    for k in sorted(state):  # a fused parameter's parts #0, #1, ... in order
        name = k.split(".", 1)[1].split("#")[0]
        out[name] = torch.cat([out[name], state[k]]) if name in out else state[k]
    return out


__all__ = ["META", "CheckpointWriteError", "is_layout_free", "optimizer_client", "read_checkpoint", "read_client",
           "read_meta", "read_weights", "resume_sampled", "sample_layout", "write_checkpoint"]

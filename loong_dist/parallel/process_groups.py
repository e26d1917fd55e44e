"""Process groups: the one place that initialises torch.distributed and megatron's parallel_state.

Ranks are laid out as megatron does: tensor-parallel groups are runs of consecutive ranks (inside
a node, on NVLink), data-parallel groups stride across them. The groups are returned in a
`ParallelGroups` value and passed to whatever needs them; model code never asks for a rank.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from loong_dist.errors import UserError


@dataclass(frozen=True)
class ParallelGroups:
    tp_size: int
    """Tensor-parallel degree (ranks that split each layer)."""
    tp_rank: int
    tp_group: dist.ProcessGroup | None
    dp_size: int
    """Data-parallel degree (ranks that split the batch)."""
    dp_rank: int
    dp_group: dist.ProcessGroup | None
    device: torch.device
    """This rank's device: cuda:LOCAL_RANK with NCCL, else cpu with gloo."""


def init_parallel(tp_size: int = 1, backend: str | None = None) -> ParallelGroups:
    """Start torch.distributed (from the launcher's RANK/WORLD_SIZE/MASTER_* variables) and build
    the tensor- and data-parallel groups. NCCL on CUDA, gloo on CPU unless `backend` says otherwise."""
    from megatron.core import parallel_state

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    world = dist.get_world_size()
    if world % tp_size:
        raise ValueError(f"parallel.tp={tp_size} does not divide the world size {world}")
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp_size)
    return ParallelGroups(
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_group=parallel_state.get_tensor_model_parallel_group(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_group=parallel_state.get_data_parallel_group(),
        device=device)


def dp_mean(values: dict[str, float], groups: ParallelGroups) -> dict[str, float]:
    """The mean of each value over the data-parallel ranks (every rank gets it): a step's loss
    over the global batch, where each rank holds its own share's."""
    if not (dist.is_initialized() and groups.dp_size > 1):
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=groups.device)
    dist.all_reduce(t, group=groups.dp_group)
    return dict(zip(values, (t / groups.dp_size).tolist()))


def first_rank_says(flag: bool) -> bool:
    """Rank 0's `flag` on every rank: one decision where each rank's own could differ (a wall-clock
    limit read at slightly different moments), so that no rank stops while another goes on."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def destroy_parallel(keep_process_group: bool = False) -> None:
    """Tear down megatron's groups and torch.distributed; `keep_process_group`: leave the default
    process group to the launcher that created it (Ray Train destroys its own)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized() and not keep_process_group:
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for servers that take a port number (a Ray
    head). Another process may take it before the server binds it: a rendezvous uses `rendezvous_store`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendezvous_store() -> dist.TCPStore:
    """The rendezvous store of a launch on this machine, hosted by the launcher as torchrun's agent
    hosts it: it binds a port the OS picks as it binds (`.port`), so no other process can take that port
    between choosing and binding it (a `free_port` chosen for rank 0 to bind later can be: EADDRINUSE).
    The ranks connect to it as clients (`launcher_variables`); keep it alive until they are done."""
    return dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)


PRELOAD = ["torch", "deepspeed", "megatron.core", "loong_dist.train.trainer"]
"""What every rank imports (about 4 s of CPU each): imported once by the fork server that local
ranks are forked from, where that is safe (`_start_method`)."""


def _start_method() -> str:
    """forkserver on machines without CUDA: one clean process imports `PRELOAD` once (for every
    `launch_local` of this process) and each rank is forked from it, so a rank starts in
    milliseconds instead of re-importing torch and DeepSpeed. spawn where CUDA is: importing
    DeepSpeed may initialise CUDA in the server, and a forked child cannot use a CUDA context."""
    if torch.cuda.is_available():
        return "spawn"
    import multiprocessing

    multiprocessing.set_forkserver_preload(PRELOAD)
    return "forkserver"


def launcher_variables(rank: int, world: int, port: int) -> dict[str, str]:
    """What torchrun sets for a rank on this machine, the rendezvous store (`rendezvous_store`) at
    127.0.0.1:`port` hosted by the launcher, not by rank 0."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank), "TORCHELASTIC_USE_AGENT_STORE": "True"}


def _local_rank(rank: int, world: int, port: int, fn: Callable, args: tuple, errors: str,
                env: dict[str, str], cwd: str) -> None:
    os.chdir(cwd)  # the launcher's folder and environment now, not the fork server's from when it started
    os.environ.clear()
    os.environ.update(env, **launcher_variables(rank, world, port))
    try:
        fn(*args)
    except UserError as e:  # hand the one-line message to the parent, leave without a traceback
        Path(errors, f"rank{rank:05d}").write_text(str(e))
        sys.exit(2)


def launch_local(fn: Callable, nprocs: int, *args) -> None:
    """Run `fn(*args)` in `nprocs` new processes on this machine (`_start_method`), each in this
    process's folder and environment with the launcher variables torchrun would set (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT); an exception in any rank is raised here (a `UserError` as a
    `UserError` with the lowest failing rank's message, so the job still prints one line). `fn` must
    be importable (a module-level function)."""
    import torch.multiprocessing as mp

    store = rendezvous_store()
    with tempfile.TemporaryDirectory(prefix="loong-ranks-") as errors:
        try:
            launcher = (errors, dict(os.environ), os.getcwd())
            mp.start_processes(_local_rank, args=(nprocs, store.port, fn, args, *launcher), nprocs=nprocs, join=True,
                               start_method=_start_method())
        except mp.ProcessExitedException:
            first = sorted(Path(errors).glob("rank*"))
            if first:
                raise UserError(first[0].read_text()) from None
            raise


def run_ranks_here(fn: Callable, nprocs: int, *args) -> None:
    """A job's ranks on this machine: one runs in this very process, as rank 0 of 1 with the
    launcher variables set while it runs (no second interpreter to start); more are started by
    `launch_local`."""
    if nprocs != 1:
        launch_local(fn, nprocs, *args)
        return
    with one_local_rank():
        fn(*args)


@contextmanager
def one_local_rank() -> Iterator[None]:
    """This process as rank 0 of 1 while the block runs: the launcher variables set and their
    rendezvous store hosted here, then both gone (no `MASTER_PORT` left behind for a store that is
    gone, should a second job run in this process). Under a launcher (torchrun, Ray Train: RANK
    set) the process is one of its ranks already, and nothing changes."""
    if "RANK" in os.environ:
        yield
        return
    store = rendezvous_store()
    variables = launcher_variables(0, 1, store.port)
    before = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


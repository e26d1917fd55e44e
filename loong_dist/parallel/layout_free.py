"""Layout-free training state: the model's fp32 weights and Adam's moments as single-device
tensors, written sharded by every rank with torch.distributed.checkpoint (DCP) and read back on
any (TP, DP, ZeRO stage) layout, on the same or another number of processes.

    write_state(folder, engine, model, groups)          # a collective: every rank writes its share
    read_state(folder, engine, model, groups, step)     # a collective, on any layout; Adam at `step`
    full_state_dict(engine, model, groups)              # a collective: the single-device fp32 weights

Names and shapes are the single-device model's (TP=1, DP=1):

    model.<param>              float32 master weights
    optim.<param>.exp_avg      Adam's first moment
    optim.<param>.exp_avg_sq   Adam's second moment
    buffer.<name>              a persistent buffer, as the model holds it (the same on every rank)

A fused SwiGLU [gate; up] weight is two tensors, <param>#0 and <param>#1: its tensor-parallel
shards interleave the two matrices, so the fused global tensor would not be their concatenation.

Writing: DeepSpeed assembles this tensor-parallel rank's whole fp32 tensor of each parameter from
its ZeRO partitions (one all-reduce over the data-parallel group, one parameter at a time), and the
rank keeps its data-parallel block of rows: rank (t, d) writes rows block d of tensor-parallel
shard t. Every byte is written once, by all ranks in parallel, and no rank holds more than its
1/(TP x DP) of the state plus one parameter. Reading: each rank reads its tensor-parallel shard of
a few parameters at a time, whole, whatever layout wrote it (DCP reads the overlapping blocks), and
DeepSpeed keeps its ZeRO partition of it.

Why DCP: it reshards at read time from each block's offsets, writes from every rank at once, and
needs nothing of the model but shapes. DeepSpeed's universal checkpoint needs an offline pass over
all of a run's shards on one machine (ds_to_universal) before a new layout can load it, does not
cover ZeRO stage 0, and reshapes TP only through Megatron-DeepSpeed's parameter-name patterns;
megatron-core's dist-checkpointing wants its own distributed optimizer, and our optimizer is
DeepSpeed's ZeRO.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from loong_dist.parallel.process_groups import ParallelGroups

MOMENTS = ("exp_avg", "exp_avg_sq")
READ_BATCH_ELEMENTS = 1 << 27
"""Parameters read per DCP call, in elements of their TP shards (x3 with both moments): bounds
the memory of a read (0.5 GiB of weights, 1.5 GiB with the moments)."""


def local_shape(param: nn.Parameter) -> tuple[int, ...]:
    """This rank's tensor-parallel shard of a parameter (ZeRO-3 keeps the real shape in ds_shape)."""
    return tuple(getattr(param, "ds_shape", None) or param.shape)


@dataclass(frozen=True)
class Entry:
    key: str
    """The parameter's name in the single-device model."""
    param: nn.Parameter
    tp_dim: int | None
    """The dimension tensor parallelism splits (None: every TP rank holds it whole)."""
    parts: int
    """Matrices stacked along dim 0 of the parameter (SwiGLU's [gate; up]: 2), stored apart on any
    layout (a TP shard holds [its gate rows; its up rows])."""

    @property
    def local_shape(self) -> tuple[int, ...]:
        return local_shape(self.param)

    def names(self, kind: str | None) -> list[str]:
        base = f"model.{self.key}" if kind is None else f"optim.{self.key}.{kind}"
        return [base] if self.parts == 1 else [f"{base}#{i}" for i in range(self.parts)]


def entries(model: nn.Module, groups: ParallelGroups) -> list[Entry]:
    from loong_dist.parallel.tensor_parallel import shard_dim

    out = []
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            dim = shard_dim(module) if (pname == "weight" and groups.tp_size > 1) else None
            parts = getattr(module, "fused_parts", 1) if pname == "weight" else 1
            out.append(Entry(f"{name}.{pname}" if name else pname, param, dim, parts))
    return out


_MESH: list = []
"""[(default process group, tp, dp, device type), mesh] of the last mesh built: building one is a
collective that makes a process group per mesh dimension, so a run builds it once. Holding the
group object keeps a later default group (a test's next launch) from being mistaken for it."""


def buffers(model: nn.Module) -> dict[str, Tensor]:
    """The model's persistent buffers by their layout-free names (a fitted filter, not a RoPE table)."""
    out = {}
    for name, module in model.named_modules():
        for key, buffer in module.named_buffers(recurse=False):
            if buffer is not None and key not in module._non_persistent_buffers_set:
                out[f"buffer.{name}.{key}" if name else f"buffer.{key}"] = buffer
    return out


def _mesh(groups: ParallelGroups):
    """A (tp, dp) device mesh over the megatron layout: TP groups are runs of consecutive ranks."""
    from torch.distributed.device_mesh import DeviceMesh

    tp, dp = groups.tp_size, groups.dp_size
    if dist.get_rank() != groups.dp_rank * tp + groups.tp_rank:
        raise RuntimeError(f"rank {dist.get_rank()} is not dp_rank x tp + tp_rank ({groups.dp_rank} x {tp} + "
                           f"{groups.tp_rank}): the mesh assumes megatron's layout")
    key = (dist.distributed_c10d._get_default_group(), tp, dp, groups.device.type)
    if not _MESH or _MESH[0][0] is not key[0] or _MESH[0][1:] != key[1:]:
        ranks = torch.arange(tp * dp).reshape(dp, tp).T.contiguous()  # mesh[t][d] = d * tp + t
        _MESH[:] = [key, DeviceMesh(groups.device.type, ranks, mesh_dim_names=("tp", "dp"))]
    return _MESH[1]


def _global_shape(local: tuple[int, ...], dim: int | None, tp: int) -> tuple[int, ...]:
    return local if dim is None else tuple(n * tp if i == dim else n for i, n in enumerate(local))


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))


def _placements(dim: int | None, over_dp):
    from torch.distributed.tensor import Replicate, Shard

    return (Replicate() if dim is None else Shard(dim), over_dp)


def _rows(t: Tensor, rank: int, size: int) -> Tensor:
    """Rows block `rank` of `size`, as torch.chunk (and DTensor's Shard) cut them: ceil(n / size)
    rows each, the last blocks shorter or empty."""
    n = t.shape[0]
    step = -(-n // size)
    start = min(n, rank * step)
    return t.narrow(0, start, max(0, min(n, start + step) - start))


def _base_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer that holds Adam's state: ZeRO and DeepSpeed's bf16 optimizer wrap it."""
    opt = engine.optimizer
    return getattr(opt, "optimizer", opt)


def _zero_partitioned(param: nn.Parameter) -> bool:
    """Whether DeepSpeed keeps this parameter's fp32 state in its own partitions (ZeRO 1-3 or its
    bf16 optimizer) rather than in the parameter and a torch optimizer's state (ZeRO 0: fp32, or
    bf16 with a master beside it, `_master`)."""
    # `_hp_mapping` is None on a rank whose partition holds none of the parameter: still ZeRO's
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def _master(engine, param: nn.Parameter) -> tuple[Tensor, int] | None:
    """Where DeepSpeed's fp16/bf16 optimizer without ZeRO (bf16 at stage 0) keeps `param`'s fp32
    master: the tensor Adam updates and keys its state by (a master per parameter, or one flat
    master per group), and `param`'s offset in it. None where the parameter is its own master
    (fp32) or ZeRO keeps it. Those optimizers swap the masters into the torch optimizer's groups,
    so the model's low-precision parameter has no Adam state of its own."""
    opt = engine.optimizer
    groups = getattr(opt, "fp16_groups", None)
    masters = getattr(opt, "fp32_groups", None) or getattr(opt, "fp32_groups_flat", None)
    if groups is None or masters is None or _zero_partitioned(param):
        return None
    for group, master in zip(groups, masters):  # FP16_UnfusedOptimizer: lists; FP16_Optimizer: flat
        offset = 0
        for i, p in enumerate(group):
            if p is param:
                return (master[i], 0) if isinstance(master, list) else (master, offset)
            offset += p.numel()
    return None


def _in_master(t: Tensor, offset: int, param: nn.Parameter) -> Tensor:
    """`param`'s elements of a master (or of its Adam moment), shaped as `param`."""
    return t.detach().view(-1).narrow(0, offset, param.numel()).view(param.shape)


def unsharded_master(engine, param: nn.Parameter) -> Tensor | None:
    """`param`'s fp32 master where DeepSpeed keeps one without ZeRO (bf16 at stage 0), else None."""
    where = _master(engine, param)
    return None if where is None else _in_master(where[0], where[1], param)


@torch.no_grad()
def full_state_dict(engine, model: nn.Module, groups: ParallelGroups) -> dict[str, Tensor]:
    """The single-device fp32 parameters, from DeepSpeed's fp32 master weights where it keeps them
    (ZeRO 1-3, bf16): gathered over the data-parallel shards by DeepSpeed, then over the
    tensor-parallel shards here. A collective: every rank calls it."""
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            key = f"{name}.{pname}" if name else pname
            t = safe_get_full_fp32_param(param)
            if t is None:  # no ZeRO: the parameter itself, or its master where bf16 keeps one beside it
                t = unsharded_master(engine, param)
            t = (param if t is None else t).detach().float()
            if pname == "weight" and groups.tp_size > 1:
                from loong_dist.parallel.tensor_parallel import gather_weight
                t = gather_weight(module, t, groups)
            out[key] = t.cpu().clone()
    return out


@torch.no_grad()
def single_device_state(engine, model: nn.Module, groups: ParallelGroups) -> dict[str, Tensor]:
    """What a fresh single-device copy of `model` loads: `full_state_dict` and the model's own
    buffers (ZeRO partitions parameters only; the module's state_dict holds empty stand-ins for
    them at ZeRO-3). A collective: every rank calls it."""
    state = full_state_dict(engine, model, groups)
    for key, value in model.state_dict().items():
        state.setdefault(key, value.detach().cpu().clone())
    return state


def _full(engine, param: nn.Parameter, kind: str | None) -> Tensor:
    """This TP rank's whole fp32 tensor of `param` (kind None) or of one of its Adam moments. A
    collective over the data-parallel group when ZeRO partitions it."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    if _zero_partitioned(param):
        t = safe_get_full_fp32_param(param) if kind is None else safe_get_full_optimizer_state(param, kind)
    else:
        key, offset = _master(engine, param) or (param, 0)
        if kind is None:
            t = _in_master(key, offset, param)
        else:
            state = _base_optimizer(engine).state.get(key, {})
            t = _in_master(state[kind], offset, param) if kind in state else torch.zeros(param.shape)
    return t.detach().float().reshape(local_shape(param))


def adam_step(engine) -> int:
    """Optimizer steps Adam has taken (its bias correction): the same on every parameter."""
    base = _base_optimizer(engine)
    for state in base.state.values():
        if "step" in state:
            return int(float(state["step"]))
    return int(next((g["step"] for g in base.param_groups if "step" in g), 0))


def write_state(folder: Path, engine, model: nn.Module, groups: ParallelGroups) -> None:
    """Write the layout-free weights and moments into `folder` (a collective over every rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import DTensor, Shard

    # DeepSpeed links each parameter's fragment to Adam's state after the first param group's first
    # step, before the other groups have one: linking again (states made where Adam has none yet)
    # gives every parameter its moments.
    _materialise_optimizer_state(engine, adam_step(engine))
    mesh = _mesh(groups)
    state = {}
    for e in entries(model, groups):
        for kind in (None, *MOMENTS):
            full = _full(engine, e.param, kind)
            parts = full.chunk(e.parts, 0) if e.parts > 1 else (full,)
            for name, part in zip(e.names(kind), parts):
                shape = _global_shape(tuple(part.shape), e.tp_dim, groups.tp_size)
                mine = _rows(part, groups.dp_rank, groups.dp_size).contiguous().clone()
                state[name] = DTensor.from_local(mine, mesh, _placements(e.tp_dim, Shard(0)), run_check=False,
                                                 shape=torch.Size(shape), stride=_contiguous_stride(shape))
    state.update({k: v.detach().clone() for k, v in buffers(model).items()})  # replicated: DCP writes one copy
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder), single_file_per_rank=True, sync_files=True))


def _materialise_optimizer_state(engine, step: int) -> None:
    """Give Adam a state for every tensor it updates (it makes them lazily, at its first step),
    with `step` steps taken, and (re)link DeepSpeed's parameter fragments to it."""
    base = _base_optimizer(engine)
    opt = engine.optimizer
    # ZeRO-3 puts each fp32 flat partition into its param group only for the duration of its step
    flats = getattr(opt, "fp32_partitioned_groups_flat", None)
    by_group = [list(g["params"]) for g in base.param_groups]
    if flats is not None:
        for sub_group, flat in enumerate(flats):
            by_group[opt.sub_group_to_group_id[sub_group]].append(flat)
    for group, tensors in zip(base.param_groups, by_group):
        fused = bool(group.get("fused")) or bool(group.get("capturable"))
        for p in tensors:
            state = base.state[p]
            for kind in MOMENTS:
                if kind not in state:
                    state[kind] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if isinstance(state.get("step"), Tensor):
                state["step"].fill_(float(step))
            else:
                state["step"] = (torch.tensor(float(step), dtype=torch.float32, device=p.device) if fused
                                 else torch.tensor(float(step), dtype=torch.float32))
        if "step" in group:  # DeepSpeed's FusedAdam counts per group
            group["step"] = step
    if hasattr(opt, "_lazy_init_hp_params_optimizer_state"):  # ZeRO 1-2 and bf16: link fragments to the state
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()


def _set(engine, param: nn.Parameter, kind: str | None, value: Tensor) -> None:
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if _zero_partitioned(param):
        if kind is None:
            safe_set_full_fp32_param(param, value)
            if not hasattr(param, "ds_id"):  # ZeRO 1-2 keep whole low-precision weights beside the masters
                param.data.copy_(value.to(param.dtype).reshape(param.shape))
        else:
            safe_set_full_optimizer_state(param, value, kind)
        return
    key, offset = _master(engine, param) or (param, 0)
    if kind is None:
        param.data.copy_(value.reshape(param.shape))
        if key is not param:
            _in_master(key, offset, param).copy_(value.reshape(param.shape))
    else:
        _in_master(_base_optimizer(engine).state[key][kind], offset, param).copy_(value.reshape(param.shape))


def _batches(items: list[Entry], limit: int) -> Iterator[list[Entry]]:
    batch, size = [], 0
    for e in items:
        n = math.prod(e.local_shape)
        if batch and size + n > limit:
            yield batch
            batch, size = [], 0
        batch.append(e)
        size += n
    if batch:
        yield batch


def stored_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor of a layout-free state and its single-device shape (from its metadata)."""
    import torch.distributed.checkpoint as dcp

    meta = dcp.FileSystemReader(str(folder)).read_metadata()
    return {k: tuple(v.size) for k, v in meta.state_dict_metadata.items() if hasattr(v, "size")}


def read_state(folder: Path, engine, model: nn.Module, groups: ParallelGroups, step: int,
               moments: bool = True) -> None:
    """Load a layout-free state written on any layout into this rank's model and optimizer (a
    collective); Adam continues at `step` steps. `moments=False` loads the weights only."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import DTensor, Replicate

    from loong_dist.errors import UserError

    items = entries(model, groups)
    stored = stored_shapes(folder)
    kinds = (None, *MOMENTS) if moments else (None,)
    for e in items:  # one line for a model that does not fit, before any collective read
        for kind in kinds:
            local = e.local_shape
            part = local if e.parts == 1 else (local[0] // e.parts, *local[1:])
            want = _global_shape(part, e.tp_dim, groups.tp_size)
            for name in e.names(kind):
                if name not in stored:
                    raise UserError(f"{folder}: the checkpoint has no {name} (a checkpoint of another model?)")
                if stored[name] != want:
                    raise UserError(f"{folder}: {name} has shape {list(stored[name])}, this model's is {list(want)}")
    held = buffers(model)
    for name, value in held.items():
        if stored.get(name) != tuple(value.shape):
            raise UserError(f"{folder}: " + (f"the checkpoint has no {name}" if name not in stored else
                                             f"{name} has shape {list(stored[name])}, this model's is "
                                             f"{list(value.shape)}"))
    if moments:
        _materialise_optimizer_state(engine, step)
    mesh = _mesh(groups)
    for batch in _batches(items, READ_BATCH_ELEMENTS):
        state = {}
        for e in batch:
            for kind in kinds:
                for name in e.names(kind):
                    shape = stored[name]
                    local = shape if e.tp_dim is None else tuple(
                        n // groups.tp_size if i == e.tp_dim else n for i, n in enumerate(shape))
                    state[name] = DTensor.from_local(torch.empty(local, dtype=torch.float32, device=groups.device),
                                                     mesh, _placements(e.tp_dim, Replicate()), run_check=False,
                                                     shape=torch.Size(shape), stride=_contiguous_stride(shape))
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(folder)))
        for e in batch:
            for kind in kinds:
                parts = [state[name].to_local() for name in e.names(kind)]
                value = parts[0] if e.parts == 1 else torch.cat(parts, 0)
                _set(engine, e.param, kind, value)
    if held:
        state = {k: torch.empty_like(v) for k, v in held.items()}
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(folder)))
        for k, v in state.items():
            held[k].copy_(v)
    if hasattr(engine.optimizer, "fp16_partitioned_groups_flat"):  # ZeRO-3: low-precision partitions from fp32
        opt = engine.optimizer
        for lp, hp in zip(opt.fp16_partitioned_groups_flat, opt.fp32_partitioned_groups_flat):
            lp.data.copy_(hp.data)


__all__ = ["adam_step", "buffers", "entries", "full_state_dict", "read_state", "single_device_state", "stored_shapes",
           "unsharded_master", "write_state"]

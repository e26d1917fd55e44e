"""Tensor parallelism with megatron-core layers, plugged into the single-device model by spec.

    spec = megatron_spec(groups, params_dtype=torch.float32)
    model = Transformer(cfg, layout.padded_vocab_size, spec)     # this rank's shards only
    load_sharded(model, full_state_dict, groups)                 # from a TP=1 checkpoint

Column layers split output features (attention q/k/v, SwiGLU gate/up, the output head over the
vocabulary); row layers split input features and all-reduce their outputs (attention out,
SwiGLU down); the embedding splits the vocabulary; the loss is megatron's vocab-parallel
cross-entropy, so full logits are never gathered. Shards are contiguous blocks, so a head (or a
vocabulary range) lives whole on one rank. A fused layer that stacks matrices (SwiGLU's
[gate; up], `fused_parts = 2`) is split per matrix: the rank holds [its gate rows; its up rows].
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import ModelParallelConfig
from megatron.core.tensor_parallel import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                           copy_to_tensor_model_parallel_region, vocab_parallel_cross_entropy)
from torch import Tensor, nn

from loong_dist.config import ModelConfig
from loong_dist.models.ar.model import CodeLevelRows, LayerSpec
from loong_dist.parallel.process_groups import ParallelGroups


class ColumnLinear(ColumnParallelLinear):
    """Megatron's column-parallel linear returning a tensor (bias-free, output left split)."""

    def forward(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        return super().forward(x, weight)[0]


class RowLinear(RowParallelLinear):
    """Megatron's row-parallel linear returning a tensor (input split, output all-reduced)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)[0]


class LevelVocabEmbedding(CodeLevelRows, VocabParallelEmbedding):
    """The vocabulary-parallel embedding plus each id's level sums (model.code_level_embeddings).
    The sums are added to the all-reduced output: replicated vectors and the whole table on every
    rank, and every rank's gradient of them is the same (the residual stream's is)."""

    def forward(self, ids: Tensor) -> Tensor:
        return super().forward(ids) + self.level_sums(ids).to(self.weight.dtype)


class LevelColumnHead(CodeLevelRows, ColumnLinear):
    """The column-parallel head whose rows (this rank's vocabulary block) each add their levels'
    vectors. The vectors are replicated but each rank's rows reach only its own ids, so their
    gradient is summed over the tensor-parallel group (megatron's copy-to-region: identity forward,
    all-reduce backward)."""

    def forward(self, x: Tensor) -> Tensor:
        vectors = copy_to_tensor_model_parallel_region(self.level_vectors, group=self.tp_group)
        return super().forward(x, weight=self.weight + self.level_sums(vectors=vectors).to(self.weight.dtype))


def check_tp(cfg: ModelConfig, vocab_size: int, tp: int) -> None:
    for name, value in (("model.n_heads", cfg.n_heads), ("model.n_kv_heads", cfg.n_kv_heads),
                        ("model.ffn_dim", cfg.ffn_dim), ("padded vocabulary", vocab_size)):
        if value % tp:
            raise ValueError(f"{name}={value} is not divisible by the tensor-parallel degree {tp}")


def megatron_spec(groups: ParallelGroups, params_dtype: torch.dtype = torch.float32) -> LayerSpec:
    mp = ModelParallelConfig(tensor_model_parallel_size=groups.tp_size, use_cpu_initialization=True,
                             params_dtype=params_dtype, perform_initialization=True)
    group = groups.tp_group

    def column(d_in, d_out, init):
        return ColumnLinear(d_in, d_out, config=mp, init_method=init, bias=False, gather_output=False, tp_group=group)

    def row(d_in, d_out, init):
        return RowLinear(d_in, d_out, config=mp, init_method=init, bias=False, input_is_parallel=True,
                         skip_bias_add=True, tp_group=group)

    def embedding(n, d, init, code_levels=None):
        if code_levels is None:
            return VocabParallelEmbedding(n, d, init_method=init, config=mp, tp_group=group)
        layer = LevelVocabEmbedding(n, d, init_method=init, config=mp, tp_group=group)
        layer.add_code_levels(code_levels, d)
        return layer

    def head(d_in, d_out, init, code_levels=None):
        if code_levels is None:
            return column(d_in, d_out, init)
        layer = LevelColumnHead(d_in, d_out, config=mp, init_method=init, bias=False, gather_output=False,
                                tp_group=group)
        block = d_out // groups.tp_size  # this rank's ids, as the weight's rows
        layer.add_code_levels(code_levels, d_in, slice(groups.tp_rank * block, (groups.tp_rank + 1) * block))
        return layer

    def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
        return vocab_parallel_cross_entropy(logits, targets)

    def gather_logits(logits: Tensor) -> Tensor:
        """All-gather of the split vocabulary (torch.distributed's, not megatron's mapping: that one
        allocates its output on the current CUDA device, and the CPU layouts run on gloo)."""
        if groups.tp_size == 1:
            return logits
        parts = [torch.empty_like(logits) for _ in range(groups.tp_size)]
        dist.all_gather(parts, logits.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    return LayerSpec(column_linear=column, row_linear=row, embedding=embedding, lm_head=head,
                     cross_entropy=cross_entropy, gather_logits=gather_logits)


def shard_dim(module: nn.Module) -> int | None:
    """The weight dimension a parallel layer splits (None: replicated)."""
    if isinstance(module, (ColumnParallelLinear, VocabParallelEmbedding)):
        return 0
    if isinstance(module, RowParallelLinear):
        return 1
    return None


def shard_weight(module: nn.Module, full: Tensor, tp: int, rank: int) -> Tensor:
    """This rank's block of a single-device weight of `module`: a contiguous block along
    `shard_dim`, taken from each of the `fused_parts` stacked matrices (e.g. SwiGLU's [gate; up])."""
    dim = shard_dim(module)
    if dim is None or tp == 1:
        return full
    parts = getattr(module, "fused_parts", 1)
    return torch.cat([part.chunk(tp, dim)[rank] for part in full.chunk(parts, dim)], dim)


def unshard_weight(module: nn.Module, shards: list[Tensor]) -> Tensor:
    """Inverse of `shard_weight`: the single-device weight from every rank's block, in rank order."""
    dim = shard_dim(module)
    if dim is None or len(shards) == 1:
        return shards[0]
    parts = getattr(module, "fused_parts", 1)
    return torch.cat([shard.chunk(parts, dim)[i] for i in range(parts) for shard in shards], dim)


@torch.no_grad()
def load_sharded(model: nn.Module, full_state: dict[str, Tensor], groups: ParallelGroups) -> None:
    """Load a single-device (TP=1) state dict into this rank's shards."""
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            key = f"{name}.{pname}" if name else pname
            full = full_state[key]
            if pname == "weight":
                full = shard_weight(module, full, groups.tp_size, groups.tp_rank)
            if full.shape != param.shape:
                raise ValueError(f"{key}: shard shape {tuple(full.shape)} does not fit {tuple(param.shape)}")
            param.copy_(full)


def gather_weight(module: nn.Module, t: Tensor, groups: ParallelGroups) -> Tensor:
    """The single-device tensor of a weight (or its gradient) `t` of `module`: all-gathered
    over the tensor-parallel group when the layer splits it. A collective over that group."""
    import torch.distributed as dist

    if shard_dim(module) is None or groups.tp_size == 1:
        return t
    shards = [torch.empty_like(t) for _ in range(groups.tp_size)]
    dist.all_gather(shards, t.contiguous(), group=groups.tp_group)
    return unshard_weight(module, shards)


@torch.no_grad()
def gather_full(model: nn.Module, groups: ParallelGroups, grads: bool = False) -> dict[str, Tensor]:
    """The single-device state dict (or gradients) assembled from every rank's shards."""
    out = {}
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            key = f"{name}.{pname}" if name else pname
            t = param.grad if grads else param
            if pname == "weight":
                t = gather_weight(module, t, groups)
            out[key] = t.detach().clone()
    return out

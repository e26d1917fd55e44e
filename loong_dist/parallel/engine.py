"""DeepSpeed ZeRO around the (tensor-parallel) transformer.

    groups = init_parallel(cfg.parallel.tp)
    model = build_model(cfg.model, layout.padded_vocab_size, groups, cfg.parallel)
    engine = build_engine(model, cfg, groups)
    loss = engine(tokens, targets).sum() / n_valid ; engine.backward(loss) ; engine.step()

The order matters: tensor parallelism is applied when the model is built (its layers come from
the megatron spec), activation checkpointing is switched on per block, and DeepSpeed wraps the
result last, so ZeRO shards the tensor-parallel shards over the data-parallel group only. Megatron's
`parallel_state` reaches DeepSpeed as its `mpu` through `MegatronMPU`, which maps the
`get_model_parallel_*` names DeepSpeed asks for onto the tensor-parallel group.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import torch
from torch import nn

from loong_dist.config import Config, ModelConfig, OptimConfig, ParallelConfig
from loong_dist.errors import ConfigError
from loong_dist.models.ar.model import LOCAL_SPEC, Transformer
from loong_dist.parallel.process_groups import ParallelGroups
from loong_dist.precision import resolve_precision

PROJECT_CACHE = Path(__file__).resolve().parents[2] / ".cache"


class MegatronMPU:
    """The model-parallel unit DeepSpeed expects, over megatron's tensor/data-parallel groups."""

    def __init__(self, groups: ParallelGroups):
        self.g = groups

    def get_model_parallel_rank(self):
        return self.g.tp_rank

    def get_model_parallel_world_size(self):
        return self.g.tp_size

    def get_model_parallel_group(self):
        return self.g.tp_group

    def get_data_parallel_rank(self):
        return self.g.dp_rank

    def get_data_parallel_world_size(self):
        return self.g.dp_size

    def get_data_parallel_group(self):
        return self.g.dp_group

    # Newer DeepSpeed code paths ask for the tensor-parallel names directly.
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group


def use_bf16(parallel: ParallelConfig, device: torch.device) -> bool:
    if resolve_precision(parallel.precision, device) != "bf16":
        return False
    return device.type == "cpu" or torch.cuda.is_bf16_supported()


def build_model(cfg: ModelConfig, vocab_size: int, groups: ParallelGroups, parallel: ParallelConfig,
                code_levels: torch.Tensor | None = None) -> Transformer:
    """apply_tp (the spec) -> apply_ac (activation checkpointing) -> apply_compile (per block, in
    place, so parameter names stay); DeepSpeed comes after. `code_levels`: see Transformer."""
    if groups.tp_size > 1:
        from loong_dist.parallel.tensor_parallel import check_tp, megatron_spec
        check_tp(cfg, vocab_size, groups.tp_size)
        spec = megatron_spec(groups)
    else:
        spec = LOCAL_SPEC
    model = Transformer(cfg, vocab_size, spec, code_levels)
    model.checkpoint_activations = parallel.activation_checkpointing
    model = model.to(groups.device)
    if parallel.compile:
        for block in model.blocks:  # one graph serves every block: same code, parameters as inputs
            block.compile()
    return model


def deepspeed_config(cfg: Config, groups: ParallelGroups) -> dict:
    o, p = cfg.optim, cfg.parallel
    bf16 = use_bf16(p, groups.device)
    return {
        # The trainer owns the accumulation: a step runs as many micro-batches as the global batch
        # needs on this rank (they vary by bucket), each backward accumulates locally, and one
        # step() reduces and updates (DeepSpeed's unmanaged gradient accumulation).
        "managed_gradient_accumulation": False,
        "train_micro_batch_size_per_gpu": o.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": o.micro_batch_size * groups.dp_size,
        "gradient_clipping": o.grad_clip,
        "bf16": {"enabled": bf16},
        "zero_optimization": {"stage": p.zero_stage},
        **fp32_gradients(cfg, bf16),
        "optimizer": {"type": "AdamW", "params": optimizer_params(cfg)},
        **({} if o.decay_steps else {"scheduler": {"type": "WarmupCosineLR", "params": {
            # DeepSpeed refuses 0 warm-up steps: no warm-up is one step that starts at the peak.
            "total_num_steps": o.steps, "warmup_num_steps": max(1, o.warmup_steps),
            "warmup_min_ratio": 0.0 if o.warmup_steps else 1.0, "cos_min_ratio": o.min_lr_ratio,
            "warmup_type": "linear"}}}),
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }


def wsd_factor(step: int, cfg: OptimConfig) -> float:
    """Learning rate over its peak after `step` optimizer steps, warmup-stable-decay
    (`optim.decay_steps` > 0): linear warm-up as DeepSpeed's WarmupCosineLR does it, the peak, then
    a cosine from the peak to min_lr_ratio over the last decay_steps steps."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_start = cfg.steps - cfg.decay_steps
    if step < decay_start:
        return 1.0
    t = min(1.0, (step - decay_start) / cfg.decay_steps)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def lr_scheduler(cfg: Config):
    """None (DeepSpeed builds WarmupCosineLR from the config), or with optim.decay_steps the
    warmup-stable-decay schedule as a callable DeepSpeed applies to its optimizer. Its state in a
    checkpoint is the step count; the shape comes from the config of the run that resumes."""
    if not cfg.optim.decay_steps:
        return None
    o = cfg.optim
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(wsd_factor, cfg=o))


def fp32_gradients(cfg: Config, bf16: bool) -> dict:
    """DeepSpeed settings that keep bf16 gradients in float32 from backward to the optimizer:
    summed over micro-batches and reduced over the data-parallel ranks in float32, as Megatron-LM
    does for bf16 (`accumulate_allreduce_grads_in_fp32`).

    DeepSpeed's default sums and reduces them in bf16, rounding every partial sum to 8 significant
    bits: after 8 micro-batches the gradient was off by 2e-3..9e-3 of its largest entry, and over
    three ranks by several bf16 steps (tests). With `data_types.grad_accum_dtype=fp32` ZeRO-1 runs
    DeepSpeed's BF16_Optimizer and ZeRO-2/3 keep float32 gradient partitions, each reduced in
    float32 (`communication_data_type`). ZeRO-2's reduce-scatter path still summed in bf16 (off
    by 5e-3 over three ranks), so stage 2 reduces with all-reduce instead (`reduce_scatter:
    false`): twice the gradient traffic of a reduce-scatter, on top of float32's doubling - the
    price of exact gradients on a cluster; stage 1 costs the same. DeepSpeed has no float32
    gradients at stage 0 with bf16 weights (an unsupported mix): there the reduction runs in
    float32 and the result is rounded once to bf16. On one CPU rank the casts cost about a tenth
    of a 125m step."""
    if not bf16:
        return {}
    if cfg.parallel.zero_stage == 0:
        return {"communication_data_type": "fp32"}
    out = {"data_types": {"grad_accum_dtype": "fp32"}, "communication_data_type": "fp32"}
    if cfg.parallel.zero_stage == 2:
        out["zero_optimization"] = {"stage": 2, "reduce_scatter": False}
    return out


def optimizer_params(cfg: Config) -> dict:
    """DeepSpeed's AdamW parameters, with torch's own AdamW (`torch_adam`) and `fused=True`: one
    kernel per parameter group, on CUDA and on CPU alike. DeepSpeed's FusedAdam would be built
    from source by every node at its first start (nvcc and ninja on each one), and 0.19.8's
    builder fails on a `TORCH_CUDA_ARCH_LIST` with an arch suffix ("9.0a", set on an H200 image:
    ValueError "invalid literal for int() ... '0a'"). On CPU torch's default loop allocates several
    whole-partition temporaries (ZeRO hands the optimizer one flat fp32 partition) and spent a
    quarter of a 125m step on them."""
    o = cfg.optim
    return {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay,
            "torch_adam": True, "fused": True}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linears, embeddings), none on norm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model: nn.Module, cfg: Config, groups: ParallelGroups):
    """DeepSpeed engine (ZeRO stage, AdamW, warm-up + cosine, clipping, accumulation, bf16)."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(PROJECT_CACHE / "torch_extensions"))
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, cfg.optim.weight_decay),
                                           config=deepspeed_config(cfg, groups), mpu=MegatronMPU(groups),
                                           lr_scheduler=lr_scheduler(cfg), dist_init_required=False)
    engine.checkpoint_engine = weights_only_checkpoint_engine(engine)
    if groups.dp_size == 1 and cfg.parallel.zero_stage == 0:
        # Without ZeRO, DeepSpeed all-reduces the gradients after backward through flat buffers
        # (flatten, all-reduce, unflatten: two copies of every gradient); over one rank that is a
        # sum of one term. ZeRO stages reduce inside their optimizers and keep their path.
        engine.enable_backward_allreduce = False
    return engine


def load_checkpoint_file(path: str, map_location=None):
    """One DeepSpeed checkpoint file through torch.load(weights_only=True).

    DeepSpeed 0.19 unpickles its checkpoint files (weights_only=False), so a checkpoint folder
    from elsewhere could run code. Ours hold tensors, plain Python values (the trainer keeps its
    RNG and loader state as such) and three DeepSpeed types, allowed by name; anything else in a
    file is refused by torch's restricted unpickler (pickle.UnpicklingError)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(path, map_location=map_location, weights_only=True)


def weights_only_checkpoint_engine(engine):
    """The engine's torch checkpoint engine, loading through `load_checkpoint_file`."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return load_checkpoint_file(path, map_location)

    current = engine.checkpoint_engine
    if type(current) is not TorchCheckpointEngine:  # a decoupled or Nebula engine was configured: keep it
        return current
    safe = WeightsOnlyCheckpointEngine.__new__(WeightsOnlyCheckpointEngine)
    safe.__dict__.update(current.__dict__)
    return safe

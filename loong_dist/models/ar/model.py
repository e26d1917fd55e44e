"""Decoder-only transformer of the Llama family over the unified text + video sequence.

RMSNorm pre-norm blocks, rotary positions (half-split pairs, as in Llama), SwiGLU MLP, causal
scaled-dot-product attention with grouped-query heads. Single-device math: the layers that a
tensor-parallel run splits (attention and MLP projections, the embedding, the output head and
its cross-entropy) come in through a `LayerSpec`. `LOCAL_SPEC` builds plain torch layers;
`loong_dist.parallel.tensor_parallel` builds megatron-core's parallel ones. The model reads the
number of heads on this rank from the projection's output width, so it never asks about ranks.

Notation: b batch, s sequence, h hidden (dim), n heads (on this rank), k key/value heads (on
this rank), d head width, v vocabulary (on this rank), f SwiGLU width (on this rank).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from loong_dist.config import ModelConfig
from loong_dist.models.ar.layout import IGNORE

Init = Callable[[Tensor], None]


@dataclass(frozen=True)
class LayerSpec:
    """Builders for the layers that tensor parallelism splits; each takes (in, out, init)."""

    column_linear: Callable[[int, int, Init], nn.Module]
    """y = x W^T without bias; under TP the output features are split across ranks."""
    row_linear: Callable[[int, int, Init], nn.Module]
    """y = x W^T without bias; under TP the input features are split and the outputs summed."""
    embedding: Callable[[int, int, Init], nn.Module]
    """Token embedding (vocab, dim); under TP the vocabulary is split."""
    lm_head: Callable[[int, int, Init], nn.Module]
    """Output head (dim -> vocab); under TP its logits stay split over the vocabulary."""
    cross_entropy: Callable[[Tensor, Tensor], Tensor]
    """(logits (..., v), targets (...)) -> per-token loss (...); under TP over split logits."""


def _linear(d_in: int, d_out: int, init: Init) -> nn.Module:
    layer = nn.Linear(d_in, d_out, bias=False)
    init(layer.weight)
    return layer


def _embedding(n: int, d: int, init: Init) -> nn.Module:
    layer = nn.Embedding(n, d)
    init(layer.weight)
    return layer


def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)


LOCAL_SPEC = LayerSpec(column_linear=_linear, row_linear=_linear, embedding=_embedding, lm_head=_linear,
                       cross_entropy=_cross_entropy)


def normal_init(std: float) -> Init:
    return lambda w: nn.init.normal_(w, mean=0.0, std=std)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_table(head_dim: int, max_seq_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (max_seq_len, head_dim / 2), in float32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (b, s, n, d) by position: pairs are (i, i + d/2). cos, sin: (s, d/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # (1, s, 1, d/2)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, spec: LayerSpec):
        super().__init__()
        self.head_dim = cfg.head_dim
        init, out_init = normal_init(cfg.init_std), normal_init(cfg.init_std / math.sqrt(2 * cfg.n_layers))
        self.wq = spec.column_linear(cfg.dim, cfg.n_heads * cfg.head_dim, init)
        self.wk = spec.column_linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, init)
        self.wv = spec.column_linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, init)
        self.wo = spec.row_linear(cfg.n_heads * cfg.head_dim, cfg.dim, out_init)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, -1, self.head_dim)  # (b, s, n, d)
        k = self.wk(x).view(b, s, -1, self.head_dim)  # (b, s, k, d)
        v = self.wv(x).view(b, s, -1, self.head_dim)  # (b, s, k, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (b, n|k, s, d)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
        y = y.transpose(1, 2).reshape(b, s, -1)  # (b, s, n*d)
        return self.wo(y)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig, spec: LayerSpec):
        super().__init__()
        init, out_init = normal_init(cfg.init_std), normal_init(cfg.init_std / math.sqrt(2 * cfg.n_layers))
        self.w_gate = spec.column_linear(cfg.dim, cfg.ffn_dim, init)
        self.w_up = spec.column_linear(cfg.dim, cfg.ffn_dim, init)
        self.w_down = spec.row_linear(cfg.ffn_dim, cfg.dim, out_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))  # (b, s, f) -> (b, s, h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, spec: LayerSpec):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg, spec)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg, spec)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """tokens (b, s) -> logits (b, s, v), or per-token loss (b, s) when targets are given."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, spec: LayerSpec = LOCAL_SPEC):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.spec = spec
        init = normal_init(cfg.init_std)
        self.embed = spec.embedding(vocab_size, cfg.dim, init)
        self.blocks = nn.ModuleList(Block(cfg, spec) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = spec.lm_head(cfg.dim, vocab_size, init)
        cos, sin = rope_table(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.checkpoint_activations = False
        """Recompute each block in the backward pass instead of keeping its activations."""

    def forward(self, tokens: Tensor, targets: Tensor | None = None) -> Tensor:
        b, s = tokens.shape
        if s > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {s} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[:s], self.rope_sin[:s]
        x = self.embed(tokens)  # (b, s, h)
        for block in self.blocks:
            if self.checkpoint_activations and self.training:
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin)
        logits = self.lm_head(self.norm(x))  # (b, s, v)
        if targets is None:
            return logits
        valid = targets != IGNORE
        loss = self.spec.cross_entropy(logits.float(), torch.where(valid, targets, 0))  # (b, s)
        return loss * valid

"""Decoder-only transformer of the Llama family over the unified text + video sequence.

RMSNorm pre-norm blocks, rotary positions (half-split pairs, as in Llama), SwiGLU MLP, causal
scaled-dot-product attention with grouped-query heads. Rotary positions are 1D over the flattened
sequence, or with `model.rope="3d"` (frame, row, column) for video tokens (`video_positions`), so
that "the same cell one frame back" is one fixed relative offset in the attention's terms.

Single-device math: the layers that a tensor-parallel run splits (attention and MLP projections, the
embedding, the output head and its cross-entropy) come in through a `LayerSpec`. `LOCAL_SPEC` builds
plain torch layers; `loong_dist.parallel.tensor_parallel` builds megatron-core's parallel ones. The
model reads the number of heads on this rank from the projection's output width, so it never asks
about ranks.

Notation: b batch, s sequence, h hidden (dim), n heads (on this rank), k key/value heads (on
this rank), r = n/k query heads per key/value head, d head width, v vocabulary (on this rank),
f SwiGLU width (on this rank); c cache capacity (positions), L positions held in the cache after
a step.

The q, k, v projections are one matmul (`wqkv`) and so are SwiGLU's gate and up (`w_gate_up`).
`wqkv` rows are grouped by key/value head, so any contiguous block of whole groups is a valid
tensor-parallel shard. `w_gate_up` stacks [gate; up] (contiguous halves, which elementwise
kernels want); it says so with `fused_parts = 2`, and tensor parallelism splits each half on its
own (a rank holds [its gate rows; its up rows], as in Megatron).

Attention in training is torch's `scaled_dot_product_attention` (flash kernels), or with
`model.attention="blocked"` the same causal attention by query blocks in plain torch ops
(`blocked_causal_attention`), which torch.compile turns into faster CPU code than the flash kernel.

Incremental decoding: `forward(tokens, cache=KVCache(...))` appends the keys and values of
`tokens` to the cache and attends over everything cached; positions continue from `cache.pos`.
The cache holds this rank's heads only, sized from the projections' output, so the same code runs
under tensor parallelism. Without a cache, the training path is the plain causal forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from loong_dist.config import ModelConfig
from loong_dist.models.ar.layout import BOV_ID, IGNORE

Init = Callable[[Tensor], None]


@dataclass(frozen=True)
class LayerSpec:
    """Builders for the layers that tensor parallelism splits; each takes (in, out, init)."""

    column_linear: Callable[[int, int, Init], nn.Module]
    """y = x W^T without bias; under TP the output features are split across ranks. A layer whose
    weight stacks several matrices carries `fused_parts` (their number): each is split alone."""
    row_linear: Callable[[int, int, Init], nn.Module]
    """y = x W^T without bias; under TP the input features are split and the outputs summed."""
    embedding: Callable[[int, int, Init, Tensor | None], nn.Module]
    """Token embedding (vocab, dim); under TP the vocabulary is split. With a code level table
    (`code_levels`), each id's vector is its row plus the sum of its levels' (`CodeLevelRows`)."""
    lm_head: Callable[[int, int, Init, Tensor | None], nn.Module]
    """Output head (dim -> vocab); under TP its logits stay split over the vocabulary. With a code
    level table, each id's row is its own plus the sum of its levels' vectors."""
    cross_entropy: Callable[[Tensor, Tensor], Tensor]
    """(logits (..., v), targets (...)) -> per-token loss (...); under TP over split logits."""
    gather_logits: Callable[[Tensor], Tensor]
    """The head's logits (..., v) as they come out -> the whole vocabulary's on every rank (under TP an
    all-gather over the split; without, the identity)."""


class CodeLevelRows:
    """Mixin of an embedding or head layer with model.code_level_embeddings: `level_vectors`, one
    learnt vector per FSQ level entry (zero at the start), and `code_levels`, the (ids, FSQ
    dimensions) table of the ids this layer holds (`VocabLayout.code_levels`; entry 0: no level).
    An id's vector is the layer's own row plus the sum of its levels' vectors. The vectors are the
    layer's own parameters, read in its own forward, so ZeRO-3 gathers them with its weight."""

    def add_code_levels(self, code_levels: Tensor, dim: int, held: slice = slice(None)) -> None:
        """`code_levels`: the whole vocabulary's table; `held`: the ids of this layer (its TP shard)."""
        self.register_buffer("code_levels", code_levels[held].long(), persistent=False)
        self.level_vectors = nn.Parameter(torch.zeros(int(code_levels.max()), dim))  # the same on every shard

    def level_sums(self, ids: Tensor | None = None, vectors: Tensor | None = None) -> Tensor:
        """(...) ids (None: every id the layer holds) -> (..., dim), the sums of their levels' vectors."""
        levels = self.code_levels if ids is None else self.code_levels[ids]
        vectors = self.level_vectors if vectors is None else vectors
        return F.embedding(levels, _with_zero_row(vectors)).sum(-2)


class LevelEmbedding(CodeLevelRows, nn.Embedding):
    def forward(self, ids: Tensor) -> Tensor:
        return super().forward(ids) + self.level_sums(ids).to(self.weight.dtype)


class LevelHead(CodeLevelRows, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight + self.level_sums().to(self.weight.dtype))


def _linear(d_in: int, d_out: int, init: Init) -> nn.Module:
    layer = nn.Linear(d_in, d_out, bias=False)
    init(layer.weight)
    return layer


def _head(d_in: int, d_out: int, init: Init, code_levels: Tensor | None = None) -> nn.Module:
    if code_levels is None:
        return _linear(d_in, d_out, init)
    layer = LevelHead(d_in, d_out, bias=False)
    init(layer.weight)
    layer.add_code_levels(code_levels, d_in)
    return layer


def _embedding(n: int, d: int, init: Init, code_levels: Tensor | None = None) -> nn.Module:
    layer = nn.Embedding(n, d) if code_levels is None else LevelEmbedding(n, d)
    init(layer.weight)
    if code_levels is not None:
        layer.add_code_levels(code_levels, d)
    return layer


def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)


LOCAL_SPEC = LayerSpec(column_linear=_linear, row_linear=_linear, embedding=_embedding, lm_head=_head,
                       cross_entropy=_cross_entropy, gather_logits=lambda logits: logits)


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


def rope_table(head_dim: int, max_seq_len: int, theta: float, sections: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (max_seq_len, head_dim / 2), in float32: column i rotates pair i by
    position x inv_freq[i]. `sections` (pairs per axis, summing to head_dim / 2) gives each axis of
    a multi-axis position its own geometric spectrum over its block of columns, from 1 down to
    1/theta; empty: one spectrum over all pairs (1D rotary, as in Llama)."""
    sections = sections or (head_dim // 2,)
    inv_freq = torch.cat([1.0 / theta ** (torch.arange(n, dtype=torch.float64) / n) for n in sections])
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def rope_sections(head_dim: int) -> tuple[int, int, int]:
    """Rotary pairs given to (frame, row, column) under 3D positions: 3/8 of the pairs to each
    spatial axis, the rest to time (Qwen2-VL's M-RoPE split: 16/24/24 of 64 pairs; 4/6/6 of 16)."""
    pairs = head_dim // 2
    spatial = max(1, round(3 * pairs / 8))
    return pairs - 2 * spatial, spatial, spatial


NO_VIDEO = 1 << 30
"""Origin of a row that has no <bov> (yet): every position in it is text."""


def video_positions(tokens: Tensor, start: int, grid: tuple[int, int], bov_id: int,
                    origin: Tensor | None = None, length: int | None = None) -> tuple[Tensor, Tensor]:
    """3D rotary positions of the row indices start..start+length (default: those of `tokens` (b, s),
    s of them): (b, length, 3) int64 (frame, row, column) axes, and each row's origin (b,): the
    index of its first <bov> in `tokens`.

    Up to the origin (the text and <bov>) a token at index i sits at (i, i, i), so text alone
    rotates as 1D rotary does. The j-th video token after it sits at (o + 1 + t, o + 1 + r,
    o + 1 + c), with (t, r, c) its latent frame and place in the frame's raster order on a
    `grid` = (rows, columns) latent frame: the same place one frame back is one step on the time
    axis, the cell to its left one step on the column axis, whatever the frame's size in tokens.
    Positions are relative within a row, so left padding shifts a row without changing it.
    `origin` continues a row whose <bov> came earlier (a KV cache): NO_VIDEO where none has yet.
    `length` s + 1 also places the token the last position predicts."""
    b, s = tokens.shape
    is_bov = tokens == bov_id
    found = torch.where(is_bov.any(1), is_bov.int().argmax(1) + start, NO_VIDEO)  # (b,)
    origin = found if origin is None else torch.minimum(origin.to(found.device), found)
    index = torch.arange(start, start + (length or s), device=tokens.device)[None, :]  # (1, length)
    j = index - origin[:, None] - 1  # (b, s): index among the video tokens, < 0 for the text
    h, w = grid
    per_frame = h * w
    video = j >= 0
    o = origin[:, None] + 1
    axes = [torch.where(video, o + a, index) for a in (j // per_frame, (j // w) % h, j % w)]
    return torch.stack(axes, dim=-1), origin


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (b, s, ..., d) by position: pairs are (i, i + d/2). cos, sin: (s, d/2), or
    (b, s, d/2) when rows have positions of their own. The head dimensions between s and d may be
    any number (heads, or kv groups and heads in a group)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    shape = (cos.shape[0] if cos.ndim == 3 else 1, x.shape[1]) + (1,) * (x.ndim - 3) + (-1,)
    cos, sin = cos.view(shape), sin.view(shape)  # (1 or b, s, 1.., d/2)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)


def split_qkv(w: Tensor, n_heads: int, n_kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """The fused (rows) q, k, v projection weight -> wq (n*d, ...), wk, wv (k*d, ...) with
    heads in order. Rows are grouped by key/value head g: [query heads g*r .. g*r+r-1, key g,
    value g], r = n/k, so a contiguous tensor-parallel shard holds whole groups. `n_heads`,
    `n_kv_heads`: the heads held in `w` (this rank's under TP)."""
    r = n_heads // n_kv_heads
    groups = w.unflatten(0, (n_kv_heads, r + 2, -1))  # (k, r+2, d, ...)
    return groups[:, :r].flatten(0, 2), groups[:, r].flatten(0, 1), groups[:, r + 1].flatten(0, 1)


def fuse_qkv(wq: Tensor, wk: Tensor, wv: Tensor, n_kv_heads: int) -> Tensor:
    """Inverse of `split_qkv`."""
    k = n_kv_heads
    q = wq.unflatten(0, (k, -1, wk.shape[0] // k))  # (k, r, d, ...)
    return torch.cat([q, wk.unflatten(0, (k, 1, -1)), wv.unflatten(0, (k, 1, -1))], dim=1).flatten(0, 2)


def blocked_causal_attention(q: Tensor, k: Tensor, v: Tensor, block: int) -> Tensor:
    """Causal attention of q (b, n, s, d) over k, v (b, k, s, d), n a multiple of k (query head i
    reads key/value head i // (n/k)), one block of `block` queries at a time against the keys up to
    that block's end: score blocks above the diagonal are never formed. Same result as
    `F.scaled_dot_product_attention(q, k, v, is_causal=True)` to rounding (tests).

    Rounding in bf16 is that of Megatron-LM's unfused attention: the scores leave the matmul in
    bf16, softmax runs in float32, the probabilities go back to bf16 for the product with v (flash
    kernels keep the scores in float32: a few times less error, see the test). What it buys: under
    torch.compile each block's scale, mask and softmax fuse into one loop between two bf16
    matmuls, where torch's CPU flash kernel runs small tiles at a fraction of the matmul rate."""
    b, n, s, d = q.shape
    g = k.shape[1]
    q = q.view(b, g, n // g, s, d)  # (b, k, r, s, d)
    k, v = k[:, :, None], v[:, :, None]  # (b, k, 1, s, d)
    scale = 1.0 / math.sqrt(d)
    score_dtype = torch.promote_types(q.dtype, torch.float32)  # float32 for bf16/fp16, else as given
    out = []
    for start in range(0, s, block):
        end = min(start + block, s)
        scores = q[:, :, :, start:end] @ k[:, :, :, :end].transpose(-1, -2)  # (b, k, r, q, end)
        scores = scores.to(score_dtype) * scale
        rows = torch.arange(start, end, device=q.device)[:, None]
        future = torch.arange(end, device=q.device)[None, :] > rows  # (q, end)
        p = scores.masked_fill(future, float("-inf")).softmax(-1).to(v.dtype)
        out.append(p @ v[:, :, :, :end])  # (b, k, r, q, d)
    return torch.cat(out, dim=3).view(b, n, s, d)


# Attention over a KV cache leaves out cuDNN's kernel: it builds an execution plan for every new
# key length (tens of milliseconds each), and a cached decode's key length grows by one a token.
# On an H200 that held decoding of the 6.8M-parameter t2v_cpu model to 15 tokens/s.
CACHED_ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def cached_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, gqa: bool) -> Tensor:
    """scaled_dot_product_attention of new queries (b, n, s, d) over cached keys and values
    (b, k, L, d); mask (b or 1, 1, s, L) or None."""
    if q.device.type != "cuda":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    with sdpa_kernel(CACHED_ATTENTION_BACKENDS):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class KVCache:
    """Keys and values of every position seen so far, one (b, k, c, d) pair per block.

    Buffers are allocated at the first write, with the head count and dtype of the keys (so a
    tensor-parallel rank holds its own heads). `valid` (b, c), optional, marks key positions
    that may be attended to: rows of different prompt lengths are left-padded, and their pad
    positions are masked out as keys. Rotary positions are relative, so a left-padded row gives
    the same logits as the row alone.
    """

    def __init__(self, n_layers: int, capacity: int, valid: Tensor | None = None):
        self.capacity = capacity
        self.pos = 0
        """Positions written so far (all rows advance together)."""
        self.origin: Tensor | None = None
        """Per row, the position of its <bov> (3D rotary positions: see `video_positions`)."""
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers
        self.valid = valid
        self._mask: tuple[tuple[int, int], Tensor] | None = None
        if valid is not None and valid.shape[1] < capacity:  # positions beyond the prompt are real tokens
            self.valid = torch.cat([valid, valid.new_ones(valid.shape[0], capacity - valid.shape[1])], dim=1)

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (b, k, s, d) at positions pos..pos+s; return all cached (b, k, pos+s, d)."""
        b, nk, s, d = k.shape
        if self.pos + s > self.capacity:
            raise ValueError(f"KV cache of {self.capacity} positions is full ({self.pos} + {s} asked)")
        if self.keys[layer] is None:
            self.keys[layer] = k.new_empty(b, nk, self.capacity, d)
            self.values[layer] = v.new_empty(b, nk, self.capacity, d)
        self.keys[layer][:, :, self.pos:self.pos + s] = k
        self.values[layer][:, :, self.pos:self.pos + s] = v
        return self.keys[layer][:, :, :self.pos + s], self.values[layer][:, :, :self.pos + s]

    def mask(self, s: int, device: torch.device) -> Tensor | None:
        """Boolean attention mask (b or 1, 1, s, L) for s new queries, True where attended; None
        when plain (one new query, no padding: it sees every cached key)."""
        end = self.pos + s
        if s == 1 and self.valid is None:
            return None
        if self._mask is not None and self._mask[0] == (self.pos, s):  # every block asks at one step
            return self._mask[1]
        q_pos = torch.arange(self.pos, end, device=device)[:, None]  # (s, 1)
        k_pos = torch.arange(end, device=device)[None, :]            # (1, L)
        allowed = (k_pos <= q_pos)[None, None]                       # (1, 1, s, L) causal
        if self.valid is not None:
            # a pad query would see no key at all (NaN); let it see itself - nothing reads it
            allowed = (allowed & self.valid[:, None, None, :end].to(device)) | (k_pos == q_pos)[None, None]
        self._mask = ((self.pos, s), allowed)
        return allowed

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


class Attention(nn.Module):
    """Grouped-query attention with one fused q, k, v projection (`wqkv`, rows grouped by key/value
    head: see `split_qkv`), so a step runs one input matmul instead of three."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.group = cfg.n_heads // cfg.n_kv_heads  # query heads per key/value head
        self.blocked = cfg.attention == "blocked"
        self.block = cfg.attention_block
        init, out_init = normal_init(cfg.init_std), normal_init(cfg.init_std / math.sqrt(2 * cfg.n_layers))
        self.wqkv = spec.column_linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, init)
        self.wo = spec.row_linear(cfg.n_heads * cfg.head_dim, cfg.dim, out_init)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None, layer: int = 0,
                q_cos: Tensor | None = None, q_sin: Tensor | None = None) -> Tensor:
        """cos, sin rotate the keys, and the queries too unless q_cos, q_sin are given."""
        b, s, _ = x.shape
        qkv = self.wqkv(x).view(b, s, -1, self.group + 2, self.head_dim)  # (b, s, k, r+2, d)
        if q_cos is None:
            qk = apply_rope(qkv[..., :-1, :], cos, sin)  # (b, s, k, r+1, d): queries and key of each group
        else:
            q, k = apply_rope(qkv[..., :-2, :], q_cos, q_sin), apply_rope(qkv[..., -2:-1, :], cos, sin)
            qk = torch.cat([q, k], dim=-2)
        q = qk[..., :-1, :].flatten(2, 3)  # (b, s, n, d)
        k, v = qk[..., -1, :], qkv[..., -1, :]  # (b, s, k, d)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (b, n|k, s, d)
        gqa = q.shape[1] != k.shape[1]
        if cache is None and self.blocked:
            y = blocked_causal_attention(q, k, v, self.block)
        elif cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            mask = cache.mask(s, x.device)
            k, v = cache.write(layer, k, v)  # (b, k, L, d)
            y = cached_attention(q, k, v, mask, gqa)
        y = y.transpose(1, 2).reshape(b, s, -1)  # (b, s, n*d)
        return self.wo(y)


class SwiGLU(nn.Module):
    """SwiGLU MLP with the gate and up projections fused into one matmul (`w_gate_up` = [gate; up])."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec):
        super().__init__()
        init, out_init = normal_init(cfg.init_std), normal_init(cfg.init_std / math.sqrt(2 * cfg.n_layers))
        self.w_gate_up = spec.column_linear(cfg.dim, 2 * cfg.ffn_dim, init)
        self.w_gate_up.fused_parts = 2  # [gate; up], each split over TP ranks on its own
        self.w_down = spec.row_linear(cfg.ffn_dim, cfg.dim, out_init)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)  # (b, s, f) each
        return self.w_down(F.silu(gate) * up)  # (b, s, h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, spec: LayerSpec):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg, spec)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg, spec)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None, layer: int = 0,
                q_cos: Tensor | None = None, q_sin: Tensor | None = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, cache, layer, q_cos, q_sin)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """tokens (b, s) -> logits (b, s, v), or per-token loss (b, s) when targets are given.
    With `cache`, tokens continue the cached positions and their keys/values are appended;
    `last_only`: logits (b, 1, v) of the last position alone."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, spec: LayerSpec = LOCAL_SPEC,
                 code_levels: Tensor | None = None):
        """`code_levels`: the layout's (vocab_size, FSQ dimensions) table (`VocabLayout.code_levels`),
        needed with cfg.code_level_embeddings."""
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.spec = spec
        init = normal_init(cfg.init_std)
        if cfg.code_level_embeddings and (code_levels is None or code_levels.shape[0] != vocab_size):
            raise ValueError("model.code_level_embeddings needs the layout's code level table, one row per id")
        levels = code_levels if cfg.code_level_embeddings else None
        self.embed = spec.embedding(vocab_size, cfg.dim, init, levels)
        self.blocks = nn.ModuleList(Block(cfg, spec) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = spec.lm_head(cfg.dim, vocab_size, init, levels)
        cos, sin = self._rope_table()
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.checkpoint_activations = False
        """Recompute each block in the backward pass instead of keeping its activations."""

    def _apply(self, fn, recurse: bool = True):
        """As nn.Module's, but the rotary tables stay float32 whatever dtype the weights take
        (model.to(bfloat16), DeepSpeed's bf16 cast): angles rounded to bf16 would move positions
        late in a long sequence. They are recomputed on their new device."""
        super()._apply(fn, recurse)
        if self.rope_cos.dtype != torch.float32:
            cos, sin = self._rope_table()
            self.rope_cos, self.rope_sin = cos.to(self.rope_cos.device), sin.to(self.rope_sin.device)
        return self

    def _rope_table(self) -> tuple[Tensor, Tensor]:
        if self.cfg.rope != "3d":
            return rope_table(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta)
        # a query's target is one index on: the last position's needs row max_seq_len
        return rope_table(self.cfg.head_dim, self.cfg.max_seq_len + 1, self.cfg.rope_theta,
                          rope_sections(self.cfg.head_dim))

    def rotary(self, tokens: Tensor, start: int, cache: KVCache | None = None
               ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Rotations of the positions start..start+s of `tokens` (b, s): keys' cos, sin, then the
        queries' (None: as the keys'). 1D: (s, d/2), one table for both (the one-step shift of a
        query's target would be the same for every pair of positions). 3D (`video_positions`):
        (b, s, d/2); a key sits at the place of the token it holds and a query at the place of the
        token it predicts, so that "the target's own cell one frame back" is (-1, 0, 0) for every
        query, where from the query's own place it would jump at each row's end. The cache keeps
        each row's origin."""
        if self.cfg.rope != "3d":
            end = start + tokens.shape[1]
            return self.rope_cos[start:end], self.rope_sin[start:end], None, None
        grid = tuple(self.cfg.latent_grid)
        # index i + 1 is the place of the token position i predicts: one pass over s + 1 indices
        places, origin = video_positions(tokens, start, grid, BOV_ID, cache.origin if cache is not None else None,
                                         length=tokens.shape[1] + 1)
        if cache is not None:
            cache.origin = origin
        sections = rope_sections(self.cfg.head_dim)
        bounds = [0, sections[0], sections[0] + sections[1], sum(sections)]

        def rotation(table: Tensor, positions: Tensor) -> Tensor:  # (b, s, d/2)
            return torch.cat([table[positions[..., a], bounds[a]:bounds[a + 1]] for a in range(3)], dim=-1)

        cos, sin = rotation(self.rope_cos, places), rotation(self.rope_sin, places)  # (b, s + 1, d/2)
        return cos[:, :-1], sin[:, :-1], cos[:, 1:], sin[:, 1:]

    def new_cache(self, capacity: int, valid: Tensor | None = None) -> KVCache:
        """An empty KV cache for up to `capacity` positions; `valid` (b, prompt length) masks
        left padding (see KVCache)."""
        if capacity > self.cfg.max_seq_len:
            raise ValueError(f"cache of {capacity} positions exceeds model.max_seq_len={self.cfg.max_seq_len}")
        return KVCache(len(self.blocks), capacity, valid)

    def forward(self, tokens: Tensor, targets: Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False) -> Tensor:
        b, s = tokens.shape
        h = self.hidden(tokens, cache)  # (b, s, h)
        if last_only:  # a prompt's prefill needs the next-token logits of its last position only
            h = h[:, -1:]  # (b, 1, h)
        if targets is None:
            return self.logits(h)  # (b, s, v)
        valid = targets != IGNORE
        safe = torch.where(valid, targets, 0)
        chunk = max(1, self.cfg.loss_chunk_tokens // b) if self.cfg.loss_chunk_tokens else s
        if chunk >= s or not torch.is_grad_enabled():
            loss = self._token_loss(h, safe)
        else:  # one chunk's logits alive at a time; the backward recomputes them chunk by chunk
            loss = torch.cat([checkpoint(self._token_loss, h[:, i:i + chunk], safe[:, i:i + chunk], use_reentrant=False)
                              for i in range(0, s, chunk)], dim=1)
        return loss * valid

    def hidden(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """tokens (b, s) -> the last block's normed hidden states (b, s, h), what the head reads."""
        start, s = cache.pos if cache is not None else 0, tokens.shape[1]
        if start + s > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + s} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        cos, sin, q_cos, q_sin = self.rotary(tokens, start, cache)
        x = self.embed(tokens)  # (b, s, h)
        for i, block in enumerate(self.blocks):
            if cache is not None:
                x = block(x, cos, sin, cache, i, q_cos, q_sin)
            elif self.checkpoint_activations and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, None, 0, q_cos, q_sin, use_reentrant=False)
            else:
                x = block(x, cos, sin, None, 0, q_cos, q_sin)
        if cache is not None:
            cache.pos += s
        return self.norm(x)

    @torch.no_grad()
    def draw_inputs(self, tokens: Tensor, rows: Tensor, cols: Tensor, uniforms: Tensor, lo: int, hi: int,
                    parts: int = 1) -> Tensor:
        """The model's own draw of the tokens at (rows, cols) (n,) of `tokens` (b, s), each from its
        prediction at the index before (teacher-forced: one pass over `tokens` as they are), among ids
        [lo, hi) at temperature 1: the id where uniforms (n,) in [0, 1) falls on the cumulative
        distribution. Returns ids (n,) int64.

        The places go through the head in `parts` parts (the logits of one alive at a time), and the
        head is called once per part even when it is empty: under ZeRO-3 every call gathers the head's
        weights from all data-parallel ranks, so every rank must make as many (the caller agrees them)."""
        if bool((cols < 1).any()):
            raise ValueError("draw_inputs: index 0 has no prediction before it")
        h = self.hidden(tokens)[rows, cols - 1]  # (n, h)
        out = torch.empty(len(rows), dtype=torch.long, device=tokens.device)
        for part in torch.arange(len(rows), device=tokens.device).tensor_split(parts):
            logits = self.logits(h[part])  # (c, v) or this rank's split of v
            if len(part) == 0:  # the same on every TP rank of the group: they hold the same batch
                continue
            probs = self.spec.gather_logits(logits)[:, lo:hi].float().softmax(-1)  # (c, hi - lo)
            cdf = probs.cumsum(-1)
            u = uniforms[part, None].to(cdf.dtype) * cdf[:, -1:]
            out[part] = torch.searchsorted(cdf, u).clamp(max=hi - lo - 1)[:, 0] + lo
        return out

    def _token_loss(self, h: Tensor, targets: Tensor) -> Tensor:
        """(b, c, h) hidden states, (b, c) targets -> (b, c) cross-entropy, the logits in float32."""
        return self.spec.cross_entropy(self.logits(h).float(), targets)

    def logits(self, h: Tensor) -> Tensor:
        """The output head: (..., h) normed hidden states -> (..., v) logits."""
        return self.lm_head(h)


def _with_zero_row(vectors: Tensor) -> Tensor:
    """(n, h) level vectors -> (n + 1, h), row 0 (entry 0 of a code level table: no level) zero."""
    return F.pad(vectors, (0, 0, 1, 0))


def fold_code_levels(state: dict[str, Tensor], code_levels: Tensor) -> dict[str, Tensor]:
    """A state dict of a model with code_level_embeddings as one without: each id's embedding and
    head row plus the sum of its levels' vectors."""
    state = dict(state)
    for layer in ("embed", "lm_head"):
        table = _with_zero_row(state.pop(f"{layer}.level_vectors").float())
        rows = state[f"{layer}.weight"]
        state[f"{layer}.weight"] = (rows.float() + F.embedding(code_levels.long(), table).sum(1)).to(rows.dtype)
    return state

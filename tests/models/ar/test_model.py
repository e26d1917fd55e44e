"""The AR transformer: causality, a naive reference for attention, parameter counts, checkpointing."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from loong_dist.config import ModelConfig
from loong_dist.models.ar import checkpoint
from loong_dist.models.ar.checkpoint import FORMAT, ModelFileError, load_model
from loong_dist.models.ar.layout import IGNORE, VocabLayout
from loong_dist.models.ar.model import (SwiGLU, Transformer, apply_rope, blocked_causal_attention, fuse_qkv, rope_table,
                                        split_qkv)
from loong_dist.models.ar.sizes import MODEL_SIZES, count_parameters


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(size="tiny", max_seq_len=64), vocab_size=384)


def test_causal(model):
    tokens = torch.randint(0, 384, (2, 40))
    changed = tokens.clone()
    changed[:, 25:] = torch.randint(0, 384, (2, 15))
    a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :25], b[:, :25], rtol=0, atol=0)
    assert not torch.allclose(a[:, 25:], b[:, 25:])


def naive_attention(attn, x, cos, sin):
    """The attention block written out: explicit scores, mask, softmax; kv heads repeated."""
    b, s, _ = x.shape
    d = attn.head_dim
    wq, wk, wv = split_qkv(attn.wqkv.weight, n_heads=4, n_kv_heads=2)
    q = apply_rope((x @ wq.T).view(b, s, -1, d), cos, sin)
    k = apply_rope((x @ wk.T).view(b, s, -1, d), cos, sin)
    v = (x @ wv.T).view(b, s, -1, d)
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(d)
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    y = torch.einsum("bnqk,bknd->bqnd", scores.softmax(-1), v).reshape(b, s, -1)
    return y @ attn.wo.weight.T


def test_attention_matches_naive_reference(model):
    x = torch.randn(2, 17, 64)
    cos, sin = model.rope_cos[:17], model.rope_sin[:17]
    attn = model.blocks[0].attention
    torch.testing.assert_close(attn(x, cos, sin), naive_attention(attn, x, cos, sin), rtol=1e-5, atol=1e-5)


def _attention_and_grads(fn, q, k, v, grad_out):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(grad_out.to(out.dtype))
    return [out.detach()] + [t.grad for t in (q, k, v)]


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])


@pytest.mark.parametrize("n_heads, n_kv_heads, seq, block", [
    (4, 4, 37, 8),   # last block short
    (4, 2, 37, 8),   # grouped heads
    (6, 2, 32, 8),   # blocks tile the sequence
    (4, 1, 5, 16),   # one block, shorter than asked
    (2, 2, 1, 4),    # a single position
])
def test_blocked_attention_matches_sdpa(n_heads, n_kv_heads, seq, block):
    """model.attention="blocked": output and q, k, v gradients of torch's causal attention (float64)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, n_heads, seq, 16, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, n_kv_heads, seq, 16, generator=g, dtype=torch.float64) for _ in range(2))
    grad_out = torch.randn(2, n_heads, seq, 16, generator=g, dtype=torch.float64)
    got = _attention_and_grads(lambda *t: blocked_causal_attention(*t, block), q, k, v, grad_out)
    for a, b in zip(got, _attention_and_grads(_sdpa, q, k, v, grad_out)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_blocked_attention_in_bf16_rounds_as_unfused_attention():
    """In bf16 the blocked form rounds where Megatron-LM's unfused attention (and Hugging Face's
    eager one) round: bf16 scores, float32 softmax, bf16 probabilities. Against float64 its error
    is that path's (written out here over the whole matrix), a few times that of the flash kernel
    (float32 scores), and stays under 1.5% at scores of a trained model's size (std ~3)."""
    g = torch.Generator().manual_seed(0)
    q = (3 * torch.randn(1, 4, 300, 64, generator=g)).bfloat16()
    k, v, grad_out = (torch.randn(1, 4, 300, 64, generator=g).bfloat16() for _ in range(3))

    def unfused(q, k, v):
        scores = (q @ k.transpose(-1, -2)).float() / 8.0
        scores = scores.masked_fill(torch.ones(300, 300, dtype=torch.bool).triu(1), float("-inf"))
        return scores.softmax(-1).to(v.dtype) @ v

    truth = _attention_and_grads(_sdpa, q.double(), k.double(), v.double(), grad_out.double())

    def errors(fn):
        got = _attention_and_grads(fn, q, k, v, grad_out)
        return [float((a.double() - t).norm() / t.norm()) for a, t in zip(got, truth)]

    blocked, reference, flash = errors(lambda *t: blocked_causal_attention(*t, 64)), errors(unfused), errors(_sdpa)
    for b, r, f in zip(blocked, reference, flash):
        assert b < 1.2 * r + 1e-3 and b < 1.5e-2, (blocked, reference)
        assert f < b  # flash keeps float32 scores: what the blocked form gives up for speed


def test_blocked_attention_model_same_losses_and_gradients():
    tokens, targets = torch.randint(0, 384, (2, 29)), torch.randint(0, 384, (2, 29))
    results = []
    for attention in ("sdpa", "blocked"):
        torch.manual_seed(0)
        cfg = ModelConfig(size="tiny", max_seq_len=64, attention=attention, attention_block=8)
        m = Transformer(cfg, vocab_size=384)
        loss = m(tokens, targets)
        loss.sum().backward()
        results.append((loss.detach(), [p.grad for p in m.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fused_qkv_shards_into_whole_heads():
    # A contiguous TP shard of the fused q, k, v weight holds the same heads as the unfused
    # weights' shards: the layout needs no conversion at any TP degree.
    n, k, d, h = 8, 4, 3, 5
    wq, wk, wv = torch.randn(n * d, h), torch.randn(k * d, h), torch.randn(k * d, h)
    fused = fuse_qkv(wq, wk, wv, n_kv_heads=k)
    for got, want in zip(split_qkv(fused, n, k), (wq, wk, wv)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for tp in (2, 4):
        for rank in range(tp):
            shard = fused.chunk(tp)[rank]
            for got, want in zip(split_qkv(shard, n // tp, k // tp), (wq, wk, wv)):
                torch.testing.assert_close(got, want.chunk(tp)[rank], rtol=0, atol=0)


def test_swiglu_matches_unfused_reference(model):
    mlp = model.blocks[0].ffn
    assert isinstance(mlp, SwiGLU)
    gate, up = mlp.w_gate_up.weight.chunk(2)
    x = torch.randn(2, 7, 64)
    torch.testing.assert_close(mlp(x), (F.silu(x @ gate.T) * (x @ up.T)) @ mlp.w_down.weight.T, rtol=1e-5, atol=1e-5)


def test_rope_is_relative():
    # <R(m) q, R(n) k> depends only on m - n.
    cos, sin = rope_table(8, 32, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    def dot(m, n):
        return (apply_rope(q, cos[m:m + 1], sin[m:m + 1]) * apply_rope(k, cos[n:n + 1], sin[n:n + 1])).sum()
    torch.testing.assert_close(dot(5, 2), dot(20, 17), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", list(MODEL_SIZES)[:3])
def test_parameter_count_matches_table(size):
    cfg = ModelConfig(size=size)
    with torch.device("meta"):
        m = Transformer(cfg, vocab_size=1024)
    counted = count_parameters(cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, 1024)["total"]
    assert sum(p.numel() for p in m.parameters()) == counted


def test_loss_ignores_text_and_matches_cross_entropy(model):
    layout = VocabLayout(text_vocab_size=300, codebook_size=64, vocab_multiple=128)
    assert layout.padded_vocab_size == 384
    sample = layout.build([2, 10, 11], np.arange(2 * 2 * 3).reshape(2, 2, 3) % 64)
    tokens = torch.from_numpy(sample["tokens"])[None]
    targets = torch.from_numpy(sample["targets"])[None]
    loss = model(tokens, targets)
    logits = model(tokens)
    valid = targets != IGNORE
    ref = F.cross_entropy(logits[valid], targets[valid], reduction="none")
    torch.testing.assert_close(loss[valid], ref)
    assert (loss[~valid] == 0).all()


def test_draw_inputs_is_the_inverse_cdf_of_the_teacher_forced_prediction(model):
    """train.self_context's draws: place (r, c) gets the id where u falls on the cumulative softmax of
    the logits at (r, c - 1) over [lo, hi), computed here from the full forward pass in float64."""
    torch.manual_seed(1)
    tokens = torch.randint(0, 384, (2, 40))
    rows, cols = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([1, 17, 5, 30, 39])
    u = torch.tensor([0.0, 0.3, 0.5, 0.9, 0.999999])
    lo, hi = 300, 364
    drawn = model.draw_inputs(tokens, rows, cols, u, lo, hi, parts=3)
    with torch.no_grad():
        probs = model(tokens)[rows, cols - 1, lo:hi].double().softmax(-1).numpy()
    want = [lo + min(int(np.sum(np.cumsum(p) < x)), hi - lo - 1) for p, x in zip(probs, u.tolist())]
    assert drawn.tolist() == want
    # over many uniforms the draws follow the prediction (chi-square at one place)
    n = 20000
    many = model.draw_inputs(tokens, torch.zeros(n, dtype=torch.long), torch.full((n,), 9), torch.rand(n), lo, hi)
    counts = np.bincount(many.numpy() - lo, minlength=hi - lo)
    with torch.no_grad():
        expect = n * model(tokens)[0, 8, lo:hi].double().softmax(-1).numpy()
    keep = expect > 5
    chi2 = float(((counts[keep] - expect[keep]) ** 2 / expect[keep]).sum())
    assert counts[~keep].sum() <= max(20, 3 * expect[~keep].sum()) and chi2 < keep.sum() + 6 * np.sqrt(2 * keep.sum())
    with pytest.raises(ValueError, match="index 0"):
        model.draw_inputs(tokens, torch.tensor([0]), torch.tensor([0]), torch.tensor([0.5]), lo, hi)


def test_activation_checkpointing_same_gradients(model):
    tokens = torch.randint(0, 384, (2, 24))
    targets = torch.randint(0, 384, (2, 24))
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.checkpoint_activations = ckpt
        model(tokens, targets).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_chunked_loss_same_losses_and_gradients():
    """model.loss_chunk_tokens: the head and cross-entropy by chunks (recomputed in the backward)
    give the losses and gradients of the whole sequence at once, padding (IGNORE) included."""
    tokens = torch.randint(0, 384, (2, 25))
    targets = torch.randint(0, 384, (2, 25))
    targets[0, :7] = IGNORE
    results = []
    for chunk in (0, 12):  # 12 tokens over a batch of 2: chunks of 6 positions, the last one short
        torch.manual_seed(0)
        m = Transformer(ModelConfig(size="tiny", max_seq_len=64, loss_chunk_tokens=chunk), vocab_size=384)
        loss = m(tokens, targets)
        loss.sum().backward()
        results.append((loss.detach(), [p.grad.clone() for p in m.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    # The head's matmul over a chunk may block its sums unlike the whole (MKL on an AVX2 CPU: one of
    # 50 losses off by 4.8e-7); the chunking itself changes nothing beyond that rounding.
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-6)
    assert (loss_a[0, :7] == 0).all()
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)  # chunks sum the head gradient in another order


def test_too_long_sequence(model):
    with pytest.raises(ValueError, match="exceeds model.max_seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def _per_head_weights(cfg: ModelConfig, vocab: int, seed: int) -> dict:
    """Random float32 weights of a pre-fusion model, one tensor per attention head: q[j] (d, h) for
    query head j, k[g] and v[g] for key/value head g; the MLP's gate and up apart."""
    gen = torch.Generator().manual_seed(seed)
    h, d, f = cfg.dim, cfg.head_dim, cfg.ffn_dim

    def rand(*shape, std=0.15):
        return torch.randn(*shape, generator=gen) * std

    blocks = [{"q": [rand(d, h) for _ in range(cfg.n_heads)], "k": [rand(d, h) for _ in range(cfg.n_kv_heads)],
               "v": [rand(d, h) for _ in range(cfg.n_kv_heads)], "wo": rand(h, cfg.n_heads * d),
               "gate": rand(f, h), "up": rand(f, h), "down": rand(h, f),
               "attention_norm": 1 + rand(h, std=0.3), "ffn_norm": 1 + rand(h, std=0.3)}
              for _ in range(cfg.n_layers)]
    return {"embed": rand(vocab, h, std=1.0), "blocks": blocks, "norm": 1 + rand(h, std=0.3),
            "lm_head": rand(vocab, h)}


def _float64(w):
    if torch.is_tensor(w):
        return w.double()
    return {k: _float64(v) for k, v in w.items()} if isinstance(w, dict) else [_float64(v) for v in w]


def _reference_logits(w: dict, cfg: ModelConfig, tokens: torch.Tensor, angle: torch.Tensor | None = None,
                      q_angle: torch.Tensor | None = None) -> torch.Tensor:
    """The Llama forward written out head by head, in float64, sharing no code with the model:
    RMSNorm, rotary positions on (i, i + d/2) pairs, causal softmax attention where query head j
    reads key/value head j // (n/k), SwiGLU. tokens (b, s) -> logits (b, s, v). `angle` (b, s, d/2):
    each pair's rotation at each position, of the keys and, unless `q_angle` is given, the queries;
    default 1D rotary (position x theta^(-2i/d))."""
    w = _float64(w)
    d, s = cfg.head_dim, tokens.shape[1]
    if angle is None:
        inv_freq = cfg.rope_theta ** -(torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
        angle = torch.arange(s, dtype=torch.float64)[:, None] * inv_freq  # (s, d/2)
    q_angle = angle if q_angle is None else q_angle
    future = torch.ones(s, s, dtype=torch.bool).triu(1)

    def rms(x, weight):
        return x / (x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps).sqrt() * weight

    def rotate(x, angle):  # (b, s, d)
        x1, x2 = x[..., :d // 2], x[..., d // 2:]
        return torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], dim=-1)

    x = w["embed"][tokens]  # (b, s, h)
    for blk in w["blocks"]:
        a = rms(x, blk["attention_norm"])
        heads = []
        for j, wq in enumerate(blk["q"]):
            g = j // (cfg.n_heads // cfg.n_kv_heads)
            q, k, v = rotate(a @ wq.T, q_angle), rotate(a @ blk["k"][g].T, angle), a @ blk["v"][g].T  # (b, s, d)
            scores = (q @ k.transpose(1, 2) / math.sqrt(d)).masked_fill(future, float("-inf"))  # (b, s, s)
            heads.append(scores.softmax(-1) @ v)
        x = x + torch.cat(heads, dim=-1) @ blk["wo"].T  # heads side by side: (b, s, n*d)
        m = rms(x, blk["ffn_norm"])
        x = x + (F.silu(m @ blk["gate"].T) * (m @ blk["up"].T)) @ blk["down"].T
    return rms(x, w["norm"]) @ w["lm_head"].T


def _unfused_tensors(w: dict) -> dict[str, torch.Tensor]:
    """The state dict of an export from before the fusion: wq, wk, wv (heads stacked in order, d
    rows each) and w_gate, w_up per block."""
    tensors = {"embed.weight": w["embed"], "norm.weight": w["norm"], "lm_head.weight": w["lm_head"]}
    for i, blk in enumerate(w["blocks"]):
        at = f"blocks.{i}."
        tensors.update({
            at + "attention.wq.weight": torch.cat(blk["q"]), at + "attention.wk.weight": torch.cat(blk["k"]),
            at + "attention.wv.weight": torch.cat(blk["v"]), at + "attention.wo.weight": blk["wo"],
            at + "ffn.w_gate.weight": blk["gate"], at + "ffn.w_up.weight": blk["up"],
            at + "ffn.w_down.weight": blk["down"], at + "attention_norm.weight": blk["attention_norm"],
            at + "ffn_norm.weight": blk["ffn_norm"]})
    return tensors


def _write_model_file(tensors: dict, cfg: ModelConfig, layout: VocabLayout, path) -> None:
    """A model file written with safetensors itself: the tensors, and the metadata of the format."""
    meta = {"format": FORMAT, "model": json.dumps(dataclasses.asdict(cfg)),
            "layout": json.dumps(dataclasses.asdict(layout)), "extra": "{}"}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def test_export_with_unfused_projections_loads_to_the_same_model(tmp_path, monkeypatch):
    """Files exported before the projections were fused (wq, wk, wv; w_gate, w_up), written here
    from per-head weights, still load - to the model that a head-by-head forward of the same
    weights computes. A head that fuse_qkv puts in the wrong place changes the logits: a fuse that
    stacks q, k, v plainly is caught."""
    cfg = ModelConfig(size="tiny", max_seq_len=64)
    layout = VocabLayout(text_vocab_size=300, codebook_size=64, vocab_multiple=128)
    w = _per_head_weights(cfg, layout.padded_vocab_size, seed=0)
    _write_model_file(_unfused_tensors(w), cfg, layout, tmp_path / "old.safetensors")
    tokens = torch.randint(0, layout.padded_vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    want = _reference_logits(w, cfg, tokens)
    with torch.no_grad():
        got = load_model(tmp_path / "old.safetensors")[0](tokens).double()
    assert want.std() > 0.5  # logits far from constant: a misplaced head shows
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "fuse_qkv", lambda wq, wk, wv, n_kv_heads: torch.cat([wq, wk, wv]))
        with torch.no_grad():
            wrong = load_model(tmp_path / "old.safetensors")[0](tokens).double()
    assert (wrong - want).abs().max() > 100 * (got - want).abs().max()

    broken = _unfused_tensors(w)
    del broken["blocks.1.attention.wk.weight"]
    _write_model_file(broken, cfg, layout, tmp_path / "broken.safetensors")
    with pytest.raises(ModelFileError, match="blocks.1.attention.wk.weight"):
        load_model(tmp_path / "broken.safetensors")


def _video_angles(tokens: torch.Tensor, grid: tuple[int, int], sections: tuple[int, int, int], theta: float,
                  shift: int = 0) -> torch.Tensor:
    """3D rotary angles (b, s, d/2) of the indices `shift` on from each position, written out from
    their definition, token by token: up to a row's first <bov> (id 4) index i is at (i, i, i); the
    j-th video token after a <bov> at index o is at (o + 1 + frame, o + 1 + row, o + 1 + column) of
    a rows x columns raster. Pair k belongs to the axis whose section holds it and turns at
    theta^(-m / n) per step, m its place in the n pairs of that section."""
    b, s = tokens.shape
    s += shift
    axis_of, rate = [], []
    for a, n in enumerate(sections):
        axis_of += [a] * n
        rate += [theta ** (-m / n) for m in range(n)]
    angle = torch.zeros(b, s, len(rate), dtype=torch.float64)
    rows, cols = grid
    for r in range(b):
        origin = None
        for i in range(s):
            if origin is None:
                place = (i, i, i)
                if i < tokens.shape[1] and int(tokens[r, i]) == 4:
                    origin = i
            else:
                j = i - origin - 1
                place = (origin + 1 + j // (rows * cols), origin + 1 + (j // cols) % rows, origin + 1 + j % cols)
            for k in range(len(rate)):
                angle[r, i, k] = place[axis_of[k]] * rate[k]
    return angle[:, shift:]


def test_3d_rotary_positions_match_their_definition(tmp_path):
    """rope="3d": logits of a saved model against the head-by-head float64 forward with 3D angles
    derived independently (text on the diagonal, video on a 3x4 grid after <bov>, pairs split 4/6/6
    over frame/row/column at head width 32; keys at their own index's place, queries at the next
    index's), for rows whose <bov> sits at different places; queries at their own place, or 1D
    positions, give other logits."""
    cfg = ModelConfig(size="tiny", dim=64, n_heads=2, n_kv_heads=1, max_seq_len=64, rope="3d", latent_grid=[3, 4])
    assert cfg.head_dim == 32
    layout = VocabLayout(text_vocab_size=300, codebook_size=64, vocab_multiple=128)
    w = _per_head_weights(cfg, layout.padded_vocab_size, seed=2)
    _write_model_file(_unfused_tensors(w), cfg, layout, tmp_path / "m.safetensors")
    tokens = torch.randint(5, layout.padded_vocab_size, (3, 40), generator=torch.Generator().manual_seed(3))
    tokens[0, 2], tokens[1, 9], tokens[1, 30] = 4, 4, 4  # row 2 has no <bov>: all text
    keys = _video_angles(tokens, (3, 4), (4, 6, 6), cfg.rope_theta)
    want = _reference_logits(w, cfg, tokens, keys, _video_angles(tokens, (3, 4), (4, 6, 6), cfg.rope_theta, shift=1))
    with torch.no_grad():
        got = load_model(tmp_path / "m.safetensors")[0](tokens).double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for other in (_reference_logits(w, cfg, tokens), _reference_logits(w, cfg, tokens, keys)):
        assert (other - want)[:2, 4:].abs().max() > 100 * (got - want).abs().max()


def test_rotary_tables_stay_float32_when_the_weights_go_bf16():
    from loong_dist.models.ar.model import rope_table
    m = Transformer(ModelConfig(size="tiny", max_seq_len=4608), vocab_size=384).to(torch.bfloat16)
    cos, sin = rope_table(m.cfg.head_dim, 4608, m.cfg.rope_theta)
    assert m.embed.weight.dtype == torch.bfloat16 and m.rope_cos.dtype == torch.float32
    assert torch.equal(m.rope_cos, cos) and torch.equal(m.rope_sin, sin)
    # in bf16 the late positions' angles would be off by up to a few hundredths
    assert (cos.bfloat16().float() - cos).abs()[4000:].max() > 1e-3
    m.float()
    assert torch.equal(m.rope_cos, cos)


def test_code_level_embeddings_are_the_plain_model_with_summed_rows(tmp_path):
    """model.code_level_embeddings: the same function as a plain model whose embedding and head rows
    are the free rows plus their codes' level vectors (summed here one id and level at a time), and
    an export writes that plain model."""
    layout = VocabLayout(text_vocab_size=20, codebook_size=64000, codes=(0, 5, 64, 2055, 41000, 63999),
                         fsq_levels=(8, 8, 8, 5, 5, 5))
    table = layout.code_levels()
    cfg = ModelConfig(size="tiny", max_seq_len=64, code_level_embeddings=True)
    torch.manual_seed(0)
    model = Transformer(cfg, layout.padded_vocab_size, code_levels=torch.from_numpy(table))
    with torch.no_grad():  # trained vectors (they start at zero)
        model.embed.level_vectors.normal_()
        model.lm_head.level_vectors.normal_()
    plain = Transformer(dataclasses.replace(cfg, code_level_embeddings=False), layout.padded_vocab_size)
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(".level_vectors")}
    for i in range(layout.padded_vocab_size):
        for entry in table[i]:
            if entry:  # entry 0: no level
                state["embed.weight"][i] += model.embed.level_vectors[entry - 1].detach()
                state["lm_head.weight"][i] += model.lm_head.level_vectors[entry - 1].detach()
    plain.load_state_dict(state)
    tokens = torch.tensor([[2, 7, 9, 4, 20, 21, 22, 23, 24, 25, 20]])
    targets = torch.cat([torch.full((1, 4), IGNORE), tokens[:, 5:], torch.tensor([[3]])], dim=1)
    torch.testing.assert_close(model(tokens), plain(tokens), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(tokens, targets), plain(tokens, targets), rtol=1e-5, atol=1e-5)
    model(tokens, targets).sum().backward()
    assert model.embed.level_vectors.grad.abs().sum() > 0 and model.lm_head.level_vectors.grad.abs().sum() > 0

    path = checkpoint.save_model(model.state_dict(), cfg, layout, tmp_path / "m.safetensors")
    loaded, _ = load_model(path)
    assert not loaded.cfg.code_level_embeddings and not hasattr(loaded.embed, "level_vectors")
    torch.testing.assert_close(loaded(tokens), plain(tokens), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="code level table"):
        Transformer(cfg, layout.padded_vocab_size)

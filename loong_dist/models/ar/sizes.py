"""Named model sizes and their parameter counts.

Widths follow the Llama family: SwiGLU hidden about 8/3 of the width, grouped-query attention
on the larger sizes. Parameter counts depend on the vocabulary (text pieces + video codebook);
`count_parameters` computes them for any layout, and the table in README is printed by
`python -m loong_dist.models.ar.sizes`.
"""

from __future__ import annotations

MODEL_SIZES: dict[str, dict[str, int]] = {
    # CPU tests: seconds per step on 2 cores.
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=192),
    # The CPU demo.
    "small": dict(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, ffn_dim=704),
    "125m": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_dim=2048),
    # Loong reports 700M to 7B; these two bracket it.
    "1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192),
    "7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008),
}


def count_parameters(dim: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn_dim: int,
                     vocab_size: int) -> dict[str, int]:
    """Parameters of the transformer (untied input embedding and output head)."""
    head_dim = dim // n_heads
    attention = dim * n_heads * head_dim + 2 * dim * n_kv_heads * head_dim + n_heads * head_dim * dim
    mlp = 3 * dim * ffn_dim
    per_layer = attention + mlp + 2 * dim  # two RMSNorm weights
    blocks = n_layers * per_layer
    embeddings = 2 * vocab_size * dim       # token embedding + output head
    return {"blocks": blocks, "embeddings": embeddings, "total": blocks + embeddings + dim}


def flops_per_token(dim: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn_dim: int, vocab_size: int,
                    seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 x matmul parameters plus
    attention scores and values (12 x n_layers x dim x seq_len / 2 with the causal half)."""
    p = count_parameters(dim, n_layers, n_heads, n_kv_heads, ffn_dim, vocab_size)
    matmul_params = p["blocks"] + vocab_size * dim  # the input embedding is a lookup, not a matmul
    return 6.0 * matmul_params + 6.0 * n_layers * dim * seq_len


if __name__ == "__main__":
    vocab = 512 + 64000  # demo text vocabulary + FSQ codebook, before padding
    print(f"{'size':6s} {'dim':>5s} {'layers':>6s} {'heads':>5s} {'kv':>3s} {'ffn':>6s} {'blocks':>10s} {'total':>10s}")
    for name, s in MODEL_SIZES.items():
        p = count_parameters(**s, vocab_size=vocab)
        print(f"{name:6s} {s['dim']:5d} {s['n_layers']:6d} {s['n_heads']:5d} {s['n_kv_heads']:3d} {s['ffn_dim']:6d} "
              f"{p['blocks'] / 1e6:9.1f}M {p['total'] / 1e6:9.1f}M")

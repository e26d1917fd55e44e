"""Training-step throughput: loong-dist's DeepSpeed step against a plain PyTorch reference of the
same shape, and MFU against the dense matmul rate measured in the same run.

    python bench/train_step.py [--size small] [--seq 1024] [--batch 2] [--precision fp32|bf16] [--steps 6]
        [--zero-stages 0,1] [--compile] [--attention sdpa|blocked]

Prints: the machine's dense matmul FLOP/s (the peak), tokens/s and model FLOP/s of our step
(the DeepSpeed engine on one rank, once per ZeRO stage asked for), tokens/s of
`transformers.LlamaForCausalLM` with the same widths trained by a plain AdamW loop on the same
batches, the ratios, and MFU = model FLOP/s / peak. On one rank stage 0 is what a run needs
(nothing to partition); stage 1 shows what DeepSpeed's ZeRO bookkeeping costs there. On a GPU it
runs the same code on CUDA with NCCL.

Both models are built first, then their steps alternate (ours, reference, a peak matmul, ours,
...) and each is the median of its rounds, so load from other processes on a shared machine
hits both sides alike instead of whichever ran while it lasted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from loong_dist.config import load_config
from loong_dist.models.ar.sizes import flops_per_token


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 0, reps: int = 10) -> float:
    """Dense n x n x n matmul FLOP/s. n=0: 2048 on a CPU, 8192 on a GPU (2048^3 is over in
    microseconds there and reads well below the rate large products reach)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def batches(vocab, batch, seq, steps, device):
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, vocab, (batch, seq), generator=g).to(device),
             torch.randint(0, vocab, (batch, seq), generator=g).to(device)) for _ in range(steps)]


def ours(cfg, vocab, groups):
    from loong_dist.parallel.engine import build_engine, build_model

    torch.manual_seed(0)
    engine = build_engine(build_model(cfg.model, vocab, groups, cfg.parallel), cfg, groups)

    def step(tokens, targets):
        loss = engine(tokens, targets).mean()
        engine.backward(loss)
        engine.step()

    return step


def reference(cfg, vocab, device, dtype, compiled: bool = False):
    """HF Llama of the same widths, trained by a plain AdamW loop; `compiled`: its decoder layers
    under torch.compile, as our --compile compiles our blocks (one graph per layer, the same
    granularity), so the ratio compares like with like."""
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg.model
    hf = LlamaConfig(vocab_size=vocab, hidden_size=m.dim, intermediate_size=m.ffn_dim, num_hidden_layers=m.n_layers,
                     num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads,
                     max_position_embeddings=m.max_seq_len, rope_theta=m.rope_theta, rms_norm_eps=m.norm_eps,
                     tie_word_embeddings=False)
    hf._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf).to(device)
    if compiled:
        for layer in model.model.layers:
            layer.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                            weight_decay=cfg.optim.weight_decay)

    def step(tokens, targets):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype == torch.bfloat16):
            logits = model(input_ids=tokens).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def interleaved(steps: dict, data, warmup: int, device) -> dict[str, float]:
    """Median seconds per step of each named step function, run in turn on each batch."""
    times = {name: [] for name in steps}
    for i, (tokens, targets) in enumerate(data):
        for name, step in steps.items():
            sync(device)
            t0 = time.perf_counter()
            step(tokens, targets)
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--zero-stages", default="0,1", help="ZeRO stages of our step to time, comma-separated")
    p.add_argument("--compile", action="store_true",
                   help="parallel.compile=true for our step, and a compiled reference timed beside the eager one")
    p.add_argument("--attention", choices=["sdpa", "blocked"], default="sdpa",
                   help="model.attention of our step (blocked pays with --compile on CPU; the reference keeps sdpa)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8192 + 512, help="text + video ids (padded to 128 by the layout)")
    args = p.parse_args()

    from loong_dist.parallel.process_groups import one_local_rank

    with one_local_rank():  # its rendezvous hosted here, unless a launcher started this process
        run(args)


def run(args) -> None:
    """The benchmark, as rank 0 of the process group it starts."""
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel

    groups = init_parallel(1)
    vocab = (args.vocab + 127) // 128 * 128
    stages = [int(z) for z in args.zero_stages.split(",")]
    cfgs = {z: load_config(None, [f"model.size={args.size}", f"model.max_seq_len={args.seq}",
                                  f"parallel.zero_stage={z}", f"parallel.precision={args.precision}",
                                  f"optim.micro_batch_size={args.batch}",
                                  "optim.warmup_steps=0", f"optim.steps={args.steps + 10}",
                                  f"parallel.compile={str(args.compile).lower()}", f"model.attention={args.attention}"])
            for z in stages}
    cfg = cfgs[stages[0]]
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    device = groups.device
    data = batches(vocab, args.batch, args.seq, args.steps + args.warmup, device)
    m = cfg.model
    fpt = flops_per_token(m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim, vocab, args.seq) \
        - 6.0 * m.n_layers * m.dim * args.seq / 2  # causal: half the attention matrix
    tokens = args.batch * args.seq * args.steps

    peaks = []

    def peak_step(tokens, targets):  # a matmul peak between the steps, same load
        peaks.append(matmul_peak(dtype, device, reps=3))

    steps = {f"ZeRO-{z}": ours(c, vocab, groups) for z, c in cfgs.items()}
    refs = {"reference": reference(cfg, vocab, device, dtype)}
    if args.compile:  # the fair comparison for a compiled step: the reference compiled too
        refs["compiled reference"] = reference(cfg, vocab, device, dtype, compiled=True)
    t = interleaved({**steps, **refs, "peak": peak_step}, data, args.warmup, device)
    peak = statistics.median(peaks)
    destroy_parallel()

    print(f"machine: {device.type}, {torch.get_num_threads()} threads; model {args.size} ({m.dim}x{m.n_layers}), "
          f"vocab {vocab}, batch {args.batch} x {args.seq} tokens, {args.precision}"
          f"{', compiled blocks' if args.compile else ''}, {args.attention} attention")
    print(f"dense matmul peak (same run):   {peak / 1e9:9.1f} GFLOP/s")
    for name in steps:
        t_ours = t[name] * args.steps
        ratios = "   ".join(f"{r_name} {t[r_name] / t[name]:.2f}x" for r_name in refs)
        print(f"{'loong-dist step, ' + name + ':':40s}{tokens / t_ours:9.0f} tokens/s  "
              f"{fpt * tokens / t_ours / 1e9:8.1f} GFLOP/s   MFU {fpt * tokens / t_ours / peak:.1%}   "
              f"ratio against {ratios}")
    for r_name in refs:
        t_ref = t[r_name] * args.steps
        print(f"{r_name + ' (HF Llama + AdamW):':40s}{tokens / t_ref:9.0f} tokens/s  "
              f"{fpt * tokens / t_ref / 1e9:8.1f} GFLOP/s   MFU {fpt * tokens / t_ref / peak:.1%}")


if __name__ == "__main__":
    main()

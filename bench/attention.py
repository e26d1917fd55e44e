"""Causal attention forward + backward: model.attention="blocked" (compiled and eager) against
torch's scaled_dot_product_attention (the flash kernel) on the same tensors, in one run.

    python bench/attention.py [--shapes 2x12x1024x64,1x12x4096x64] [--dtype bf16|fp32] [--block 256]
        [--repeats 5]

Prints, per shape (batch x heads x positions x head width): milliseconds of one forward and
backward of each kernel, its causal FLOP/s (six products over half the score matrix, 2 forward
and 4 backward, of b*h*s*s*d/2 multiply-adds each; a kernel's recompute is not counted), the
ratio to sdpa, the largest output difference from sdpa, and the matmul rate of this machine in
the dtype measured in the same run (bench/train_step.py's 2048^3 peak), so the kernels' share of
it shows.
Timings are the median of --repeats after one warm-up (the compile).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from loong_dist.cli import keep_freed_memory
from loong_dist.models.ar.model import blocked_causal_attention
from train_step import matmul_peak  # bench/ is on the path of a script run from it: the MFU benchmark's peak

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: compile, oneDNN kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="2x12x1024x64,1x12x4096x64")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    keep_freed_memory()  # as the jobs run (loong_dist.cli)
    dtype = DTYPES[args.dtype]

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def blocked(q, k, v):
        return blocked_causal_attention(q, k, v, args.block)

    kernels = {"sdpa (flash)": sdpa, "blocked, compiled": torch.compile(blocked), "blocked, eager": blocked}
    peak = matmul_peak(dtype, torch.device("cpu"))
    print(f"machine: cpu, {torch.get_num_threads()} threads; {args.dtype}; {args.dtype} matmul rate "
          f"(same run): {peak / 1e9:.1f} GFLOP/s; block {args.block}")
    for shape in args.shapes.split(","):
        b, h, s, d = (int(x) for x in shape.split("x"))
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(b, h, s, d, generator=g).to(dtype).requires_grad_() for _ in range(3))
        grad = torch.randn(b, h, s, d, generator=g).to(dtype)
        flops = 6 * 2 * b * h * s * s * d / 2
        reference = sdpa(q, k, v).detach()
        base = None
        for name, fn in kernels.items():
            def step():
                q.grad = k.grad = v.grad = None
                fn(q, k, v).backward(grad)

            seconds = median_seconds(step, args.repeats)
            base = base or seconds
            diff = (fn(q, k, v).detach().float() - reference.float()).abs().max().item()
            print(f"{shape:>14}  {name:18} {seconds * 1e3:8.1f} ms  {flops / seconds / 1e9:7.1f} GFLOP/s "
                  f"({flops / seconds / peak:5.1%} of the matmul rate)  {base / seconds:5.2f}x sdpa  "
                  f"max |out - sdpa| {diff:.2g}")


if __name__ == "__main__":
    main()

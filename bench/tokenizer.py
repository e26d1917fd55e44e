"""Video tokenizer throughput: encode and decode clips/s (uint8 API, fp32 and bf16 autocast),
and the share of this machine's own dense-math rate that the model's convs reach.

    python bench/tokenizer.py [--batch 4] [--frames 17] [--size 128] [--repeats 3] [--tokenizer FILE]

References, measured in the same run:
- peak: the best of a 2048^3 matmul and a 128-channel 3x3x3 conv (channels-last, oneDNN), per
  dtype, measured before and after the model timings (the best of both). (On AMD CPUs torch's
  fp32 matmul goes through MKL's slower non-Intel path, so the conv is the higher fp32 reference
  there.) The model's FLOPs are counted by a hook on every Conv3d
  (2 * output elements * in_channels * kernel volume); "share" = model conv FLOP/s / peak.
- the encoder over the whole clip at once, as against chunk by chunk (what makes prefix ids
  exact): the price of exact causality.
- glibc's default allocator, as against one told to keep freed memory (mallopt: no mmap, no
  trim). By default every large activation is a fresh mmap whose pages fault in again on each
  pass; in this VM that cost decode up to 3x. Jobs should set MALLOC_MMAP_MAX_=0 and
  MALLOC_TRIM_THRESHOLD_=<large> (or call the same mallopt) before heavy CPU work.
Timings are the best of --repeats (other processes on a shared machine only ever add time).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time

import torch
from torch import nn

from loong_dist.cli import keep_freed_memory
from loong_dist.config import TokenizerConfig
from loong_dist.models.tokenizer import VideoTokenizer, load_tokenizer
from loong_dist.models.tokenizer.conv import CHANNELS_LAST, patchify

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN builds its kernels for these shapes
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_flops(dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """(matmul FLOP/s, conv FLOP/s) of large dense ops in `dtype`."""
    a = torch.randn(2048, 2048).to(dtype)
    mm = 2 * 2048 ** 3 / best_seconds(lambda: a @ a, repeats)
    x = torch.randn(4, 128, 7, 32, 32).to(dtype).contiguous(memory_format=CHANNELS_LAST)
    w = (torch.randn(128, 128, 3, 3, 3) * 0.02).to(dtype)
    conv = 2 * 4 * 5 * 32 * 32 * 128 * 128 * 27 / best_seconds(
        lambda: torch.nn.functional.conv3d(x, w, padding=(0, 1, 1)), repeats)
    return mm, conv


def conv_flops(model: nn.Module, fn) -> float:
    """FLOPs of every Conv3d that `fn()` runs."""
    total = 0

    def hook(m: nn.Conv3d, args, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv3d)]
    fn()
    for h in handles:
        h.remove()
    return total


def api_seconds(tok: VideoTokenizer, video, ids, repeats: int) -> dict[str, float]:
    out = {}
    for name, dtype in DTYPES.items():
        bf16 = dtype == torch.bfloat16
        out[f"encode {name}"] = best_seconds(lambda: tok.encode(video, bf16=bf16), repeats)
        out[f"decode {name}"] = best_seconds(lambda: tok.decode(ids, bf16=bf16), repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", help="a saved tokenizer (.safetensors); default: untrained default config")
    args = parser.parse_args()

    torch.manual_seed(0)
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else VideoTokenizer(TokenizerConfig()).eval()
    b, n = args.batch, args.repeats
    video = torch.randint(0, 256, (b, args.frames, args.size, args.size, 3), dtype=torch.uint8)
    ids = tok.encode(video)
    flops = {"encode": conv_flops(tok, lambda: tok.encode(video)) / b,
             "decode": conv_flops(tok, lambda: tok.decode(ids)) / b}
    params = sum(p.numel() for p in tok.parameters())
    print(f"tokenizer: {params / 1e6:.2f}M parameters, codebook {tok.codebook_size}; clip {args.frames}x{args.size}x"
          f"{args.size} -> {'x'.join(map(str, tok.latent_shape(args.frames, args.size, args.size)))} ids; batch {b}")
    print(f"conv GFLOP per clip: encode {flops['encode'] / 1e9:.1f}, decode {flops['decode'] / 1e9:.1f}; "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")

    before = {name: peak_flops(dtype, 2 * n) for name, dtype in DTYPES.items()}
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    default = api_seconds(tok, video, ids, n)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    kept = keep_freed_memory()
    faults_tuned = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tuned = api_seconds(tok, video, ids, n) if kept else default
    faults_tuned = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_tuned

    after = {name: peak_flops(dtype, 2 * n) for name, dtype in DTYPES.items()}
    peaks = {name: tuple(map(max, before[name], after[name])) for name in DTYPES}  # best of both sides
    for name in DTYPES:
        mm, conv = peaks[name]
        peak = max(mm, conv)
        print(f"{name}: peak {peak / 1e9:4.0f} GFLOP/s (matmul {mm / 1e9:.0f}, conv {conv / 1e9:.0f})")
        for op in ("encode", "decode"):
            t = tuned[f"{op} {name}"]
            rate = flops[op] * b / t
            print(f"  {op}: {b / t:6.2f} clips/s, {rate / 1e9:4.0f} GFLOP/s, share of peak {rate / peak:.2f}; "
                  f"default allocator {b / default[f'{op} {name}']:6.2f} clips/s")
    if kept:
        ratios = " ".join(f"{k} {default[k] / tuned[k]:.2f}x" for k in tuned)
        print(f"kept-memory allocator / default (speed-up): {ratios}; minor page faults while timing: "
              f"default {faults}, kept {faults_tuned}")

    x = video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (b, 3, t, H, W)
    whole = patchify(x, tok.cfg.patch_size).contiguous(memory_format=CHANNELS_LAST)
    with torch.no_grad():
        t_chunked = best_seconds(lambda: tok.encoder(x), n)
        t_whole = best_seconds(lambda: tok.encoder.step(whole, None), n)
    print(f"fp32 encoder chunk by chunk (exact prefixes) {b / t_chunked:.2f} clips/s; whole clip at once "
          f"{b / t_whole:.2f} clips/s; ratio chunked / whole: {t_whole / t_chunked:.2f}x")


if __name__ == "__main__":
    main()

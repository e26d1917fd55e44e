"""Video upscaler throughput at 128 -> 512 px: frames/s of the uint8 API, and the share of this
machine's own dense-math rate that the model's convs reach.

    python bench/upscaler.py [--frames 16] [--size 128] [--chunk 16] [--repeats 3] [--upscaler FILE]
                             [--device auto|cpu|cuda]

References, measured in the same run:
- peak: the best of the dense matmul rate the other benchmarks measure (`train_step.matmul_peak`:
  2048^3 on a CPU, 8192^3 on a GPU, the mean of --repeats products) and a 64-channel 3x3 conv over
  128x128 frames (the model's own widest op, at its size), fp32 (and bf16 where the device has it
  natively), measured before and after the model timings (the best of both). The model's FLOPs
  are counted by a hook on every Conv2d (2 * output elements * in_channels * kernel area; the
  fixed linear base, a functional conv of under 1% of them, is left out); "share" = model conv
  FLOP/s / peak.
- chunking: the same frames upscaled in chunks of --chunk (what jobs.generate does for a minute of
  video, memory bounded by the chunk) against all at once; both give the same pixels, so the ratio
  is the price of the bound.
- bicubic: torch's bicubic interpolation of the same frames, the no-learning reference.
The other timings are the best of --repeats (other processes on a shared machine only ever add time).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from loong_dist.cli import keep_freed_memory
from loong_dist.config import UpscalerConfig
from loong_dist.models.upscaler import VideoUpscaler, load_upscaler
from loong_dist.precision import native_bf16, resolve_device
from train_step import matmul_peak  # bench/ is on the path of a script run from it


def best_seconds(fn, repeats: int, device: torch.device) -> float:
    def timed() -> float:
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    timed()  # warm-up: oneDNN (cuDNN) picks and builds its kernels for these shapes
    return min(timed() for _ in range(repeats))


def peak_flops(dtype: torch.dtype, size: int, repeats: int, device: torch.device) -> tuple[float, float]:
    """(matmul FLOP/s, conv FLOP/s) of large dense ops in `dtype` on `device`: the benchmarks'
    matmul peak, and the model's widest conv at its size (4 frames on a CPU, 64 on a GPU)."""
    mm = matmul_peak(dtype, device, reps=repeats)
    frames = 64 if device.type == "cuda" else 4
    x = torch.randn(frames, 64, size, size, device=device).to(dtype)
    w = (torch.randn(64, 64, 3, 3, device=device) * 0.02).to(dtype)
    conv = 2 * frames * size * size * 64 * 64 * 9 / best_seconds(lambda: F.conv2d(x, w, padding=1), repeats, device)
    return mm, conv


def conv_flops(model: nn.Module, fn) -> float:
    """FLOPs of every Conv2d that `fn()` runs."""
    total = 0

    def hook(m: nn.Conv2d, args, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    fn()
    for h in handles:
        h.remove()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="input side (px); the output is 4x")
    parser.add_argument("--chunk", type=int, default=4, help="frames per chunk in the chunked timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--upscaler", help="a saved upscaler (.safetensors); default: untrained default config")
    parser.add_argument("--device", default="auto", help="auto: cuda where there is one, else cpu")
    args = parser.parse_args()

    keep_freed_memory()
    torch.manual_seed(0)
    device = torch.device(resolve_device(args.device))
    up = load_upscaler(args.upscaler) if args.upscaler else VideoUpscaler(UpscalerConfig()).eval()
    up.to(device)  # upscale() runs on the model's device; its uint8 frames go there and come back
    n, t, s = args.repeats, args.frames, args.size
    video = torch.randint(0, 256, (1, t, s, s, 3), dtype=torch.uint8)
    flops = conv_flops(up, lambda: up.upscale(video, t)) / t
    params = sum(p.numel() for p in up.parameters())
    print(f"upscaler: {params / 1e6:.2f}M parameters ({up.cfg.channels} channels, {up.cfg.blocks} blocks); "
          f"{t} frames {s}x{s} -> {4 * s}x{4 * s}; conv GFLOP per frame {flops / 1e9:.1f}")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"torch threads {torch.get_num_threads()}"
    print(f"device {device.type}: {where}, load average {os.getloadavg()[0]:.1f}")

    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if native_bf16(device.type) else {})}
    before = {name: peak_flops(dtype, s, 2 * n, device) for name, dtype in dtypes.items()}
    whole = {name: best_seconds(lambda: up.upscale(video, t, bf16=name == "bf16"), n, device) for name in dtypes}
    chunked = best_seconds(lambda: up.upscale(video, args.chunk), n, device)
    x = video[0].permute(0, 3, 1, 2).float().to(device)  # (t, 3, s, s)
    bicubic = best_seconds(lambda: F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
                           .round().clamp(0, 255).to(torch.uint8), n, device)
    after = {name: peak_flops(dtype, s, 2 * n, device) for name, dtype in dtypes.items()}
    for name in dtypes:
        mm, conv = map(max, before[name], after[name])  # best of both sides
        peak = max(mm, conv)
        rate = flops * t / whole[name]
        print(f"{name}: {t / whole[name]:.2f} frames/s at {s} -> {4 * s}, {rate / 1e9:.0f} GFLOP/s; peak "
              f"{peak / 1e9:.0f} GFLOP/s (matmul {mm / 1e9:.0f}, conv {conv / 1e9:.0f}); "
              f"share of peak {rate / peak:.2f}")
    print(f"chunks of {args.chunk} frames: {t / chunked:.2f} frames/s, {whole['fp32'] / chunked:.2f}x the speed of "
          f"all {t} at once (same pixels, memory bounded by the chunk)")
    print(f"bicubic: {t / bicubic:.0f} frames/s; the upscaler takes {whole['fp32'] / bicubic:.0f}x its time. "
          f"A 60 s video at 8 fps (480 frames): {480 * whole['fp32'] / t / 60:.1f} min")


if __name__ == "__main__":
    main()

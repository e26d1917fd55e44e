"""Whether bfloat16 pays on a device, for every setting that may say "auto" (and which device
"auto" means).

bf16 halves memory traffic and, where the hardware multiplies it natively (CUDA GPUs from Ampere
on, CPUs with AVX512-BF16 or AMX), runs matmuls and convolutions faster than float32. Elsewhere
it is emulated and far slower: on an AVX2 CPU (AMD EPYC Milan, 2 cores) a 1024^3 bf16 matmul ran
at 0.87 GFLOP/s against 84 GFLOP/s in float32, and the video tokenizer encoded 8 frames in 43 s
against 0.47 s. "auto" therefore means bf16 only where it is native.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def native_bf16(device_type: str) -> bool:
    """Does this kind of device ("cpu", "cuda") multiply bf16 natively?"""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_device(setting: str) -> str:
    """A device of the config or command line ("auto", "cpu", "cuda", "cuda:1"): "auto" is the
    GPU where there is one, else the CPU."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_bf16(setting: bool | str, device: torch.device | str) -> bool:
    """A bf16 switch of the config (true, false or "auto") on `device`."""
    if setting == "auto":
        return native_bf16(torch.device(device).type)
    return bool(setting)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """A precision of the config ("auto", "fp32" or "bf16") on `device`: "fp32" or "bf16"."""
    if precision == "auto":
        return "bf16" if native_bf16(torch.device(device).type) else "fp32"
    return precision

"""Upscaler files: one .safetensors holding the weights, with the architecture (the
`UpscalerConfig` fields as JSON) in its metadata, so a file alone rebuilds the model (as the video
tokenizer's files do: loong_dist/models/tokenizer/checkpoint.py).

Loading never unpickles anything (safetensors holds raw tensors only): an upscaler file from
elsewhere cannot run code. Paths are local; jobs fetch an s3:// file first (`local_input`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loong_dist.config import UpscalerConfig
from loong_dist.errors import UserError
from loong_dist.models.upscaler.model import UpscalerError, VideoUpscaler

FORMAT = "loong-video-upscaler/1"
"""Written into every file's metadata; a file without it is not an upscaler."""


def save_upscaler(model: VideoUpscaler, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write weights + config (+ `extra`, JSON: how it was trained) to `path` (.safetensors),
    atomically (a temporary file renamed). `path` is the architecture only: `path` and
    `chunk_frames` are the user's, not the file's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    cfg = dataclasses.replace(model.cfg, path="")
    meta = {"format": FORMAT, "config": json.dumps(dataclasses.asdict(cfg)), "extra": json.dumps(extra or {})}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def upscaler_extra(path: str | os.PathLike) -> dict:
    """What `save_upscaler` recorded beside the weights (step, tokenizer, ...); {} if nothing."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return json.loads((f.metadata() or {}).get("extra", "{}"))
    except Exception as e:  # a missing or bad file: named as load_upscaler names it
        raise UpscalerError(f"{path}: not a readable upscaler file ({type(e).__name__}: {e})") from None


def load_upscaler(path: str | os.PathLike, device: str | torch.device = "cpu") -> VideoUpscaler:
    """Rebuild an upscaler from a file written by `save_upscaler`, in eval mode on `device`.
    Raises UpscalerError naming the file when it is missing, not safetensors, has no upscaler
    config, or its weights do not fit that config."""
    path = Path(path)
    if not path.is_file():
        raise UpscalerError(f"{path}: upscaler file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a bad header or body
        raise UpscalerError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise UpscalerError(f"{path}: no upscaler config in the file's metadata "
                            f"(format {meta.get('format')!r}; expected {FORMAT!r} with a 'config' entry)")
    try:
        cfg = UpscalerConfig(**json.loads(meta["config"]))
    except (ValueError, TypeError, UserError) as e:  # bad JSON, unknown field, ConfigError
        raise UpscalerError(f"{path}: upscaler config in the metadata is not valid ({e})") from None
    model = VideoUpscaler(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UpscalerError(f"{path}: weights do not fit the saved config ({first})") from None
    return model.to(device).eval()

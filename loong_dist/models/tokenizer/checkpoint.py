"""Tokenizer files: one .safetensors holding the weights, with the architecture (the
`TokenizerConfig` fields as JSON) in its metadata, so a file alone rebuilds the model.

Loading never unpickles anything (safetensors holds raw tensors only): a tokenizer file from
elsewhere cannot run code. Paths are local; jobs fetch an s3:// file first
(`Storage.local_copy`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loong_dist.config import TokenizerConfig
from loong_dist.errors import UserError
from loong_dist.models.tokenizer.model import TokenizerError, VideoTokenizer

FORMAT = "loong-video-tokenizer/1"
"""Written into every file's metadata; a file without it is not a tokenizer."""


def save_tokenizer(model: VideoTokenizer, path: str | os.PathLike) -> Path:
    """Write weights + config to `path` (.safetensors), atomically (a temporary file renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(dataclasses.asdict(model.cfg))}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu") -> VideoTokenizer:
    """Rebuild a tokenizer from a file written by `save_tokenizer`, in eval mode on `device`.
    Raises TokenizerError naming the file when it is missing, not safetensors, has no tokenizer
    config, or its weights do not fit that config."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"{path}: tokenizer file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a bad header or body
        raise TokenizerError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise TokenizerError(f"{path}: no tokenizer config in the file's metadata "
                             f"(format {meta.get('format')!r}; expected {FORMAT!r} with a 'config' entry)")
    try:
        fields = json.loads(meta["config"])
        cfg = TokenizerConfig(**fields)
    except (ValueError, TypeError, UserError) as e:  # bad JSON, unknown field, ConfigError
        raise TokenizerError(f"{path}: tokenizer config in the metadata is not valid ({e})") from None
    model = VideoTokenizer(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise TokenizerError(f"{path}: weights do not fit the saved config ({first})") from None
    return model.to(device).eval()

"""Exported transformer weights: one .safetensors with the single-device (unsharded) state dict
and, in its metadata, the model config and the vocabulary layout, so that a file alone rebuilds
the model for inference without DeepSpeed or megatron.

    save_model(state_dict, model_cfg, layout, "run/model.safetensors")
    model, layout = load_model("run/model.safetensors")    # Transformer in eval mode, VocabLayout

Loading never unpickles (safetensors holds raw tensors only). The layout carries the codebook
size and text vocabulary the model was trained with; a caller pairing the model with a video or
text tokenizer checks them (`check_vocab`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loong_dist.config import ModelConfig
from loong_dist.errors import UserError
from loong_dist.models.ar.layout import VocabLayout
from loong_dist.models.ar.model import Transformer, fold_code_levels, fuse_qkv

FORMAT = "loong-ar-transformer/1"
"""Written into every file's metadata; a file without it is not a loong-dist model."""


class ModelFileError(UserError, ValueError):
    """A model file that cannot be loaded, or that does not match its tokenizers."""


def save_model(state_dict: dict[str, torch.Tensor], cfg: ModelConfig, layout: VocabLayout,
               path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write a single-device state dict + model config + layout to `path`, atomically.
    `extra`: JSON-able facts kept beside them (the step, the run folder, the stage). A model trained
    with code_level_embeddings is written as the same function without them (`fold_code_levels`)."""
    if cfg.code_level_embeddings:
        state_dict = fold_code_levels(state_dict, torch.from_numpy(layout.code_levels()))
        cfg = dataclasses.replace(cfg, code_level_embeddings=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    meta = {"format": FORMAT, "model": json.dumps(dataclasses.asdict(cfg)),
            "layout": json.dumps(dataclasses.asdict(layout)), "extra": json.dumps(extra or {})}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_model_meta(path: str | os.PathLike) -> tuple[ModelConfig, VocabLayout, dict]:
    """(model config, layout, extra) of a model file, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise ModelFileError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a loong-dist model file (format {meta.get('format')!r}, "
                             f"expected {FORMAT!r})")
    try:
        cfg = ModelConfig(**json.loads(meta["model"]))
        layout = VocabLayout(**json.loads(meta["layout"]))
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, ValueError, TypeError, UserError) as e:
        raise ModelFileError(f"{path}: model config or layout in the metadata is not valid ({e})") from None
    return cfg, layout, extra


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[Transformer, VocabLayout]:
    """Rebuild the transformer from a file written by `save_model`, in eval mode on `device`."""
    cfg, layout, _ = read_model_meta(path)
    model = Transformer(cfg, layout.padded_vocab_size)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    try:
        tensors = _fuse_unfused_projections(tensors, cfg)
        model.load_state_dict(tensors, strict=True)
    except KeyError as e:
        raise ModelFileError(f"{path}: weight {e} is missing") from None
    except RuntimeError as e:
        lines = str(e).splitlines()
        raise ModelFileError(f"{path}: weights do not fit the saved config "
                             f"({(lines[1] if len(lines) > 1 else lines[0]).strip()})") from None
    return model.to(device=device, dtype=dtype).eval(), layout


def _fuse_unfused_projections(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Files exported before the projections were fused hold wq, wk, wv and w_gate, w_up per
    block; fuse them into today's wqkv and w_gate_up (same numbers; see `fuse_qkv`)."""
    out = dict(tensors)
    for key in [k for k in tensors if k.endswith(".attention.wq.weight")]:
        at = key[:-len("wq.weight")]
        out[at + "wqkv.weight"] = fuse_qkv(out.pop(at + "wq.weight"), out.pop(at + "wk.weight"),
                                           out.pop(at + "wv.weight"), cfg.n_kv_heads)
    for key in [k for k in tensors if k.endswith(".ffn.w_gate.weight")]:
        at = key[:-len("w_gate.weight")]
        out[at + "w_gate_up.weight"] = torch.cat([out.pop(at + "w_gate.weight"), out.pop(at + "w_up.weight")])
    return out


def check_vocab(layout: VocabLayout, codebook_size: int, text_vocab_size: int, what: str) -> None:
    """Raise ModelFileError when a model's layout does not match the tokenizers paired with it."""
    if layout.codebook_size != codebook_size:
        raise ModelFileError(f"{what}: model was trained on {layout.codebook_size} video codes, the video "
                             f"tokenizer has {codebook_size}")
    if layout.text_vocab_size != text_vocab_size:
        raise ModelFileError(f"{what}: model was trained on a text vocabulary of {layout.text_vocab_size}, the "
                             f"text tokenizer has {text_vocab_size}")

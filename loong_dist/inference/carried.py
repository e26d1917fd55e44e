"""What an exported transformer carries besides its weights, so that generation needs nothing else.

`jobs.train` writes into the model file's metadata (`extra`, see models/ar/checkpoint.py):
  - text_tokenizer_model: the sentencepiece model the shards were tokenized with (base64), and
    text_tokenizer_sha256;
  - tokenizer, tokenizer_sha256: where the video tokenizer was read from and the hash of its file;
  - size, fps: the clips' frame size and rate;
  - generate: the recommended sampling settings (the stage config's `generate` section).

The functions here pick the tokenizers for a generation run: the ones passed explicitly, checked
against the recorded hashes (a mismatch is one line naming both), or else the carried ones.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from loong_dist.config import PROJECT_ROOT
from loong_dist.data.text_tokenizer import TextTokenizer
from loong_dist.errors import UserError
from loong_dist.io.storage import Storage, is_s3


class CarriedError(UserError, ValueError):
    """A tokenizer that does not match the model, or one the model file cannot supply."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text_tokenizer(extra: dict, path: str, checkpoint: str, storage: Storage | None = None) -> TextTokenizer:
    """The text tokenizer at `path` (checked against the model's), or the one the model carries."""
    want = extra.get("text_tokenizer_sha256")
    if path:
        tok = TextTokenizer.load(path, storage)
        if want and sha256_of(tok.model_proto) != want:
            raise CarriedError(f"{path}: not the text tokenizer {checkpoint} was trained with (sha256 "
                               f"{sha256_of(tok.model_proto)[:12]}..., the model's is {want[:12]}...); "
                               f"leave --text-tokenizer out to use the one the model carries")
        return tok
    carried = extra.get("text_tokenizer_model")
    if not carried:
        raise CarriedError(f"{checkpoint}: the model file carries no text tokenizer; pass --text-tokenizer")
    proto = base64.b64decode(carried)
    if want and sha256_of(proto) != want:
        raise CarriedError(f"{checkpoint}: the text tokenizer it carries does not match its recorded sha256")
    return TextTokenizer(proto, name=f"{checkpoint} (carried)")


def video_tokenizer_path(extra: dict, path: str, checkpoint: str, storage: Storage | None = None) -> str:
    """The video tokenizer file to load: `path` (checked against the model's hash), or the one
    the model names, found by its hash where it was recorded or among the project's shipped
    checkpoints (a model trained in another folder or on another machine)."""
    want = extra.get("tokenizer_sha256")
    if path:
        if want:
            storage = storage or Storage()
            got = sha256_of(storage.read_bytes(path)) if is_s3(path) or Path(path).is_file() else None
            if got is not None and got != want:
                raise CarriedError(f"{path}: not the video tokenizer {checkpoint} was trained with (sha256 "
                                   f"{got[:12]}..., the model's is {want[:12]}...)")
        return path
    recorded = extra.get("tokenizer")
    if not want:
        raise CarriedError(f"{checkpoint}: the model file names no video tokenizer; pass --tokenizer")
    # Found by hash: where it was when the shards were made, else a tokenizer the project ships.
    candidates = [Path(recorded), PROJECT_ROOT / recorded] if recorded and not is_s3(recorded) else []
    candidates += sorted((PROJECT_ROOT / "checkpoints").glob("*/*.safetensors"))
    for candidate in candidates:
        if candidate.is_file() and sha256_of(candidate.read_bytes()) == want:
            return str(candidate)
    raise CarriedError(f"{checkpoint}: its video tokenizer {recorded} (sha256 {want[:12]}...) is not here; "
                       f"pass --tokenizer with that file")


def generation_defaults(extra: dict) -> list[str]:
    """The model's recommended sampling settings as `generate.key=value` items (config defaults
    that the user's config files and overrides still win over)."""
    return [f"generate.{k}={'true' if v is True else 'false' if v is False else v}"
            for k, v in (extra.get("generate") or {}).items()]

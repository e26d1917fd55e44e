"""Train the sentencepiece text tokenizer on a manifest's captions.

    python -m data_prep.text_tokenizer --manifest M --vocab-size V --out F

Writes F (the sentencepiece model, with the layout's special tokens) and F.json (vocabulary
size, special ids, caption and token statistics). Captions of held-out entries (split=held_out)
are left out, so nothing about the evaluation data reaches the model through its vocabulary.
"""

from __future__ import annotations

import json
import time

import numpy as np

from loong_dist.cli import job_parser, log, resolve_config, run_job
from loong_dist.data.manifest import read_manifest
from loong_dist.data.text_tokenizer import TextTokenizer, train_text_tokenizer
from loong_dist.errors import ConfigError
from loong_dist.io.storage import Storage

ALIASES = {"--manifest": "data.manifest", "--vocab-size": "text.vocab_size", "--model-type": "text.model_type",
           "--out": "text.path"}


def main(argv: list[str] | None = None) -> int:
    args = job_parser("python -m data_prep.text_tokenizer", __doc__.splitlines()[0], ALIASES,
                      sections=("data", "text", "storage")).parse_intermixed_args(argv)
    cfg = resolve_config(args, ALIASES)
    if not cfg.data.manifest:
        raise ConfigError("config: data.manifest is empty: pass --manifest M")
    if not cfg.text.path:
        raise ConfigError("config: text.path is empty: pass --out F")
    storage = Storage(cfg.storage)
    start = time.time()
    entries, _ = read_manifest(cfg.data.manifest, storage)
    captions = [e.caption for e in entries if e.extra.get("split") != "held_out"]
    model = train_text_tokenizer(captions, cfg.text.vocab_size, cfg.text.model_type)
    tok = TextTokenizer(model, name=cfg.text.path)
    tok.save(cfg.text.path, storage)
    lengths = np.array([len(tok.encode(c)) for c in captions])
    stats = {
        "model": cfg.text.path, "vocab_size": tok.vocab_size, "asked_vocab_size": cfg.text.vocab_size,
        "model_type": cfg.text.model_type, "special_ids": tok.special_ids, "captions": len(captions),
        "held_out_captions_left_out": len(entries) - len(captions),
        "tokens_per_caption": {"mean": float(lengths.mean()), "max": int(lengths.max()),
                               "p99": float(np.percentile(lengths, 99))},
        "over_max_text_tokens": int((lengths > cfg.text.max_text_tokens).sum()),
        "wall_s": round(time.time() - start, 2),
    }
    storage.write_text(cfg.text.path + ".json", json.dumps(stats, indent=2) + "\n")
    log.info("text tokenizer: %d pieces from %d captions, %.1f tokens/caption (max %d) -> %s",
             tok.vocab_size, len(captions), stats["tokens_per_caption"]["mean"], stats["tokens_per_caption"]["max"],
             cfg.text.path)
    return 0


if __name__ == "__main__":
    run_job(main)

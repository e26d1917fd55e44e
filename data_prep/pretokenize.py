"""Tokenize a manifest's clips into webdataset token shards plus an index, on Ray.

    python -m data_prep.pretokenize --manifest M --tokenizer C --text-tokenizer T --out DIR|s3://b/p \
        --frames 1,17,65 --fps 8 --size 128 [pretokenize.num_encoders=2 ...]
    ray job submit --working-dir . -- python -m data_prep.pretokenize ...   (joins that cluster)

Writes shard-NNNNNN.tar, _parts/ (one record per complete shard), rejects.jsonl, summary.json and,
last, index.json into --out. A re-run skips complete shards. Wrong tokenizer paths and unreachable
buckets fail with one line before any work; bad videos and manifest lines go to rejects.jsonl.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time

from loong_dist.cli import job_parser, log, resolve_config, run_job
from loong_dist.data.manifest import read_manifest
from loong_dist.data.pretokenize import finish, plan_shards, run_pretokenize
from loong_dist.data.text_tokenizer import TextTokenizer
from loong_dist.errors import ConfigError
from loong_dist.io.storage import Storage, is_s3
from loong_dist.models.tokenizer import load_tokenizer

ALIASES = {"--manifest": "data.manifest", "--tokenizer": "tokenizer.path", "--text-tokenizer": "text.path",
           "--out": "pretokenize.out", "--frames": "data.frames", "--fps": "data.fps", "--size": "data.size",
           "--num-encoders": "pretokenize.num_encoders", "--shard-mb": "pretokenize.shard_target_mb"}


def _absolute(uri: str) -> str:
    return uri if is_s3(uri) else os.path.abspath(uri)  # Ray workers may run in another folder


def main(argv: list[str] | None = None) -> int:
    args = job_parser("python -m data_prep.pretokenize", __doc__.splitlines()[0], ALIASES,
                      sections=("data", "pretokenize", "storage")).parse_intermixed_args(argv)
    cfg = resolve_config(args, ALIASES)
    for key, flag in (("data.manifest", "--manifest"), ("tokenizer.path", "--tokenizer"),
                      ("text.path", "--text-tokenizer"), ("pretokenize.out", "--out")):
        section, name = key.split(".")
        if not getattr(getattr(cfg, section), name):
            raise ConfigError(f"config: {key} is empty: pass {flag}")
    p = cfg.pretokenize
    logging.getLogger("botocore").setLevel(logging.WARNING)  # its INFO lines name where credentials came from
    p.out, cfg.data.manifest = _absolute(p.out), _absolute(cfg.data.manifest)
    start = time.time()
    storage = Storage(cfg.storage)

    # Fail fast, before Ray starts: buckets, tokenizers, manifest.
    for uri in (p.out, cfg.data.manifest, cfg.tokenizer.path, cfg.text.path):
        storage.check_bucket(uri)
    text = TextTokenizer.load(cfg.text.path, storage)
    with storage.local_copy(cfg.tokenizer.path) as path:
        tokenizer = load_tokenizer(path)
        tokenizer_bytes = path.read_bytes()
    entries, bad_lines = read_manifest(cfg.data.manifest, storage, strict=False)
    tok_sha = hashlib.sha256(tokenizer_bytes).hexdigest()
    text_sha = hashlib.sha256(text.model_proto).hexdigest()
    meta = {"codebook_size": tokenizer.codebook_size, "fsq_levels": list(tokenizer.cfg.fsq_levels),
            "text_vocab_size": text.vocab_size, "size": cfg.data.size,
            "fps": cfg.data.fps, "frames": cfg.data.frames, "tokenizer": cfg.tokenizer.path,
            "tokenizer_sha256": tok_sha, "text_tokenizer": cfg.text.path, "text_tokenizer_sha256": text_sha,
            "bf16": p.bf16, "manifest": cfg.data.manifest, "clips_per_window": p.clips_per_window}
    fingerprint = f"{tok_sha}|{text_sha}|{cfg.data.size}|{cfg.data.fps}|{p.bf16}"
    shards, plan_rejects, held_out = plan_shards(
        entries, bad_lines, cfg, text.encode, lambda t: tokenizer.latent_shape(t, cfg.data.size, cfg.data.size),
        tokenizer.codebook_size, fingerprint)
    windows = sum(len(s.windows) for s in shards)
    log.info("pretokenize: %d windows -> %d clips in %d shards planned (%d planning rejects, %d held out)",
             windows, sum(s.num_clips for s in shards), len(shards), len(plan_rejects), held_out)
    del tokenizer

    result = run_pretokenize(cfg, shards, tokenizer_bytes, meta["codebook_size"], storage)
    s = finish(cfg, storage, result, plan_rejects, meta, windows, held_out, time.time() - start)
    print(f"pretokenize: {s['videos']} videos, {s['clips']} clips, {s['video_tokens']} video tokens, "
          f"{s['shards']} shards ({s['shards_skipped']} skipped), {s['rejects']} rejects, "
          f"{s['wall_s']:.1f} s, {s['clips_per_s']:.2f} clips/s -> {p.out}", flush=True)
    return 0


if __name__ == "__main__":
    run_job(main)

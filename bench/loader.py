"""Shard loader token rate from S3 against the token rate the demo model's training step consumes,
both measured in the same run.

    python bench/loader.py [--config configs/demo/tiny_lm.yaml] [--samples 240] [--workers 2]
                           [--seconds 10] [--steps 6] [--endpoint http://host:port] [key=value ...]

1. Writes demo-shaped token shards (images and 17-frame clips at the config's data.size, uint16
   ids, captions of 8-40 pieces) to an S3 server: moto on 127.0.0.1 unless --endpoint names one.
2. Loader: TokenLoader with `--workers` read threads (one ranged GET per sample) yields
   micro-batches of train.token_budget tokens for --seconds; its rate is tokens (padding excluded)
   per second of wall time, the first batch included.
3. Step: the demo model (DeepSpeed ZeRO-1, one rank, the config's precision) trains on batches the
   loader produced, held in memory, so the step is timed without I/O.
Prints both rates and loader / step; at 5x or more the loader never starves the step. One rank's
loader is compared with one rank's step (the demo runs two ranks, each consuming at most this).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from loong_dist.config import load_config
from loong_dist.data.loader import TokenLoader
from loong_dist.data.shards import Sample, ShardIndex, ShardWriter, write_index
from loong_dist.io.storage import Storage, join
from loong_dist.models.ar.layout import IGNORE, VocabLayout
from loong_dist.parallel.process_groups import one_local_rank


def write_demo_shards(storage: Storage, folder: str, n: int, size: int, frames: list[int], codebook: int,
                      text_vocab: int, per_shard: int = 40) -> None:
    """n samples cycling through the clip lengths, ids drawn at random (their values do not change
    the bytes per sample, which is what the loader moves)."""
    rng = np.random.default_rng(0)
    hw = size // 8
    latent = [1 + (t - 1) // 4 for t in frames]
    summaries = []
    for s in range(0, n, per_shard):
        with ShardWriter(storage, join(folder, f"shard-{s // per_shard:06d}.tar"), codebook) as w:
            for i in range(s, min(n, s + per_shard)):
                f = latent[i % len(latent)]
                text = np.concatenate([[2], rng.integers(6, text_vocab, rng.integers(8, 40))])
                w.add(Sample(f"b{i:06d}", rng.integers(0, codebook, (f, hw, hw)), text, f"caption {i}",
                             {"frames": frames[i % len(latent)]}))
        summaries.append(w.summary)
    write_index(storage, folder, summaries, {"codebook_size": codebook, "text_vocab_size": text_vocab, "size": size})


def non_pad(batch: dict, layout: VocabLayout) -> int:
    return int((batch["tokens"] != layout.pad_id).sum())


def loader_rate(loader: TokenLoader, layout: VocabLayout, seconds: float) -> tuple[float, list[dict]]:
    t0, tokens, kept = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < seconds:
        batch = next(loader)
        tokens += non_pad(batch, layout)
        if len(kept) < 16:
            kept.append(batch)
    return tokens / (time.perf_counter() - t0), kept


def step_rate(cfg, layout: VocabLayout, batches: list[dict], steps: int, warmup: int = 2) -> float:
    from loong_dist.parallel.engine import build_engine, build_model
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel

    groups = init_parallel(1)
    try:
        torch.manual_seed(0)
        engine = build_engine(build_model(cfg.model, layout.padded_vocab_size, groups, cfg.parallel), cfg, groups)
        order = [batches[i % len(batches)] for i in range(warmup + steps)]
        tokens, t0 = 0, None
        for i, batch in enumerate(order):
            if i == warmup:
                t0 = time.perf_counter()
            per_token = engine(batch["tokens"], batch["targets"])  # (b, s), 0 where ignored
            loss = per_token.sum() / (batch["targets"] != IGNORE).sum().clamp(min=1)
            engine.backward(loss)
            engine.step()
            if i >= warmup:
                tokens += non_pad(batch, layout)
        return tokens / (time.perf_counter() - t0)
    finally:
        destroy_parallel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo/tiny_lm.yaml")
    p.add_argument("--samples", type=int, default=240)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--codebook", type=int, default=None,
                   help="video codes; default: the product of tokenizer.fsq_levels")
    p.add_argument("--endpoint", default=None, help="S3 endpoint; default: a moto server on 127.0.0.1")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    args.codebook = args.codebook or math.prod(cfg.tokenizer.fsq_levels)

    server = None
    if args.endpoint is None:
        from moto.server import ThreadedMotoServer
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        args.endpoint = f"http://{host}:{port}"
        fake = (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"), ("AWS_DEFAULT_REGION", "us-east-1"))
        for k, v in fake:
            os.environ.setdefault(k, v)
    os.environ["AWS_ENDPOINT_URL"] = args.endpoint
    try:
        import boto3
        bucket = "loong-bench-loader"
        client = boto3.client("s3", endpoint_url=args.endpoint)
        if bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
            client.create_bucket(Bucket=bucket)
        storage, folder = Storage(cfg.storage), f"s3://{bucket}/shards"
        t0 = time.perf_counter()
        # The clip lengths whose sequences (video + the longest caption + specials) fit the model.
        per_frame = (cfg.data.size // 8) ** 2
        frames = [t for t in cfg.data.frames
                  if (1 + (t - 1) // 4) * per_frame + cfg.text.max_text_tokens + 3 <= cfg.model.max_seq_len]
        write_demo_shards(storage, folder, args.samples, cfg.data.size, frames, args.codebook, cfg.text.vocab_size)
        write_s = time.perf_counter() - t0
        index = ShardIndex.load(folder, storage)
        layout = VocabLayout(text_vocab_size=cfg.text.vocab_size, codebook_size=args.codebook,
                             vocab_multiple=cfg.model.vocab_multiple)
        loader = TokenLoader(index, layout, cfg.train.token_budget, seed=cfg.run.seed, storage=Storage(cfg.storage),
                             workers=args.workers)
        load_tps, batches = loader_rate(loader, layout, args.seconds)
        loader.close()
        with one_local_rank():  # its rendezvous hosted here, unless a launcher started this process
            step_tps = step_rate(cfg, layout, batches, args.steps)
    finally:
        if server is not None:
            server.stop()
    print(f"shards: {args.samples} samples of {frames} frames at {cfg.data.size} px "
          f"({index.totals['video_tokens']} video tokens) on {args.endpoint}, "
          f"written in {write_s:.1f} s; model {cfg.model.size}, {cfg.parallel.precision}, token budget "
          f"{cfg.train.token_budget}, codebook {args.codebook}, {torch.get_num_threads()} torch threads")
    print(f"loader ({args.workers} read threads, S3 ranged GETs): {load_tps:10.0f} tokens/s")
    print(f"training step (DeepSpeed, 1 rank):           {step_tps:10.0f} tokens/s")
    print(f"ratio loader / step: {load_tps / step_tps:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()

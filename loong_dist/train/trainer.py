"""The training loop: bucketed shards -> DeepSpeed engine, with checkpoints that resume exactly.

Each optimizer step takes `optim.grad_accum_steps` micro-batches from the loader; the loss of a
micro-batch is the mean over its video tokens. A checkpoint is DeepSpeed's (model, optimizer,
scheduler, ZeRO shards) plus, as client state, the step, the loader position and the RNG states,
so a run started again with the same command continues with the same next batches and losses.
DeepSpeed writes the `latest` pointer after the checkpoint folder, so a save cut short leaves the
previous checkpoint in charge.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from loong_dist.config import Config
from loong_dist.data.loader import TokenLoader
from loong_dist.data.shards import ShardIndex
from loong_dist.io.storage import Storage
from loong_dist.models.ar.layout import IGNORE, VocabLayout
from loong_dist.models.ar.sizes import flops_per_token
from loong_dist.parallel.engine import build_engine, build_model
from loong_dist.parallel.process_groups import ParallelGroups

log = logging.getLogger(__name__)


@dataclass
class StepStats:
    step: int
    loss: float
    lr: float
    tokens: int
    """Input positions processed this step on all ranks (padding excluded)."""
    seconds: float


def layout_from_index(index: ShardIndex, vocab_multiple: int) -> VocabLayout:
    meta = index.meta
    for key in ("codebook_size", "text_vocab_size"):
        if key not in meta:
            raise ValueError(f"{index.folder}/index.json: meta has no '{key}'")
    return VocabLayout(text_vocab_size=int(meta["text_vocab_size"]), codebook_size=int(meta["codebook_size"]),
                       vocab_multiple=vocab_multiple)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class Trainer:
    def __init__(self, cfg: Config, groups: ParallelGroups, storage: Storage | None = None):
        self.cfg, self.groups = cfg, groups
        self.storage = storage or Storage(cfg.storage)
        self.out = Path(cfg.run.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.out.mkdir(parents=True, exist_ok=True)
        index = ShardIndex.load(cfg.train.shards, self.storage)
        self.layout = layout_from_index(index, cfg.model.vocab_multiple)
        torch.manual_seed(cfg.run.seed)
        self.model = build_model(cfg.model, self.layout.padded_vocab_size, groups, cfg.parallel)
        self.engine = build_engine(self.model, cfg, groups)
        self.loader = TokenLoader(index, self.layout, cfg.train.token_budget, groups.dp_rank, groups.dp_size,
                                  cfg.run.seed, cfg.train.latent_frames or None, self.storage, cfg.train.loader_workers)
        self.step = 0
        self.is_main = (not dist.is_initialized()) or dist.get_rank() == 0
        if self.is_main:
            self.padding = self.loader.padding_report()
            buckets = {f: b.micro_batch for f, b in self.loader.sampler.buckets.items()}
            log.info("buckets (latent frames: micro-batch) %s; padding %.2f%% bucketed vs %.2f%% naive "
                     "(pad-to-longest, batch %d)", buckets, 100 * self.padding["bucketed"], 100 * self.padding["naive"],
                     self.padding["naive_batch_size"])
            (self.out / "padding.json").write_text(json.dumps(dict(self.padding, micro_batch=buckets)) + "\n")

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self) -> None:
        tag = f"step{self.step:08d}"
        client = {"step": self.step, "loader": self.loader.state_dict(), "rng": rng_state(),
                  "layout": vars(self.layout)}
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state=client)
        if self.is_main:
            tags = sorted(p.name for p in self.ckpt_dir.glob("step*") if p.is_dir())
            for old in tags[:-self.cfg.train.keep_checkpoints]:
                shutil.rmtree(self.ckpt_dir / old, ignore_errors=True)
        log.info("checkpoint %s saved", tag)

    def resume(self) -> bool:
        """Load the latest checkpoint in the run folder, if any."""
        if not (self.ckpt_dir / "latest").exists():
            return False
        path, client = self.engine.load_checkpoint(str(self.ckpt_dir))
        if path is None:
            return False
        self.step = int(client["step"])
        self.loader.load_state_dict(client["loader"])
        set_rng_state(client["rng"])
        log.info("resumed from %s at step %d", path, self.step)
        return True

    # -- the loop ------------------------------------------------------------------------------

    def train_step(self) -> StepStats:
        start = time.perf_counter()
        losses, tokens = [], 0
        for _ in range(self.cfg.optim.grad_accum_steps):
            batch = {k: v.to(self.groups.device) for k, v in next(self.loader).items()}
            valid = batch["targets"] != IGNORE
            per_token = self.engine(batch["tokens"], batch["targets"])  # (b, s), 0 where ignored
            loss = per_token.sum() / valid.sum().clamp(min=1)
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach())
            tokens += int((batch["tokens"] != self.layout.pad_id).sum())
        loss = torch.stack(losses).mean()
        if dist.is_initialized():  # the mean over data-parallel ranks, for logging
            dist.all_reduce(loss, group=self.groups.dp_group)
            loss /= self.groups.dp_size
            t = torch.tensor(tokens, device=loss.device)
            dist.all_reduce(t, group=self.groups.dp_group)
            tokens = int(t)
        self.step += 1
        return StepStats(self.step, float(loss), float(self.engine.get_lr()[0]), tokens, time.perf_counter() - start)

    def fit(self, steps: int | None = None, on_step=None) -> list[StepStats]:
        steps = steps or self.cfg.optim.steps
        history = []
        m = self.cfg.model
        flops = flops_per_token(m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim, self.layout.padded_vocab_size,
                                self.loader.sampler.buckets[max(self.loader.sampler.buckets)].max_len)
        metrics = self.out / "metrics.jsonl"
        while self.step < steps:
            stats = self.train_step()
            history.append(stats)
            if on_step is not None:
                on_step(stats)
            if self.is_main:
                with open(metrics, "a") as f:
                    f.write(json.dumps(vars(stats)) + "\n")
                if stats.step % self.cfg.run.log_every == 0 or stats.step == steps:
                    log.info("step %d/%d loss %.4f lr %.2e %.0f tokens/s (~%.2f TFLOP/s)", stats.step, steps,
                             stats.loss, stats.lr, stats.tokens / stats.seconds,
                             flops * stats.tokens / stats.seconds / 1e12)
            if self.cfg.train.save_every and stats.step % self.cfg.train.save_every == 0:
                self.save()
        if not self.cfg.train.save_every or self.step % self.cfg.train.save_every:
            self.save()
        return history

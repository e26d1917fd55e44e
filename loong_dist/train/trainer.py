"""The training loop: bucketed shards -> DeepSpeed engine, with checkpoints that resume exactly.

Each optimizer step takes this rank's micro-batches of one global batch from the loader; the loss of a
micro-batch is `loss.mode`: the plain mean over its video tokens, or Loong's weighted mean of
latent-frame group means (loong_dist/models/losses.py). Either way the means are over the tokens
of the global batch, every micro-batch of the step on every data-parallel rank: token counts are
summed over all of them before the first backward, each micro-batch's loss is its share of the
global loss times dp_size, and DeepSpeed's gradient average over the ranks then gives the
gradient of the global loss (`train_step`). With `train.global_batch_tokens` the global batch is
a fact of the config: the same samples in the same order on any layout (data/bucketing.py).

A checkpoint is layout-free (loong_dist/parallel/layout_free.py): the single-device fp32 weights
and Adam moments, written sharded by every rank with torch DCP, plus each rank's client state (the
step, the loader position, the RNG streams, the scheduler) and meta.json (the layout that wrote it
and the global batch). A run started again with the same command - or on another TP x DP x ZeRO
layout with the same global batch - continues with the same next batches and losses; a changed
global batch is refused unless `train.allow_batch_change`. metrics.jsonl is cut back to the
resumed step. `latest` moves after every rank's files are written, so a save cut short leaves the
previous checkpoint in charge. `train.exit_interval` saves and stops after a given step.
A stage starts from `train.init_from` (the previous stage's
model.safetensors); each stage ends by exporting its single-device weights to
`<run>/model.safetensors`, with the model config and layout, for inference without DeepSpeed.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from loong_dist.config import Config, GenerateConfig
from loong_dist.data.loader import TokenLoader
from loong_dist.data.shards import ShardError, ShardIndex
from loong_dist.io.run_folder import RunFolder, first_on_its_disk, local_input, scratch_for
from loong_dist.io.storage import Storage, is_s3, join
from loong_dist.errors import ConfigError, UserError
from loong_dist.models.ar.checkpoint import load_model, read_model_meta, save_model
from loong_dist.models.ar.layout import IGNORE, VocabLayout
from loong_dist.models.ar.sizes import flops_per_token
from loong_dist.models.losses import combine, frame_groups, frame_sums, group_counts, group_sums
from loong_dist.parallel.engine import build_engine, build_model
from loong_dist.parallel.layout_free import full_state_dict, read_state
from loong_dist.parallel.process_groups import ParallelGroups
from loong_dist.train.checkpoints import (is_layout_free, read_checkpoint, read_client, read_meta,
                                          write_checkpoint)
from loong_dist.train.checkpoint_mirror import download_latest, fetch_tag, publish_checkpoint, resume_tag
from loong_dist.train.telemetry import plot_frame_losses, rewind_logs

log = logging.getLogger(__name__)


@dataclass
class StepStats:
    step: int
    loss: float
    lr: float
    tokens: int
    """Input positions processed this step on all ranks (padding excluded)."""
    seconds: float
    frame_loss: list[float | None] = field(default_factory=list)
    """Mean loss per latent-frame index over the global batch (None: no such frame this step)."""
    plain_loss: float = 0.0
    """The plain token mean of the step (equals `loss` under loss.mode=token_mean)."""


def layout_from_index(index: ShardIndex, vocab_multiple: int, video_codes: int = 0,
                      storage: Storage | None = None, code_levels: bool = False) -> VocabLayout:
    """The vocabulary of a new model on these shards: every code of the codebook, or with
    `video_codes` N > 0 the N most frequent ones (code_counts.json; ties to the lower id). The FSQ
    levels are recorded with kept codes or `code_levels` (model.code_level_embeddings)."""
    meta = index.meta
    levels = bool(video_codes or code_levels)
    for key in ("codebook_size", "text_vocab_size") + (("fsq_levels",) if levels else ()):
        if key not in meta:
            raise ShardError(f"{index.folder}/index.json: meta has no '{key}'")
    codes: tuple[int, ...] = ()
    if video_codes:
        counts = index.code_counts(storage)
        order = np.argsort(-counts, kind="stable")[:video_codes]
        codes = tuple(sorted(int(c) for c in order if counts[c] > 0))
    return VocabLayout(text_vocab_size=int(meta["text_vocab_size"]), codebook_size=int(meta["codebook_size"]),
                       vocab_multiple=vocab_multiple, codes=codes,
                       fsq_levels=tuple(meta.get("fsq_levels", ())) if levels else ())


RECOMMENDED_GENERATION = ("temperature", "top_k", "top_p", "cfg_scale", "window_latent_frames",
                          "overlap_latent_frames", "reencode", "first_frame_candidates")
"""Sampling settings an export carries (the stage config's `generate` section): jobs.generate
uses them unless told otherwise."""

DRAW_PART = 2048
"""train.self_context: places whose logits are alive at once in the drawing pass (x the vocabulary)."""


def recommended_generation(gen: GenerateConfig) -> dict:
    return {k: getattr(gen, k) for k in RECOMMENDED_GENERATION}


def rng_state() -> dict:
    """Python, numpy and torch RNG states as plain values and tensors (a checkpoint loads with
    torch.load(weights_only=True): no numpy objects in it)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def model_file(init_from: str) -> str:
    """`train.init_from` as a model file: the path or URI itself when it names a .safetensors
    file, else <run folder>/model.safetensors (a local folder or an s3:// run prefix)."""
    if init_from.endswith(".safetensors") or (not is_s3(init_from) and Path(init_from).is_file()):
        return init_from
    return join(init_from, "model.safetensors")


class Trainer:
    def __init__(self, cfg: Config, groups: ParallelGroups, storage: Storage | None = None):
        self.cfg, self.groups = cfg, groups
        self.storage = storage or Storage(cfg.storage)
        self.is_main = (not dist.is_initialized()) or dist.get_rank() == 0
        self.node_main = first_on_its_disk()  # one rank per disk moves files
        # The run folder may be an s3:// prefix: every node then works in its own scratch copy
        # (self.out) and the files that matter are published to it; nodes share nothing else.
        self.run = RunFolder(cfg.run.out_dir, self.storage)
        self.out = self.run.local
        self.ckpt_dir = self.out / "checkpoints"
        self.out.mkdir(parents=True, exist_ok=True)
        self.mirror = cfg.train.checkpoint_uri or (self.run.uri_of("checkpoints") if self.run.remote else "")
        """Where checkpoints are uploaded and resumed from besides this node's disk ("" : nowhere)."""
        index = ShardIndex.load_many([f for f in cfg.train.shards.split(",") if f], self.storage)
        self.init_file = self._fetch_init() if cfg.train.init_from else None
        if self.init_file:  # a later stage keeps the vocabulary its weights were trained with
            self.layout = self._inherited_layout(self.init_file, index)
        else:
            self.layout = layout_from_index(index, cfg.model.vocab_multiple, cfg.model.video_codes, self.storage,
                                            cfg.model.code_level_embeddings)
        # Recorded in the export, so that generation finds and checks the tokenizers the shards came from.
        self.data_meta = {k: index.meta[k] for k in ("size", "fps", "tokenizer", "tokenizer_sha256",
                                                      "text_tokenizer_sha256") if k in index.meta}
        self.text_tokenizer_uri = index.meta.get("text_tokenizer")
        torch.manual_seed(cfg.run.seed)
        levels = None
        if cfg.model.code_level_embeddings:
            if not self.layout.fsq_levels:  # a stage started from a model whose layout did not record them
                raise ConfigError(f"config: model.code_level_embeddings=true needs the FSQ levels in the vocabulary "
                                  f"layout; train.init_from={cfg.train.init_from!r} has none")
            levels = torch.from_numpy(self.layout.code_levels())
        self.model = build_model(cfg.model, self.layout.padded_vocab_size, groups, cfg.parallel, levels)
        if self.init_file:
            self._init_weights(self.init_file)
        self.engine = build_engine(self.model, cfg, groups)
        if cfg.train.init_from and cfg.train.init_optimizer:
            self._init_optimizer(cfg.train.init_from)
        self.loader = TokenLoader(index, self.layout, cfg.train.token_budget, groups.dp_rank, groups.dp_size,
                                  cfg.run.seed, cfg.train.latent_frames or None, self.storage, cfg.train.loader_workers,
                                  cfg.train.mix or None, cfg.train.caption_dropout, cfg.train.global_batch_tokens,
                                  cfg.model.latent_grid if cfg.model.rope == "3d" else None, cfg.train.context_noise,
                                  cfg.train.self_context)
        if cfg.loss.mode == "frame_groups":
            self.boundaries, self.weights = list(cfg.loss.boundaries), list(cfg.loss.weights)
        else:  # one group: the plain token mean
            self.boundaries, self.weights = [], [1.0]
        self._check_buckets()
        self.n_frames = max(self.loader.sampler.buckets)  # telemetry: latent frames of the longest bucket
        self.step = 0
        self._tb = None
        if self.is_main:
            self.padding = self.loader.padding_report()
            buckets = {f: b.micro_batch for f, b in self.loader.sampler.buckets.items()}
            log.info("buckets (latent frames: micro-batch) %s; padding %.2f%% bucketed vs %.2f%% naive "
                     "(pad-to-longest, batch %d)", buckets, 100 * self.padding["bucketed"], 100 * self.padding["naive"],
                     self.padding["naive_batch_size"])
            self.run.write_text("padding.json", json.dumps(dict(self.padding, micro_batch=buckets)) + "\n")

    def _check_buckets(self) -> None:
        """Before the first step: the longest sequence of every bucket fits the model's positions
        (else the first such batch would fail hours in), and a bucket that can never fill one
        global batch (it would silently never train) is named."""
        sampler, m = self.loader.sampler, self.cfg.model
        for f, b in sorted(sampler.buckets.items()):
            if b.max_len > m.max_seq_len:
                raise ConfigError(f"config: model.max_seq_len={m.max_seq_len}: the {f}-latent-frame bucket holds "
                                  f"sequences of up to {b.max_len} tokens; raise it or leave those out "
                                  f"(train.latent_frames)")
            if b.size < b.global_batch:
                log.warning("bucket of %d latent frames: %d samples, fewer than one global batch of %d: it is never "
                            "trained on", f, b.size, b.global_batch)
            elif b.global_batch < sampler.dp_size:
                log.warning("bucket of %d latent frames: a global batch of %d samples leaves some of the %d "
                            "data-parallel ranks without one (they run an empty micro-batch)", f, b.global_batch,
                            sampler.dp_size)

    # -- stage start ---------------------------------------------------------------------------

    def _fetch_init(self) -> Path:
        """The previous stage's model file on this node: read in place, or (s3://) downloaded by
        one rank per node into its scratch while the others wait."""
        uri = model_file(self.cfg.train.init_from)
        if not is_s3(uri):
            return Path(uri)
        path = scratch_for(uri) / uri.rsplit("/", 1)[-1]
        if self.node_main:
            try:
                local_input(uri, self.storage)
            except UserError as e:
                raise ConfigError(f"config: train.init_from={self.cfg.train.init_from!r}: {e}") from None
        self._barrier()
        return path

    def _inherited_layout(self, path: Path, index: ShardIndex) -> VocabLayout:
        """The layout of the model this stage starts from, checked against these shards' tokenizers."""
        layout = read_model_meta(path)[1]
        meta = index.meta
        if (layout.codebook_size, layout.text_vocab_size) != (meta.get("codebook_size"), meta.get("text_vocab_size")):
            raise ConfigError(f"config: train.init_from={str(path)!r}: trained on {layout.codebook_size} video codes "
                              f"and {layout.text_vocab_size} text pieces; the shards {self.cfg.train.shards} hold "
                              f"{meta.get('codebook_size')} and {meta.get('text_vocab_size')}")
        return layout

    def _init_weights(self, path: Path) -> None:
        """Start from the previous stage's exported weights (split into this rank's TP shard)."""
        cfg, layout, extra = read_model_meta(path)
        full, _ = load_model(path)
        state = full.state_dict()  # an exported file has no code level vectors: theirs start at zero
        state.update({k: torch.zeros_like(v) for k, v in self.model.state_dict().items()
                      if k.endswith(".level_vectors")})
        if self.groups.tp_size > 1:
            from loong_dist.parallel.tensor_parallel import load_sharded
            load_sharded(self.model, state, self.groups)
        else:
            try:
                self.model.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ConfigError(f"config: train.init_from={str(path)!r}: weights do not fit model "
                                  f"{self.cfg.model.size} ({str(e).splitlines()[1].strip()})") from None
        shown = {k: f"<{len(v):,} chars>" if isinstance(v, str) and len(v) > 120 else v for k, v in extra.items()}
        log.info("initialised from %s (%s)", path, shown)  # the carried text tokenizer is kilobytes of base64

    def _init_optimizer(self, run: str) -> None:
        """Also take the previous stage's optimizer state (Adam's moments and step count from its
        latest checkpoint, on whatever layout it ran); the learning-rate schedule starts afresh."""
        ckpt = Path(run) / "checkpoints"
        if is_s3(run):  # one rank per node copies the latest tag into its scratch
            ckpt = scratch_for(join(run, "checkpoints"))
            if self.node_main:
                download_latest(self.storage, join(run, "checkpoints"), ckpt)
            self._barrier()
        if not (ckpt / "latest").exists():
            raise ConfigError(f"config: train.init_optimizer=true needs train.init_from to be a run folder with "
                              f"checkpoints; {join(run, 'checkpoints', 'latest')} does not exist")
        folder = ckpt / (ckpt / "latest").read_text().strip()
        if not is_layout_free(folder):  # DeepSpeed's own files (runs of loong-dist before layout-free checkpoints)
            self.engine.load_checkpoint(str(ckpt), load_optimizer_states=True, load_lr_scheduler_states=False)
            return
        read_state(folder, self.engine, self.model, self.groups, read_client(folder)["adam_step"])

    # -- checkpoints ---------------------------------------------------------------------------

    def parallel_layout(self) -> dict:
        return {"tp": self.groups.tp_size, "dp": self.groups.dp_size, "zero": self.cfg.parallel.zero_stage,
                "world": dist.get_world_size() if dist.is_initialized() else 1}

    def global_batch(self) -> dict:
        """Tokens per optimizer step over all ranks, and whether the config fixes them
        (train.global_batch_tokens) or the layout does (token budget x ranks x accumulation)."""
        t = self.cfg.train
        if t.global_batch_tokens:
            return {"tokens": t.global_batch_tokens, "fixed": True}
        return {"tokens": t.token_budget * self.groups.dp_size * self.cfg.optim.grad_accum_steps, "fixed": False}

    def save(self) -> None:
        """Checkpoint `step<N>` (loong_dist/train/checkpoints.py): the layout-free weights and Adam
        moments written sharded by every rank, each rank's client state (step, loader position, RNG
        streams, the optimizer's scheduler), and meta.json (layout, global batch). `latest` moves
        only after every rank finished its files, in one rename."""
        tag = f"step{self.step:08d}"
        client = {"step": self.step, "loader": self.loader.state_dict(), "rng": rng_state(),
                  "layout": dataclasses.asdict(self.layout)}
        meta = {"step": self.step, "parallel": self.parallel_layout(), "global_batch": self.global_batch()}
        write_checkpoint(self.ckpt_dir / tag, self.engine, self.model, self.groups, client, meta, self.node_main)
        if self.is_main:  # before `latest` moves: a run resumed from this tag on a new node continues these metrics
            self._publish_telemetry()
        publish_checkpoint(self.storage, self.ckpt_dir, self.mirror, tag, self.cfg.train.keep_checkpoints,
                           self.is_main, self.node_main)
        log.info("checkpoint %s saved%s", tag, f" and mirrored to {self.mirror}" if self.mirror else "")

    def _publish_telemetry(self) -> None:
        """metrics.jsonl and the TensorBoard events into the run folder (a no-op when it is local)."""
        if self._tb is not None:
            self._tb.flush()
        for name in ("metrics.jsonl", "tensorboard", "frame_loss.png"):
            self.run.publish(name)

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def _check_resume(self, tag: str, meta: dict) -> None:
        """Log what a resume on another layout changes; refuse a changed global batch."""
        old, new = meta["parallel"], self.parallel_layout()
        gb_old, gb_new = meta["global_batch"], self.global_batch()

        def show(p):
            return f"TP={p['tp']} x DP={p['dp']}, ZeRO-{p['zero']} ({p['world']} ranks)"

        if gb_old != gb_new and not self.cfg.train.allow_batch_change:
            how = "train.global_batch_tokens" if gb_old["fixed"] else "train.token_budget x data-parallel ranks"
            raise UserError(f"checkpoint {tag}: written with a global batch of {gb_old['tokens']} tokens ({how}, "
                            f"{show(old)}), this run's is {gb_new['tokens']} ({show(new)}); pass "
                            f"train.global_batch_tokens={gb_old['tokens']} to continue it exactly, or "
                            f"train.allow_batch_change=true to continue with the new batch")
        if self.is_main:
            moved = "on the same layout" if old == new else f"written at {show(old)}, now {show(new)}"
            log.info("resuming step %d of checkpoint %s %s; global batch %d tokens%s", meta["step"], tag, moved,
                     gb_new["tokens"], "" if gb_old == gb_new else f" (was {gb_old['tokens']})")

    def resume(self) -> bool:
        """Load the latest checkpoint of the run, the same tag on every rank (`resume_tag`), on
        whatever layout wrote it; every node first makes sure its disk holds all of that tag,
        from the mirror where it does not."""
        tag = resume_tag(self.storage, self.ckpt_dir, self.mirror, self.is_main)
        if tag is None:
            return False
        if fetch_tag(self.storage, self.ckpt_dir, self.mirror, tag, self.node_main):
            log.info("checkpoint %s downloaded from %s", tag, self.mirror)
        folder = self.ckpt_dir / tag
        if not is_layout_free(folder):  # DeepSpeed's own files: resumable on the layout that wrote them
            path, client = self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
            if path is None:
                return False
        else:
            self._check_resume(tag, read_meta(folder))
            client = read_checkpoint(folder, self.engine, self.model, self.groups)
            path = folder
        self.step = int(client["step"])
        self.loader.load_state_dict(client["loader"])
        set_rng_state(client["rng"])
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def export(self, path: Path | None = None) -> Path:
        """Write <run>/model.safetensors (or `path`): single-device fp32 weights + model config +
        layout + what generation needs (see loong_dist/inference/carried.py). A collective."""
        state = full_state_dict(self.engine, self.model, self.groups)
        path = path or self.out / "model.safetensors"
        if self.is_main:
            extra = {"step": self.step, "run": self.run.uri, "init_from": self.cfg.train.init_from,
                     "loss_mode": self.cfg.loss.mode, **self.data_meta,
                     "generate": recommended_generation(self.cfg.generate)}
            proto = self._text_tokenizer_proto()
            if proto is not None:
                extra["text_tokenizer_model"] = base64.b64encode(proto).decode("ascii")
            save_model(state, self.cfg.model, self.layout, path, extra)
            name = path.relative_to(self.out).as_posix()
            self.run.publish(name)
            log.info("exported %s", self.run.uri_of(name))
        if dist.is_initialized():  # the next stage may start in these same processes
            dist.barrier()
        return path

    def _text_tokenizer_proto(self) -> bytes | None:
        """The sentencepiece model the shards were tokenized with (carried inside the export), when
        it is still where pretokenize read it and still the same file."""
        if not self.text_tokenizer_uri:
            return None
        try:
            proto = self.storage.read_bytes(self.text_tokenizer_uri)
        except UserError as e:
            log.warning("text tokenizer %s not readable (%s): the export will not carry it", self.text_tokenizer_uri, e)
            return None
        want = self.data_meta.get("text_tokenizer_sha256")
        if want and hashlib.sha256(proto).hexdigest() != want:
            log.warning("text tokenizer %s changed since the shards were written: the export will not carry it",
                        self.text_tokenizer_uri)
            return None
        return proto

    # -- the loop ------------------------------------------------------------------------------

    def _dp_sum(self, t: torch.Tensor) -> torch.Tensor:
        if dist.is_initialized() and self.groups.dp_size > 1:
            dist.all_reduce(t, group=self.groups.dp_group)
        return t

    def _step_batches(self) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of one optimizer step: those of one global batch
        (train.global_batch_tokens), or one of each of optim.grad_accum_steps global batches."""
        if self.cfg.train.global_batch_tokens:
            return self.loader.next_step()
        return [b for _ in range(self.cfg.optim.grad_accum_steps) for b in self.loader.next_step()]

    def _self_context(self, tokens: torch.Tensor, resample: torch.Tensor) -> torch.Tensor:
        """train.self_context: the inputs with the places where `resample` >= 0 replaced by the model's
        own draws there (`Transformer.draw_inputs`, temperature 1 among the video tokens, the uniform
        given). Every rank runs the pass, places or not, and sends them through the head in as many parts
        (of at most DRAW_PART places) as the rank with the most: under ZeRO-3 each call is collective."""
        rows, cols = torch.nonzero(resample >= 0, as_tuple=True)
        parts = torch.tensor([max(1, -(-len(rows) // DRAW_PART))], device=tokens.device)
        if dist.is_initialized() and self.groups.dp_size > 1:
            dist.all_reduce(parts, op=dist.ReduceOp.MAX, group=self.groups.dp_group)
        drawn = self.engine.module.draw_inputs(tokens, rows, cols, resample[rows, cols], self.layout.video_offset,
                                               self.layout.vocab_size, int(parts))
        out = tokens.clone()
        out[rows, cols] = drawn
        return out

    def train_step(self) -> StepStats:
        """One optimizer step over this rank's micro-batches (`_step_batches`) on every rank.

        The loss is that of the whole global batch: the token counts of each loss group are summed
        over every micro-batch of the step on every rank before any backward, and each micro-batch
        contributes its group sums over those counts. DeepSpeed averages the gradients over the
        ranks, so each loss is scaled by their number first; backward only accumulates and one
        step() reduces and updates. The step's gradient is then exactly that of the global
        weighted mean, whatever mix of buckets (an image micro-batch beside a clip one) the step
        holds and however many micro-batches each rank needed."""
        start = time.perf_counter()
        dp, n = self.groups.dp_size, len(self.weights)
        batches = [{k: v.to(self.groups.device) for k, v in b.items()} for b in self._step_batches()]
        groups = [frame_groups(b["frame"], self.boundaries) for b in batches]  # (b, s) each, -1 where ignored
        counts = self._dp_sum(sum(group_counts(g, n) for g in groups))  # (g,) over the global batch
        # loss value, plain token sum, valid targets, input tokens: summed over micro-batches then ranks
        totals = torch.zeros(4, dtype=torch.float64, device=self.groups.device)
        # loss sums, token counts per latent frame: (2, n_frames)
        frames = torch.zeros(2, self.n_frames, dtype=torch.float64, device=self.groups.device)
        for batch, group in zip(batches, groups):
            if "resample" in batch:
                batch["tokens"] = self._self_context(batch["tokens"], batch.pop("resample"))
            per_token = self.engine(batch["tokens"], batch["targets"])  # (b, s), 0 where ignored
            share = combine(group_sums(per_token, group, n), counts, self.weights)  # this micro-batch's part
            self.engine.backward(share * dp, scale_wrt_gas=False)
            totals += torch.stack([share.detach().double(), per_token.detach().sum().double(),
                                   (batch["targets"] != IGNORE).sum().double(),
                                   (batch["tokens"] != self.layout.pad_id).sum().double()])
            sums, cnt = frame_sums(per_token, batch["frame"], self.n_frames)
            frames += torch.stack([sums, cnt])
        lr = float(self.engine.get_lr()[0])  # this step's: step() moves the scheduler to the next one
        self.engine.step()
        totals, frames = self._dp_sum(totals), self._dp_sum(frames)
        loss, plain_loss = float(totals[0]), float(totals[1] / totals[2].clamp(min=1))
        per_frame = [float(s / c) if c > 0 else None for s, c in zip(frames[0].tolist(), frames[1].tolist())]
        self.step += 1
        return StepStats(self.step, loss, lr, int(totals[3]), time.perf_counter() - start,
                         per_frame, plain_loss)

    def _log_metrics(self, stats: StepStats, metrics: Path) -> None:
        with open(metrics, "a") as f:
            f.write(json.dumps(vars(stats)) + "\n")
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=stats.step)
        self._tb.add_scalar("loss/train", stats.loss, stats.step)
        self._tb.add_scalar("loss/token_mean", stats.plain_loss, stats.step)
        self._tb.add_scalar("lr", stats.lr, stats.step)
        for i, v in enumerate(stats.frame_loss):
            if v is not None:
                self._tb.add_scalar(f"loss/frame_{i}", v, stats.step)

    def fit(self, steps: int | None = None, on_step=None) -> list[StepStats]:
        steps = steps or self.cfg.optim.steps
        history = []
        m = self.cfg.model
        flops = flops_per_token(m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim, self.layout.padded_vocab_size,
                                self.loader.sampler.buckets[max(self.loader.sampler.buckets)].max_len)
        metrics = self.out / "metrics.jsonl"
        if self.is_main:
            rewind_logs(self.run, self.step, ["metrics.jsonl"])
        while self.step < steps:
            stats = self.train_step()
            history.append(stats)
            if on_step is not None:
                on_step(stats)
            if self.is_main:
                self._log_metrics(stats, metrics)
                if stats.step % self.cfg.run.log_every == 0 or stats.step == steps:
                    log.info("step %d/%d loss %.4f lr %.2e %.0f tokens/s (~%.2f TFLOP/s)", stats.step, steps,
                             stats.loss, stats.lr, stats.tokens / stats.seconds,
                             flops * stats.tokens / stats.seconds / 1e12)
            if self.cfg.train.save_every and stats.step % self.cfg.train.save_every == 0:
                self.save()
            if self.cfg.train.export_every and stats.step % self.cfg.train.export_every == 0:
                self.export(self.out / "exports" / f"step{stats.step:08d}.safetensors")
            if self.cfg.train.exit_interval and stats.step % self.cfg.train.exit_interval == 0 and stats.step < steps:
                if self.is_main:
                    log.info("step %d: train.exit_interval=%d reached; the same command continues from here",
                             stats.step, self.cfg.train.exit_interval)
                break
        if not self.cfg.train.save_every or self.step % self.cfg.train.save_every:
            self.save()
        if self.step >= self.cfg.optim.steps:  # the stage is done: weights for the next stage / inference
            self.export()
            if self.is_main:
                plot_frame_losses(metrics, self.out / "frame_loss.png", self.run.uri.rstrip("/").rsplit("/", 1)[-1])
        if self.is_main:
            self._publish_telemetry()
        return history

"""Video tokenizer training: reconstruction + FSQ range penalty, data-parallel through the same
DeepSpeed engine builder as the transformer.

Each micro-batch draws `optim.micro_batch_size` clips from the clip bank with a generator seeded
by (seed, step, its index in the global batch: rank x grad_accum_steps + micro-batch) - so a resumed
run draws the same clips, and so does a run on another layout with the same global batch - draws
text over a `tokenizer_train.text_overlay` share of them, crops them to `tokenizer_train.crop` and
flips half (`draw_clips`). Each step's losses (the global batch's means) and learning rate go to `metrics.jsonl`.
Every `eval_every` steps the held-out clips (whole frames) are encoded and decoded with the uint8
API and scored (PSNR, SSIM, codebook use) against the bilinear 8x reference; the numbers go to
TensorBoard and to `eval.jsonl` (with wall time: the PSNR against training time, drawn as
`psnr_curve.png`), and `preview_<step>.gif` shows originals beside reconstructions. Checkpoints:
layout-free (loong_dist/train/checkpoints.py: a run resumes on any number of ranks and ZeRO stage)
plus the weights exported as `tokenizer.safetensors` (what load_tokenizer reads).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from loong_dist.config import Config
from loong_dist.data.clip_bank import build_clip_bank, load_or_build
from loong_dist.data.manifest import read_manifest
from loong_dist.data.text_overlay import overlay_text
from loong_dist.evaluation.plots import line_chart
from loong_dist.evaluation.tokenizer_quality import evaluate_clips
from loong_dist.io.run_folder import RunFolder, first_on_its_disk
from loong_dist.io.storage import Storage
from loong_dist.io.video import write_gif
from loong_dist.models.tokenizer import VideoTokenizer, save_tokenizer
from loong_dist.parallel.engine import build_engine, load_checkpoint_file, use_bf16
from loong_dist.parallel.layout_free import single_device_state
from loong_dist.parallel.process_groups import ParallelGroups, dp_mean, first_rank_says
from loong_dist.train.checkpoints import is_layout_free, read_weights, resume_sampled, sample_layout, write_checkpoint
from loong_dist.train.checkpoint_mirror import download_tag, fetch_tag, publish_checkpoint, resume_tag
from loong_dist.train.telemetry import rewind_logs

log = logging.getLogger(__name__)


def draw_clips(bank: np.ndarray, n: int, seed: list[int], crop: int = 0, text_overlay: float = 0.0) -> torch.Tensor:
    """n clips of `bank` (N, T, H, W, 3) uint8 drawn by a generator seeded with `seed`: a share
    `text_overlay` with text drawn over them (from a stream of its own, so that without text the
    draws are what they were), a random `crop` x `crop` window of each (0: whole frames), and a
    horizontal flip of about half. Returns uint8 (n, T, crop or H, crop or W, 3)."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(bank), n, replace=False))
    clips = np.ascontiguousarray(bank[idx])
    if text_overlay:
        text_rng = np.random.default_rng([*seed, 1])
        for i in np.flatnonzero(text_rng.random(n) < text_overlay):
            clips[i] = overlay_text(clips[i], text_rng)
    clips = torch.from_numpy(clips)
    if crop and crop < min(clips.shape[2:4]):
        ys = rng.integers(0, clips.shape[2] - crop + 1, n)
        xs = rng.integers(0, clips.shape[3] - crop + 1, n)
        clips = torch.stack([c[:, y:y + crop, x_:x_ + crop] for c, y, x_ in zip(clips, ys, xs)])
    flip = torch.from_numpy(rng.random(n) < 0.5)
    clips[flip] = clips[flip].flip(3)
    return clips


class TokenizerTrainer:
    def __init__(self, cfg: Config, groups: ParallelGroups):
        self.cfg, self.groups = cfg, groups
        self.is_main = (not dist.is_initialized()) or dist.get_rank() == 0
        self.node_main = first_on_its_disk()  # one rank per disk moves files
        storage = self.storage = Storage(cfg.storage)
        # An s3:// run folder: each node works in its own scratch copy and publishes what matters.
        self.run = RunFolder(cfg.run.out_dir, storage)
        self.out = self.run.local
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir = self.out / "checkpoints"
        self.mirror = self.run.uri_of("checkpoints") if self.run.remote else ""
        tt = cfg.tokenizer_train
        sources = [[e for e in read_manifest(m, storage)[0] if e.extra.get("split") != "held_out"]
                   for m in tt.manifests]
        if not tt.manifest_shares:
            sources = [[e for source in sources for e in source]]
        self.bank = load_or_build(self.out / "clip_bank.npy", lambda: build_clip_bank(
            sources, tt.clips, tt.frames, cfg.data.fps, cfg.data.size, cfg.run.seed, storage, "training clips",
            shares=tt.manifest_shares or [1.0]))
        self.eval_bank = None
        if tt.eval_manifest and tt.eval_clips:
            held = [e for e in read_manifest(tt.eval_manifest, storage)[0] if e.extra.get("split") == "held_out"]
            self.eval_bank = load_or_build(self.out / "eval_bank.npy", lambda: build_clip_bank(
                held, tt.eval_clips, tt.frames, cfg.data.fps, cfg.data.size, cfg.run.seed + 1, storage,
                "held-out clips"))
        torch.manual_seed(cfg.run.seed)
        self.model = VideoTokenizer(cfg.tokenizer).to(groups.device)
        # fp32 weights and optimizer in DeepSpeed, convs under bf16 autocast: the tokenizer keeps its
        # quantizer and output in float32 itself, which a bf16-cast module would fight.
        self.bf16 = use_bf16(cfg.parallel, groups.device)
        fp32 = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, precision="fp32"))
        self.engine = build_engine(self.model, fp32, groups)
        self.step, self.wall = 0, 0.0
        self.writer = None
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out / "tensorboard"))
            n_params = sum(p.numel() for p in self.model.parameters())
            log.info("tokenizer: %.2fM parameters, codebook %d, bank %s", n_params / 1e6, self.model.codebook_size,
                     tuple(self.bank.shape))

    def batch(self, micro: int = 0) -> torch.Tensor:
        """This rank's clips for micro-batch `micro` of this step: float (b, 3, T, H, W) in [-1, 1]
        (`draw_clips`)."""
        tt = self.cfg.tokenizer_train
        index = self.groups.dp_rank * self.cfg.optim.grad_accum_steps + micro  # in the global batch
        clips = draw_clips(self.bank, self.cfg.optim.micro_batch_size, [self.cfg.run.seed, self.step, index],
                           crop=tt.crop, text_overlay=tt.text_overlay)
        x = clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (b, 3, T, H, W)
        return x.to(self.groups.device)

    def train_step(self) -> dict:
        tt = self.cfg.tokenizer_train
        losses = dict.fromkeys(("loss", "l1", "l2", "fsq_bound"), 0.0)
        gas = self.cfg.optim.grad_accum_steps
        for micro in range(gas):  # backward only accumulates (the engine's accumulation is ours), step() updates
            x = self.batch(micro)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                recon, _, aux = self.engine(x)
            recon = recon.float()
            l1, l2 = F.l1_loss(recon, x), F.mse_loss(recon, x)
            loss = tt.l1_weight * l1 + tt.l2_weight * l2 + tt.fsq_bound_weight * aux["fsq_bound"]
            self.engine.backward(loss / gas, scale_wrt_gas=False)
            for k, v in (("loss", loss), ("l1", l1), ("l2", l2), ("fsq_bound", aux["fsq_bound"])):
                losses[k] += v.item() / gas
        lr = self.engine.get_lr()[0]  # this step's: step() moves the scheduler to the next one
        self.engine.step()
        self.step += 1
        return {**dp_mean(losses, self.groups), "lr": lr}  # losses over the global batch

    def save(self) -> None:
        """Checkpoint `step<N>`, layout-free (loong_dist/train/checkpoints.py): any number of ranks
        resumes it."""
        tag = f"step{self.step:08d}"
        write_checkpoint(self.ckpt_dir / tag, self.engine, self.model, self.groups,
                         {"step": self.step, "wall": self.wall},
                         {"step": self.step, **sample_layout(self.cfg, self.groups)}, self.node_main)
        # every checkpoint is kept: average_last reads the last ones back
        publish_checkpoint(self.storage, self.ckpt_dir, self.mirror, tag, 10 ** 9, self.is_main, self.node_main)
        self._export()

    def _export(self) -> None:
        """tokenizer.safetensors and the run's telemetry, published to the run folder. Every rank
        calls it (the weights may be gathered); the first rank writes."""
        model = self._export_model()
        if not self.is_main:
            return
        save_tokenizer(model, self.out / "tokenizer.safetensors")
        if self.writer is not None:
            self.writer.flush()
        for name in ("tokenizer.safetensors", "metrics.jsonl", "eval.jsonl", "psnr_curve.png", "previews",
                     "tensorboard"):
            self.run.publish(name)

    def _fp32_model(self) -> VideoTokenizer:
        """The weights in a fresh single-device float32 model, gathered where ZeRO-3 partitions them. A
        collective: every rank calls it."""
        model = VideoTokenizer(self.cfg.tokenizer)
        model.load_state_dict(single_device_state(self.engine, self.model, self.groups))
        return model.eval()

    def _export_model(self) -> VideoTokenizer | None:
        """On the first rank, this checkpoint's weights or the mean of the last `average_last`
        checkpoints' (their layout-free weights, read back from the run's folder: whole tensors at
        any ZeRO stage); None on the others. Every rank calls it."""
        n = self.cfg.tokenizer_train.average_last
        if n == 1:
            model = self._fp32_model()  # a collective
            return model if self.is_main else None
        if not self.is_main:
            return None
        if self.mirror:  # this node holds its own ranks' shares of a tag, and no tag older than its joining
            tags = {u[len(self.mirror) + 1:].split("/")[0] for u in self.storage.list(self.mirror)} - {"latest"}
            for tag in sorted(t for t in tags if t[4:].isdigit() and int(t[4:]) <= self.step)[-n:]:
                download_tag(self.storage, self.mirror, self.ckpt_dir, tag)  # the files it lacks
        saved = sorted(d for d in self.ckpt_dir.glob("step*")
                       if d.name[4:].isdigit() and int(d.name[4:]) <= self.step)[-n:]
        total: dict[str, torch.Tensor] = {}
        for d in saved:  # a layout-free checkpoint, or DeepSpeed's model-states file of an older run
            state = (read_weights(d) if is_layout_free(d) else
                     load_checkpoint_file(str(d / "mp_rank_00_model_states.pt"), "cpu")["module"])
            for k, v in state.items():
                total[k] = total.get(k, 0) + v.double()
        model = VideoTokenizer(self.cfg.tokenizer)
        model.load_state_dict({k: (v / len(saved)).float() for k, v in total.items()})
        log.info("exported the mean weights of %s", ", ".join(d.name for d in saved))
        return model.eval()

    def resume(self) -> bool:
        """The run's latest checkpoint, the same tag on every rank (decided on rank 0), fetched
        from the run folder by a node that does not hold it."""
        tag = resume_tag(self.storage, self.ckpt_dir, self.mirror, self.is_main)
        if tag is None:
            return False
        fetch_tag(self.storage, self.ckpt_dir, self.mirror, tag, self.node_main)
        path = self.ckpt_dir / tag
        client = resume_sampled(path, self.engine, self.model, self.groups, sample_layout(self.cfg, self.groups))
        if client is None:
            return False
        self.step, self.wall = int(client["step"]), float(client["wall"])
        log.info("resumed from %s at step %d (%.0f s trained)", path, self.step, self.wall)
        return True

    def evaluate(self) -> dict | None:
        """The held-out scores, on the first rank (None elsewhere). Every rank calls it."""
        if self.eval_bank is None:
            return None
        model = self._fp32_model()  # a collective
        if not self.is_main:
            return None
        result = evaluate_clips(model, self.eval_bank)
        recon = result.pop("recon")
        row = {"step": self.step, "wall_s": round(self.wall, 1),
               **{k: v for k, v in result.items() if k != "per_clip"}}
        with open(self.out / "eval.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        for k in ("psnr", "ssim", "ref_psnr", "used", "perplexity"):
            self.writer.add_scalar(f"eval/{k}", row[k], self.step)
        pairs = np.concatenate([np.asarray(self.eval_bank[:4]), recon[:4]], axis=3)  # original | recon side by side
        write_gif(self.out / "previews" / f"preview_{self.step:08d}.gif", np.concatenate(list(pairs), axis=1),
                  fps=self.cfg.data.fps)
        self._plot_curve()
        log.info("step %d (%.0f s): held-out PSNR %.2f dB (bilinear reference %.2f), SSIM %.3f, codes used %.2f%%",
                 self.step, self.wall, row["psnr"], row["ref_psnr"], row["ssim"], 100 * row["used"])
        return row

    def _plot_curve(self) -> None:
        """psnr_curve.png: held-out PSNR against training time, with the bilinear reference."""
        rows = [json.loads(line) for line in open(self.out / "eval.jsonl")]
        line_chart({"tokenizer": ([r["wall_s"] / 60 for r in rows], [r["psnr"] for r in rows])},
                   self.out / "psnr_curve.png", title="held-out PSNR against training time",
                   xlabel="training time (min)", ylabel="PSNR (dB)",
                   hlines={"bilinear 8x reference": rows[-1]["ref_psnr"]})

    def fit(self, steps: int | None = None, max_seconds: float | None = None) -> None:
        steps = steps or self.cfg.optim.steps
        tt = self.cfg.tokenizer_train
        started = time.time()
        if self.is_main:  # rows logged after the checkpoint resumed from are logged again
            rewind_logs(self.run, self.step, ["metrics.jsonl", "eval.jsonl"])
        if self.step == 0:
            self.evaluate()
        if self.step >= steps:  # a finished run started again: export with this config
            self._export()
            if self.is_main:
                log.info("nothing left to train (step %d of %d); exported %s again", self.step, steps,
                         self.run.uri_of("tokenizer.safetensors"))
        while self.step < steps:
            t0 = time.perf_counter()
            losses = self.train_step()
            self.wall += time.perf_counter() - t0
            if self.is_main:
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": self.step, **losses}) + "\n")
                for k, v in losses.items():
                    self.writer.add_scalar(f"train/{k}", v, self.step)
                if self.step % self.cfg.run.log_every == 0:
                    log.info("step %d/%d loss %.4f (l1 %.4f, l2 %.4f) lr %.2e %.2f s/step", self.step, steps,
                             losses["loss"], losses["l1"], losses["l2"], losses["lr"],
                             self.wall / max(self.step, 1))
            if self.step % tt.eval_every == 0:
                self.evaluate()
            out_of_time = max_seconds is not None and first_rank_says(time.time() - started > max_seconds)
            if self.step % tt.save_every == 0 or self.step == steps or out_of_time:
                self.save()
            if out_of_time:
                log.info("time limit reached at step %d; run the same command again to continue", self.step)
                break
        if self.writer is not None:
            self.writer.flush()

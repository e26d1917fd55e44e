"""Video upscaler training: Charbonnier loss against real frames, data-parallel through the same
DeepSpeed engine builder as the transformer and the tokenizer.

Data (loong_dist/data/upscaler_pairs.py): a bank of `upscaler_train.clips` pairs is made once
(resumably: hours of tokenizer work on a busy CPU survive a kill) and kept in the run folder - real
clips at hr_size from the training manifests (held-out entries never) and the video tokenizer's
reconstruction of them shrunk 4x, the input generation produces.
Each micro-batch draws `optim.micro_batch_size` sequences with a generator seeded by (seed, step,
its index in the global batch: rank x grad_accum_steps + micro-batch), so a resumed run draws the
same ones, and so does a run on another layout with the same global batch (`draw_sequences`): a
random stretch of `window` frames of a clip, a random `crop` px window of it (and the matching 4x
window of the real frames), flipped left-right, flipped upside down and transposed, each half the
time (the eight symmetries of the square, EDSR's augmentation), its input the clean shrunk frames
for a `clean_share` of them, and a `text_share` of those with moving text drawn over the real frames
first (the training footage holds no text; credits and captions do). The recurrence is unrolled
over the window and backpropagated through.
Before the first step the model's fixed linear base becomes the least-squares filter of
`base_fit_frames` bank frames per input kind (`fit_linear_base`), so the curve starts above bicubic.

Every `eval_every` steps the held-out pairs (whole frames, each source at the largest size it has)
are upscaled from both inputs with the uint8 API and scored against bicubic
(loong_dist/evaluation/upscaler_quality.py); the numbers go to TensorBoard and to `eval.jsonl`
(with wall time; drawn as `psnr_curve.png`), and `previews/preview_<step>.gif` shows centre crops,
bicubic | ours | original. Each step's loss (the global batch's mean) goes to `metrics.jsonl`.
Checkpoints: layout-free (loong_dist/train/checkpoints.py: a run resumes on any number of ranks
and ZeRO stage; the fitted linear base is a buffer they hold) plus the weights exported as
`upscaler.safetensors` (what load_upscaler reads).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
import torch
import torch.distributed as dist

from loong_dist.config import Config
from loong_dist.data.manifest import read_manifest
from loong_dist.data.upscaler_pairs import (SCALE, build_pair_bank, held_out_pairs, load_pairs, moving_text,
                                            save_pairs, shrink)
from loong_dist.evaluation.plots import line_chart
from loong_dist.evaluation.upscaler_quality import centre_crop, evaluate_pairs, side_by_side, stack_rows
from loong_dist.io.run_folder import RunFolder, first_on_its_disk, local_input
from loong_dist.io.storage import Storage
from loong_dist.io.video import write_gif
from loong_dist.models.tokenizer import load_tokenizer
from loong_dist.models.upscaler import VideoUpscaler, save_upscaler
from loong_dist.parallel.engine import build_engine, use_bf16
from loong_dist.parallel.layout_free import single_device_state
from loong_dist.parallel.process_groups import ParallelGroups, dp_mean, first_rank_says
from loong_dist.train.checkpoints import resume_sampled, sample_layout, write_checkpoint
from loong_dist.train.checkpoint_mirror import fetch_tag, publish_checkpoint, resume_tag
from loong_dist.train.telemetry import rewind_logs

log = logging.getLogger(__name__)

EVAL_KEYS = ("psnr", "ssim", "flicker")
"""Scores per input kind in eval.jsonl, each beside bicubic's (ref_*)."""


def draw_sequences(hr: np.ndarray, lr: np.ndarray, n: int, seed: list[int], window: int, crop: int,
                   clean_share: float, text_share: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """n training sequences from a pair bank - hr (N, T, H, W, 3), lr (N, T, H/4, W/4, 3) uint8 -
    drawn by a generator seeded with `seed`. A `text_share` of the clean ones get moving text drawn
    over their real frames before the shrink (`moving_text`). Returns inputs uint8 (n, window, crop,
    crop, 3) and targets uint8 (n, window, 4 crop, 4 crop, 3)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(hr), n, replace=n > len(hr))
    starts = rng.integers(0, hr.shape[1] - window + 1, n)
    ys = rng.integers(0, lr.shape[2] - crop + 1, n)
    xs = rng.integers(0, lr.shape[3] - crop + 1, n)
    clean = rng.random(n) < clean_share
    flip = rng.random(n) < 0.5
    flip_v, turn = rng.random(n) < 0.5, rng.random(n) < 0.5  # drawn last: the same clips and crops as before
    text = clean & (rng.random(n) < text_share)  # later still, and each text after all of these
    inputs, targets = [], []
    for i, t0, y, x, c, f, v, r, words in zip(idx, starts, ys, xs, clean, flip, flip_v, turn, text):
        ty, tx = SCALE * y, SCALE * x
        target = hr[i, t0:t0 + window, ty:ty + SCALE * crop, tx:tx + SCALE * crop]  # (window, 4 crop, 4 crop, 3)
        if words:
            target = moving_text(target, rng)
        source = shrink(target) if c else lr[i, t0:t0 + window, y:y + crop, x:x + crop]  # (window, c, c, 3)
        if f:
            target, source = target[:, :, ::-1], source[:, :, ::-1]
        if v:
            target, source = target[:, ::-1], source[:, ::-1]
        if r:  # the crop is square: a transpose keeps its shape
            target, source = target.transpose(0, 2, 1, 3), source.transpose(0, 2, 1, 3)
        inputs.append(np.ascontiguousarray(source))
        targets.append(np.ascontiguousarray(target))
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """mean sqrt((x - y)^2 + eps^2): L1 with a smooth minimum (LapSRN, BasicVSR)."""
    return torch.sqrt((x - y) ** 2 + eps * eps).mean()


def _as_frames(video: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (b, t, H, W, 3) -> float (b, t, 3, H, W) in [0, 1] on `device`."""
    return video.to(device).permute(0, 1, 4, 2, 3).float() / 255


class UpscalerTrainer:
    def __init__(self, cfg: Config, groups: ParallelGroups):
        self.cfg, self.groups = cfg, groups
        self.is_main = (not dist.is_initialized()) or dist.get_rank() == 0
        self.node_main = first_on_its_disk()  # one rank per disk moves files and builds the banks
        storage = self.storage = Storage(cfg.storage)
        # An s3:// run folder: each node works in its own scratch copy and publishes what matters.
        self.run = RunFolder(cfg.run.out_dir, storage)
        self.out = self.run.local
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir = self.out / "checkpoints"
        self.mirror = self.run.uri_of("checkpoints") if self.run.remote else ""
        if self.node_main:
            self._build_banks()
        if dist.is_initialized():
            dist.barrier()  # the other ranks of a node read what its first rank built
        ut = cfg.upscaler_train
        self.hr = np.load(self.out / "pairs_hr.npy", mmap_mode="r")
        self.lr = np.load(self.out / "pairs_lr.npy", mmap_mode="r")
        self.eval_pairs = load_pairs(self.out / "eval_pairs.npz") if ut.eval_manifest and ut.eval_clips else []
        torch.manual_seed(cfg.run.seed)
        self.model = VideoUpscaler(cfg.upscaler).to(groups.device)
        # fp32 weights and optimizer in DeepSpeed, convs under bf16 autocast where it is native.
        self.bf16 = use_bf16(cfg.parallel, groups.device)
        fp32 = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, precision="fp32"))
        self.engine = build_engine(self.model, fp32, groups)
        self.step, self.wall = 0, 0.0
        self.writer = None
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out / "tensorboard"))
            n_params = sum(p.numel() for p in self.model.parameters())
            log.info("upscaler: %.3fM parameters, bank %s -> %s, %d held-out clips, bf16 %s", n_params / 1e6,
                     tuple(self.lr.shape), tuple(self.hr.shape), len(self.eval_pairs), self.bf16)

    def _build_banks(self) -> None:
        """The training pair bank (pairs_hr.npy, pairs_lr.npy) and the held-out pairs
        (eval_pairs.npz) in the run folder, made once: the tokenizer is loaded only when one is missing."""
        cfg, ut = self.cfg, self.cfg.upscaler_train
        need_bank = not (self.out / "pairs_lr.npy").exists()
        need_eval = bool(ut.eval_manifest and ut.eval_clips) and not (self.out / "eval_pairs.npz").exists()
        if not (need_bank or need_eval):
            return
        tokenizer = load_tokenizer(local_input(cfg.tokenizer.path, self.storage))
        if need_bank:
            entries = [e for m in ut.manifests for e in read_manifest(m, self.storage)[0]
                       if e.extra.get("split") != "held_out"]
            build_pair_bank(entries, ut.clips, ut.frames, cfg.data.fps, ut.hr_size, cfg.run.seed, tokenizer, self.out,
                            self.storage)
        if need_eval:
            held = [e for e in read_manifest(ut.eval_manifest, self.storage)[0] if e.extra.get("split") == "held_out"]
            pairs = held_out_pairs(held, ut.eval_clips, ut.eval_frames, cfg.data.fps, ut.hr_size, cfg.run.seed + 1,
                                   tokenizer, self.storage)
            save_pairs(self.out / "eval_pairs.npz", pairs)

    def fit_linear_base(self) -> None:
        """Before the first step: the model's linear base becomes the least-squares filter of
        `base_fit_frames` whole frames of the bank per input kind (clean shrink, tokenizer output),
        weighted by their shares of the training inputs. Fitted on the first rank and broadcast, so
        every replica holds the same base whatever its node's bank holds to the last bit."""
        ut = self.cfg.upscaler_train
        model = self.engine.module
        if ut.base_fit_frames and self.is_main:
            rng = np.random.default_rng([self.cfg.run.seed, ut.base_fit_frames])
            picks = [(int(rng.integers(len(self.hr))), int(rng.integers(self.hr.shape[1])))
                     for _ in range(ut.base_fit_frames)]
            hr = np.stack([self.hr[i, t:t + 1] for i, t in picks])  # (n, 1, H, W, 3)
            tok = np.stack([self.lr[i, t:t + 1] for i, t in picks])  # (n, 1, H/4, W/4, 3)
            images = lambda a: _as_frames(torch.from_numpy(a), torch.device("cpu")).flatten(0, 1)  # noqa: E731
            target = images(hr)  # the same real frames for both kinds
            kinds = [(shrink(hr), ut.clean_share), (tok, 1 - ut.clean_share)]
            model.fit_linear_base((images(x), target, w) for x, w in kinds if w > 0)
            log.info("linear base: least squares over %d frames of the bank per input kind", ut.base_fit_frames)
        if dist.is_initialized():
            for buffer in (model.base_weight, model.base_bias):
                dist.broadcast(buffer, src=0)

    def batch(self, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's sequences for micro-batch `micro` of this step: inputs float (b, t, 3, h, w)
        and targets float (b, t, 3, 4h, 4w), both in [0, 1] (`draw_sequences`)."""
        ut = self.cfg.upscaler_train
        index = self.groups.dp_rank * self.cfg.optim.grad_accum_steps + micro  # in the global batch
        x, y = draw_sequences(self.hr, self.lr, self.cfg.optim.micro_batch_size,
                              [self.cfg.run.seed, self.step, index], ut.window, ut.crop, ut.clean_share,
                              ut.text_share)
        return _as_frames(x, self.groups.device), _as_frames(y, self.groups.device)

    def train_step(self) -> dict:
        gas = self.cfg.optim.grad_accum_steps
        total = 0.0
        for micro in range(gas):  # backward only accumulates (the engine's accumulation is ours), step() updates
            x, y = self.batch(micro)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = self.engine(x)
            loss = charbonnier(out.float(), y, self.cfg.upscaler_train.charbonnier_eps)
            self.engine.backward(loss / gas, scale_wrt_gas=False)
            total += loss.item() / gas
        lr = self.engine.get_lr()[0]  # this step's: step() moves the scheduler to the next one
        self.engine.step()
        self.step += 1
        return {**dp_mean({"loss": total}, self.groups), "lr": lr}

    def save(self) -> None:
        """Checkpoint `step<N>`, layout-free (loong_dist/train/checkpoints.py): any number of ranks
        resumes it."""
        tag = f"step{self.step:08d}"
        write_checkpoint(self.ckpt_dir / tag, self.engine, self.model, self.groups,
                         {"step": self.step, "wall": self.wall},
                         {"step": self.step, **sample_layout(self.cfg, self.groups)}, self.node_main)
        publish_checkpoint(self.storage, self.ckpt_dir, self.mirror, tag, self.cfg.upscaler_train.keep_checkpoints,
                           self.is_main, self.node_main)
        self._export()

    def _export(self) -> None:
        """upscaler.safetensors and the run's telemetry, published to the run folder. A collective
        (the weights are gathered); the first rank writes."""
        model = self._fp32_model()
        if not self.is_main:
            return
        ut = self.cfg.upscaler_train
        save_upscaler(model, self.out / "upscaler.safetensors",
                      extra={"step": self.step, "wall_s": round(self.wall, 1), "tokenizer": self.cfg.tokenizer.path,
                             "hr_size": ut.hr_size, "fps": self.cfg.data.fps})
        if self.writer is not None:
            self.writer.flush()
        for name in ("upscaler.safetensors", "metrics.jsonl", "eval.jsonl", "psnr_curve.png", "previews",
                     "tensorboard"):
            self.run.publish(name)

    def _fp32_model(self) -> VideoUpscaler:
        """The weights in a fresh single-device float32 model, gathered where ZeRO-3 partitions them. A
        collective: every rank calls it."""
        model = VideoUpscaler(self.cfg.upscaler)
        model.load_state_dict(single_device_state(self.engine, self.model, self.groups))
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
        if not self.eval_pairs:
            return None
        model = self._fp32_model()  # a collective
        if not self.is_main:
            return None
        result = evaluate_pairs(model, self.eval_pairs, self.cfg.upscaler.chunk_frames)
        row = {"step": self.step, "wall_s": round(self.wall, 1)}
        for kind, prefix in (("tokenizer", ""), ("clean", "clean_")):
            for k in EVAL_KEYS:
                row[f"{prefix}{k}"] = result[kind][k]
                row[f"{prefix}ref_{k}"] = result[kind][f"bicubic_{k}"]
        with open(self.out / "eval.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k not in ("step", "wall_s"):
                self.writer.add_scalar(f"eval/{k}", v, self.step)
        self._preview(result["outputs"])
        self._plot_curve()
        log.info("step %d (%.0f s): held-out PSNR from tokenizer output %.2f dB (bicubic %.2f), from clean input "
                 "%.2f dB (bicubic %.2f); SSIM %.3f (%.3f); flicker %.2f (%.2f)", self.step, self.wall, row["psnr"],
                 row["ref_psnr"], row["clean_psnr"], row["clean_ref_psnr"], row["ssim"], row["ref_ssim"],
                 row["flicker"], row["ref_flicker"])
        return row

    def _preview(self, outputs: dict, clips: int = 3, side: int = 128) -> None:
        """previews/preview_<step>.gif: centre crops of the first clips from tokenizer output,
        bicubic | ours | original, one row per clip."""
        rows = []
        for i, pair in enumerate(self.eval_pairs[:clips]):
            crop = [centre_crop(v, side) for v in (outputs["bicubic"]["tokenizer"][i], outputs["ours"]["tokenizer"][i],
                                                   pair["hr"])]
            rows.append(side_by_side(*crop))
        write_gif(self.out / "previews" / f"preview_{self.step:08d}.gif", stack_rows(rows), fps=self.cfg.data.fps)

    def _plot_curve(self) -> None:
        """psnr_curve.png: held-out PSNR against training time from both inputs, with bicubic's."""
        rows = [json.loads(line) for line in open(self.out / "eval.jsonl")]
        minutes = [r["wall_s"] / 60 for r in rows]
        line_chart({"ours, tokenizer output": (minutes, [r["psnr"] for r in rows]),
                    "ours, clean input": (minutes, [r["clean_psnr"] for r in rows])},
                   self.out / "psnr_curve.png", title="held-out PSNR at 4x against training time",
                   xlabel="training time (min)", ylabel="PSNR (dB)",
                   hlines={"bicubic, tokenizer output": rows[-1]["ref_psnr"],
                           "bicubic, clean input": rows[-1]["clean_ref_psnr"]})

    def fit(self, steps: int | None = None, max_seconds: float | None = None) -> None:
        """Train to `steps` (optim.steps); with max_seconds, stop with a checkpoint after the first
        step that ends past it (0: after one step)."""
        steps = steps or self.cfg.optim.steps
        ut = self.cfg.upscaler_train
        started = time.time()
        if self.is_main:  # rows logged after the checkpoint resumed from are logged again
            rewind_logs(self.run, self.step, ["metrics.jsonl", "eval.jsonl"])
        if self.step == 0:
            self.fit_linear_base()
            self.evaluate()
        if self.step >= steps and self.is_main:
            log.info("nothing left to train (step %d of %d)", self.step, steps)
        while self.step < steps:
            t0 = time.perf_counter()
            metrics = self.train_step()
            self.wall += time.perf_counter() - t0
            if self.is_main:
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": self.step, **metrics}) + "\n")
                for k, v in metrics.items():
                    self.writer.add_scalar(f"train/{k}", v, self.step)
                if self.step % self.cfg.run.log_every == 0:
                    log.info("step %d/%d loss %.5f lr %.2e %.2f s/step", self.step, steps, metrics["loss"],
                             metrics["lr"], self.wall / max(self.step, 1))
            if self.step % ut.eval_every == 0:
                self.evaluate()
            out_of_time = max_seconds is not None and first_rank_says(time.time() - started > max_seconds)
            if self.step % ut.save_every == 0 or self.step == steps or out_of_time:
                self.save()
            if out_of_time:
                log.info("time limit reached at step %d; run the same command again to continue", self.step)
                break
        if self.writer is not None:
            self.writer.flush()

"""Text -> minute-long video, as Loong does it: a first clip from the text, then extensions that
each condition on the tail of what was generated.

    gen = VideoGenerator(model, layout, video_tokenizer, cfg.generate, fps=8, size=128)
    result = gen.generate([text_ids, ...], seconds=60, seed=0)
    result.frames          # uint8 (B, T, H, W, 3), T = round(seconds * fps)

One clip (a window) is `<s> text <bov> f0 f1 ... f_{W-1}` with W = window_latent_frames, as in
training. The first window is sampled from `<s> text <bov>`. Each extension takes the last
`overlap` (o) latent frames as the start of a fresh clip and samples W - o new latent frames
after them; each new latent frame is 4 pixel frames. The tail:
  - re-encoding on (default): the last 1 + 4(o-1) decoded pixel frames are encoded again by the
    video tokenizer, so the tail starts with an image-mode frame, exactly like the start of every
    training clip (the generated ids of that frame were a 4-frame latent, which training never
    shows at position 0);
  - off: the generated ids of the last o latent frames are reused.
The KV cache is rebuilt for every window, so the context, the cache memory and the time per
generated frame stay flat however long the video grows. Pixels of a window are decoded from its
o + new latent frames (the tail gives the causal decoder its context); the new 4 x new frames
are kept.

Classifier-free guidance: every prompt row has an unconditional twin with empty text
(`<s> <bov>` + the same tail); both run in one batch and the guided logits draw one token that
both rows take. Rows of different text lengths are left-padded and the padding masked.

Best of N first frames (`generate.first_frame_candidates` N > 1): latent frame 0 is drawn N times
per prompt, each draw is scored teacher-forced by log p(frame | text) - log p(frame | empty text)
(Bayes' rule turns the two streams into the model's own classifier of the caption given the
frame), and the first window goes on from the best draw.

Notation: B prompts, R model rows (B, or 2B with guidance), T pixel frames, F latent frames,
h, w latent height and width, n = h * w tokens per latent frame.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from loong_dist.config import GenerateConfig
from loong_dist.errors import UserError
from loong_dist.inference.sampling import sample, split_guided, video_range
from loong_dist.models.ar.layout import VocabLayout
from loong_dist.models.ar.model import Transformer
from loong_dist.models.tokenizer import VideoTokenizer
from loong_dist.precision import resolve_bf16


class GenerationError(UserError, ValueError):
    """A prompt or generation setting that cannot be served (printed as one line)."""


def pixel_frames(latent_frames: int) -> int:
    """Pixel frames covered by latent frames: the first covers 1, each later one 4."""
    return 0 if latent_frames == 0 else 1 + 4 * (latent_frames - 1)


def check_prompt(text: str, text_ids: list[int], max_text_tokens: int, what: str = "prompt") -> None:
    """Raise GenerationError for an empty (or blank) prompt or one longer than the text context.
    text_ids start with <s> (counted in max_text_tokens, as pretokenize counts it)."""
    if not text.strip() or len(text_ids) <= 1:
        raise GenerationError(f"{what} is empty")
    if len(text_ids) > max_text_tokens:
        raise GenerationError(f"{what} is {len(text_ids)} text tokens (<s> included), longer than the text context "
                              f"text.max_text_tokens={max_text_tokens}")


@dataclass
class GenerationResult:
    frames: np.ndarray
    """uint8 (B, T, H, W, 3)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent per phase (prefill, sample, decode, encode) and tokens/s of sampling."""
    windows: int = 0
    """Clips sampled (the first one included)."""


class VideoGenerator:
    """Samples videos with a transformer and a video tokenizer; see the module docstring."""

    def __init__(self, model: Transformer, layout: VocabLayout, tokenizer: VideoTokenizer, cfg: GenerateConfig,
                 fps: float, size: int):
        self.model, self.layout, self.tokenizer, self.cfg = model, layout, tokenizer, cfg
        self.fps, self.size = fps, size
        _, self.h, self.w = tokenizer.latent_shape(1, size, size)
        if model.cfg.rope == "3d" and [self.h, self.w] != list(model.cfg.latent_grid):
            raise GenerationError(f"the model places video tokens on a {model.cfg.latent_grid[0]}x"
                                  f"{model.cfg.latent_grid[1]} latent grid (model.latent_grid); {size} px frames "
                                  f"give {self.h}x{self.w}: generate at the size it was trained at")
        self.device = next(model.parameters()).device
        self.lo, self.hi, _ = video_range(layout)
        self.guided = cfg.cfg_scale != 1.0
        self.tokenizer_bf16 = resolve_bf16(cfg.tokenizer_bf16, self.device)
        # code <-> token tables: a model with kept codes only (layout.codes) draws among them, and a
        # re-encoded tail's code outside them becomes the nearest kept one's token.
        codes = np.arange(layout.codebook_size)
        self.code_to_token = torch.from_numpy(layout.video_to_tokens(codes)).to(self.device)  # (codebook,)
        self.index_to_code = torch.from_numpy(layout.tokens_to_video(np.arange(self.lo, self.hi))).to(self.device)

    @property
    def tokens_per_frame(self) -> int:
        return self.h * self.w

    def check_context(self, longest_text: int) -> None:
        """A window with the longest prompt must fit the model's positions."""
        need = longest_text + 1 + self.cfg.window_latent_frames * self.tokens_per_frame
        if need > self.model.cfg.max_seq_len:
            raise GenerationError(
                f"a window of generate.window_latent_frames={self.cfg.window_latent_frames} latent frames of "
                f"{self.h}x{self.w} tokens after a {longest_text}-token prompt is {need} positions, above the "
                f"model's max_seq_len={self.model.cfg.max_seq_len}")

    # ---- token sampling ------------------------------------------------------------------

    def _rows(self, texts: list[list[int]]) -> list[list[int]]:
        """Model rows: `<s> text <bov>` per prompt, then `<s> <bov>` per prompt when guided."""
        rows = [list(t) + [self.layout.bov_id] for t in texts]
        if self.guided:
            rows += [[self.layout.bos_id, self.layout.bov_id] for _ in texts]
        return rows

    def _prompt(self, prefixes: list[list[int]], tail: Tensor | None) -> tuple[Tensor, Tensor]:
        """prefixes: R token lists, left-padded to one width; tail: codes (B, o, h, w) or None,
        appended to every row (row i takes tail i mod B). Returns tokens (R, width + o n) and
        valid (R, width), False on the padding, both on the model's device."""
        width = max(len(r) for r in prefixes)
        prompt = torch.full((len(prefixes), width), self.layout.pad_id, dtype=torch.long)
        valid = torch.zeros(len(prefixes), width, dtype=torch.bool)
        for i, r in enumerate(prefixes):  # left padding, masked out as keys
            prompt[i, width - len(r):] = torch.tensor(r)
            valid[i, width - len(r):] = True
        prompt, valid = prompt.to(self.device), valid.to(self.device)
        if tail is not None:
            b = tail.shape[0]
            tail_tokens = self.code_to_token[tail.reshape(b, -1).to(self.device)]  # (B, o*n)
            prompt = torch.cat([prompt, tail_tokens.repeat(len(prefixes) // b, 1)], dim=1)  # (R, width + o*n)
        return prompt, valid

    @torch.inference_mode()
    def sample_frames(self, prefixes: list[list[int]], tail: Tensor | None, frames: int, generator: torch.Generator,
                      timings: dict[str, float]) -> Tensor:
        """Sample `frames` latent frames after each prefix (+ its tail codes).

        prefixes: R token lists ending in <bov>; tail: codes (B, o, h, w) or None. Returns codes
        (B, frames, h, w) int64 on the model's device."""
        b = len(prefixes) // (2 if self.guided else 1)
        rows = [list(p) for p in prefixes]
        prompt, valid = self._prompt(rows, tail)
        n_new = frames * self.tokens_per_frame
        cache = self.model.new_cache(prompt.shape[1] + n_new - 1, None if bool(valid.all()) else valid)

        t0 = time.perf_counter()
        logits = self.model(prompt, cache=cache, last_only=True)[:, -1]  # (R, v)
        t1 = time.perf_counter()
        out = torch.empty(b, n_new, dtype=torch.long, device=self.device)
        for i in range(n_new):
            if self.guided:
                logits = split_guided(logits.float(), self.cfg.cfg_scale)  # (B, v)
            code = sample(logits[:, self.lo:self.hi], self.cfg.temperature, self.cfg.top_k, self.cfg.top_p,
                          generator)  # (B,) in [0, codebook)
            out[:, i] = code
            if i + 1 < n_new:
                token = (code + self.layout.video_offset).repeat(len(rows) // b)[:, None]  # (R, 1)
                logits = self.model(token, cache=cache)[:, -1]
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        timings["prefill_s"] = timings.get("prefill_s", 0.0) + t1 - t0
        timings["sample_s"] = timings.get("sample_s", 0.0) + t2 - t1
        timings["tokens"] = timings.get("tokens", 0) + b * n_new
        timings["kv_cache_mb_max"] = max(timings.get("kv_cache_mb_max", 0.0), cache.bytes() / 2**20)
        return self.index_to_code[out].view(b, frames, self.h, self.w)  # video token index -> code

    @torch.inference_mode()
    def log_likelihood(self, prefixes: list[list[int]], codes: Tensor) -> Tensor:
        """log p(codes | prefix) per row, teacher-forced: prefixes R token lists ending in <bov>,
        codes (R, F, h, w). Each token's probability among the video tokens (the draws' support),
        at temperature 1. Returns float64 (R,)."""
        prompt, valid = self._prompt(prefixes, codes)  # (R, width + F n)
        targets = prompt[:, valid.shape[1]:]  # (R, F n): the codes' tokens
        cache = self.model.new_cache(prompt.shape[1], None if bool(valid.all()) else valid)
        logits = self.model(prompt, cache=cache)[:, valid.shape[1] - 1:-1, self.lo:self.hi].float()  # (R, F n, V)
        picked = logits.gather(-1, (targets - self.lo)[..., None])[..., 0]  # (R, F n)
        return (picked - torch.logsumexp(logits, dim=-1)).double().sum(-1)  # (R,)

    def first_frames(self, texts: list[list[int]], generator: torch.Generator, timings: dict[str, float]) -> Tensor:
        """Latent frame 0 of each prompt (B, 1, h, w): the best of `first_frame_candidates` draws by
        log p(frame | caption) - log p(frame | empty caption) (see GenerateConfig)."""
        n = self.cfg.first_frame_candidates
        many = [t for t in texts for _ in range(n)]  # each prompt n times in a row
        drawn = self.sample_frames(self._rows(many), None, 1, generator, timings)  # (B n, 1, h, w)
        t0 = time.perf_counter()
        bov, bos = self.layout.bov_id, self.layout.bos_id
        score = (self.log_likelihood([list(t) + [bov] for t in many], drawn)
                 - self.log_likelihood([[bos, bov]] * len(many), drawn)).view(len(texts), n)  # (B, n)
        timings["rerank_s"] = timings.get("rerank_s", 0.0) + time.perf_counter() - t0
        best = score.argmax(dim=1)  # (B,)
        return drawn.view(len(texts), n, *drawn.shape[1:])[torch.arange(len(texts)), best.to(drawn.device)]

    # ---- tokenizer -----------------------------------------------------------------------

    def _decode(self, codes: Tensor, timings: dict[str, float]) -> np.ndarray:
        t0 = time.perf_counter()
        video = self.tokenizer.decode(codes, bf16=self.tokenizer_bf16).cpu().numpy()  # (B, T, H, W, 3)
        timings["decode_s"] = timings.get("decode_s", 0.0) + time.perf_counter() - t0
        return video

    def _encode(self, video: np.ndarray, timings: dict[str, float]) -> Tensor:
        t0 = time.perf_counter()
        codes = self.tokenizer.encode(video, bf16=self.tokenizer_bf16)  # (B, F, h, w)
        timings["encode_s"] = timings.get("encode_s", 0.0) + time.perf_counter() - t0
        return codes

    # ---- long video ----------------------------------------------------------------------

    def generate(self, texts: list[list[int]], seconds: float, seed: int,
                 progress: Callable[[float], None] | None = None) -> GenerationResult:
        """texts: B prompts as text ids starting with <s>. progress(seconds generated so far) is
        called after each window."""
        cfg = self.cfg
        self.check_context(max(len(t) for t in texts))
        total = max(1, round(seconds * self.fps))  # pixel frames asked for
        generator = torch.Generator(device=self.device).manual_seed(seed)
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        prefixes = self._rows(texts)

        first = min(cfg.window_latent_frames, 1 + math.ceil((total - 1) / 4))
        if cfg.first_frame_candidates == 1:
            codes = self.sample_frames(prefixes, None, first, generator, timings)  # (B, F, h, w)
        else:  # the first window goes on from the kept latent frame 0
            codes = self.first_frames(texts, generator, timings)  # (B, 1, h, w)
            if first > 1:
                rest = self.sample_frames(prefixes, codes, first - 1, generator, timings)  # (B, F - 1, h, w)
                codes = torch.cat([codes, rest], dim=1)
        pieces = [self._decode(codes, timings)]  # uint8 (B, T, H, W, 3) each
        o = cfg.overlap_latent_frames
        recent = pieces[0][:, -pixel_frames(o):]  # the last 1 + 4(o-1) pixel frames so far
        done, windows = pieces[0].shape[1], 1
        if progress:
            progress(min(done, total) / self.fps)
        while done < total:
            if cfg.reencode:
                tail = self._encode(recent, timings)  # (B, o, h, w), latent frame 0 in image mode
            else:
                tail = codes[:, -o:]  # the generated ids
            new = min(cfg.window_latent_frames - o, math.ceil((total - done) / 4))
            new_codes = self.sample_frames(prefixes, tail, new, generator, timings)  # (B, new, h, w)
            codes = torch.cat([tail.to(new_codes.device), new_codes], dim=1)  # (B, o + new, h, w)
            pieces.append(self._decode(codes, timings)[:, -4 * new:])
            recent = np.concatenate([recent, pieces[-1]], axis=1)[:, -pixel_frames(o):]
            done += 4 * new
            windows += 1
            if progress:
                progress(min(done, total) / self.fps)
        frames = np.concatenate(pieces, axis=1)[:, :total]
        timings["total_s"] = time.perf_counter() - t_start
        timings["tokens_per_s"] = timings["tokens"] / max(timings["sample_s"] + timings["prefill_s"], 1e-9)
        return GenerationResult(frames=frames, timings=timings, windows=windows)

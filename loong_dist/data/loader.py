"""The training loader: shard index -> bucketed, rank-split micro-batches of padded tensors.

    loader = TokenLoader(ShardIndex.load(folder, storage), layout, token_budget=8192,
                         dp_rank=groups.dp_rank, dp_size=groups.dp_size, seed=cfg.run.seed,
                         global_tokens=65536)
    micro = loader.next_step()    # this rank's micro-batches of the next global batch, each a dict of
                                  # tokens, targets, frame: int64 (b, s); IGNORE / -1 where padded
    batch = next(loader)          # the same, for a loader whose steps are one micro-batch
    state = loader.state_dict()   # saved with the checkpoint; load_state_dict resumes exactly

Samples are fetched by byte range (local seek or S3 ranged GET) on a small thread pool, and the
next micro-batch is fetched while the current one trains. The order is the sampler's alone, so
threads never change what a step sees.

Caption dropout (for classifier-free guidance) replaces a sample's text with the empty text
(`<s> <bov>`) at batch time; which samples of a global batch lose their caption is drawn from
(seed, the sampler state before the batch), so a resumed run - on any layout - drops exactly the
same ones.

Context noise (`context_noise`, against error build-up in long rollouts) replaces a share of each
sample's video *input* tokens by codes drawn from the sample's own distinct codes, its targets left
the true ones: the model learns to go on from a context with errors like its own draws (a stray
background code in the object, an object code in the background) and to repair them, the token
form of the noise GameNGen adds to its context frames. The draws are keyed like caption dropout,
so they too resume exactly on any layout.

Self-context (`self_context`, parallel scheduled sampling) goes further: for a share of each sample's
video input tokens the collated batch carries a uniform draw ("resample", -1 elsewhere), and the
trainer replaces those inputs by the model's own draws there (`Transformer.draw_inputs`, one
teacher-forced pass without gradients), so the errors it learns to go on from are its own. Which
places and their uniforms are keyed like the rest; the draws then depend only on the weights.

A micro-batch that a rank's share of the global batch leaves empty (the batch does not divide
over the ranks) is one padding token with no target: it takes part in the collectives of the
forward and backward and adds nothing to the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from loong_dist.data.bucketing import BucketedBatchSampler, naive_batches, padding_share, sequence_length
from loong_dist.data.shards import Sample, ShardError, ShardIndex, ShardReader
from loong_dist.io.storage import Storage
from loong_dist.models.ar.layout import IGNORE, VocabLayout


def video_places(tokens: np.ndarray, layout: VocabLayout) -> np.ndarray:
    """Indices of one sample's video tokens (the places context noise and self-context may change)."""
    return np.flatnonzero((tokens >= layout.video_offset) & (tokens < layout.vocab_size))


def noisy_context(tokens: np.ndarray, layout: VocabLayout, share: float, rng: np.random.Generator) -> np.ndarray:
    """tokens (L,) one sample's inputs -> a copy in which each video token is, with probability
    `share`, replaced by one of the sample's distinct video tokens drawn uniformly (possibly itself).
    Text, <bov> and the targets are untouched."""
    video = video_places(tokens, layout)
    out = tokens.copy()
    if share <= 0 or len(video) == 0:
        return out
    hit = video[rng.random(len(video)) < share]
    out[hit] = rng.choice(np.unique(tokens[video]), size=len(hit))
    return out


def self_context_places(tokens: np.ndarray, layout: VocabLayout, share: float, rng: np.random.Generator) -> np.ndarray:
    """tokens (L,) one sample's inputs -> float32 (L,): at each video token, with probability `share`,
    a uniform in [0, 1) with which the trainer draws the model's own token there (the "resample"
    entry of a batch, `Transformer.draw_inputs`); -1 elsewhere (text, <bov>, the places kept)."""
    out = np.full(len(tokens), -1.0, np.float32)
    video = video_places(tokens, layout)
    hit = video[rng.random(len(video)) < share] if share > 0 else video[:0]
    out[hit] = rng.random(len(hit))
    return out


def collate(samples: Sequence[Sample], layout: VocabLayout, drop_text: Sequence[bool] | None = None,
            latent_grid: Sequence[int] | None = None, context_noise: float = 0.0,
            noise_seeds: Sequence[int] | None = None, self_context: float = 0.0) -> dict[str, torch.Tensor]:
    """Build each sample's sequence and right-pad to the longest: (b, s) int64 tensors.
    drop_text[i]: sample i gets the empty caption (`<s> <bov>` then its video). latent_grid: the
    (rows, columns) every sample's latent frames must have (a model with 3D positions is built for one).
    context_noise > 0: sample i's video inputs get `noisy_context` with the generator of noise_seeds[i].
    self_context > 0: a float32 "resample" entry (`self_context_places`, from a generator of
    (noise_seeds[i], 1): the context noise's draws are the same with or without it)."""
    drop_text = drop_text if drop_text is not None else [False] * len(samples)
    if (context_noise > 0 or self_context > 0) and (noise_seeds is None or len(noise_seeds) != len(samples)):
        raise ValueError("context_noise and self_context need one noise seed per sample")
    for s in samples if latent_grid is not None else ():
        if list(s.video.shape[1:]) != list(latent_grid):
            raise ShardError(f"sample {s.key}: latent frames of {s.video.shape[1]}x{s.video.shape[2]} codes, the model "
                             f"places video tokens on model.latent_grid={list(latent_grid)}")
    built = [layout.build([] if drop else s.text.tolist(), s.video) for s, drop in zip(samples, drop_text)]
    for i, b in enumerate(built if context_noise > 0 else ()):
        b["tokens"] = noisy_context(b["tokens"], layout, context_noise, np.random.default_rng(noise_seeds[i]))
    for i, b in enumerate(built if self_context > 0 else ()):
        rng = np.random.default_rng([noise_seeds[i], 1])
        b["resample"] = self_context_places(b["tokens"], layout, self_context, rng)
    length = max(len(b["tokens"]) for b in built)
    out = {"tokens": np.full((len(built), length), layout.pad_id, np.int64),
           "targets": np.full((len(built), length), IGNORE, np.int64),
           "frame": np.full((len(built), length), -1, np.int64)}
    if self_context > 0:
        out["resample"] = np.full((len(built), length), -1.0, np.float32)
    for row, b in enumerate(built):
        n = len(b["tokens"])
        for name in out:
            out[name][row, :n] = b[name]
    return {k: torch.from_numpy(v) for k, v in out.items()}


class TokenLoader:
    def __init__(self, index: ShardIndex, layout: VocabLayout, token_budget: int, dp_rank: int = 0,
                 dp_size: int = 1, seed: int = 0, frames: Sequence[int] | None = None,
                 storage: Storage | None = None, workers: int = 4, mix: Sequence[float] | None = None,
                 caption_dropout: float = 0.0, global_tokens: int = 0, latent_grid: Sequence[int] | None = None,
                 context_noise: float = 0.0, self_context: float = 0.0):
        codebook = index.meta.get("codebook_size")
        if codebook is not None and codebook != layout.codebook_size:
            raise ShardError(f"{index.folder}: shards hold {codebook} video codes, the model's layout has "
                             f"{layout.codebook_size}")
        text_vocab = index.meta.get("text_vocab_size")
        if text_vocab is not None and text_vocab != layout.text_vocab_size:
            raise ShardError(f"{index.folder}: shards were tokenized with {text_vocab} text pieces, the model's "
                             f"layout has {layout.text_vocab_size}")
        self.index, self.layout = index, layout
        self.reader = ShardReader(index, storage)
        self.sampler = BucketedBatchSampler(index.samples, token_budget, dp_rank, dp_size, seed, frames, mix,
                                            global_tokens)
        self.caption_dropout, self.context_noise, self.self_context = caption_dropout, context_noise, self_context
        self.latent_grid = latent_grid
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard-read")
        self._next: tuple[dict, list[list[Future]], list[list[tuple[bool, int]]]] | None = None

    def _draws(self, state: dict, total: int, tag: int, draw) -> list:
        """This rank's share of per-sample draws for a global batch of `total` samples: drawn for the
        whole batch from (seed, tag, the sampler state before it), then this rank's samples, so the
        same samples get the same draws whatever the layout."""
        key = [self.sampler.seed, tag, state["epoch"], state["position"], state.get("step", 0)]
        return draw(np.random.default_rng(key), total)[self.sampler.dp_rank::self.sampler.dp_size].tolist()

    def _per_sample(self, state: dict, total: int) -> list[tuple[bool, int]]:
        """(caption dropped, context-noise seed) for each of this rank's samples of the global batch
        (with caption_dropout 0 nothing is dropped; without context noise or self-context the seeds go
        unused)."""
        drop = self._draws(state, total, 2 << 20, lambda g, n: g.random(n) < self.caption_dropout)
        seeds = self._draws(state, total, 3 << 20, lambda g, n: g.integers(0, 2 ** 62, n))
        return list(zip(drop, seeds))

    def _fetch(self) -> tuple[dict, list[list[Future]], list[list[tuple[bool, int]]]]:
        state = self.sampler.state_dict()  # the state *before* this batch: where a resume restarts it
        mine = next(self.sampler)
        extra = self._per_sample(state, self.sampler.last_global[1])
        micro = self.sampler.split(list(zip(mine, extra)))
        return (state, [[self._pool.submit(self.reader.read, r) for r, _ in m] for m in micro],
                [[e for _, e in m] for m in micro])

    def _empty(self) -> dict[str, torch.Tensor]:
        """An empty micro-batch: one padding position with no target (and nothing to resample)."""
        out = {"tokens": torch.full((1, 1), self.layout.pad_id, dtype=torch.int64),
               "targets": torch.full((1, 1), IGNORE, dtype=torch.int64),
               "frame": torch.full((1, 1), -1, dtype=torch.int64)}
        if self.self_context > 0:
            out["resample"] = torch.full((1, 1), -1.0)
        return out

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of the next global batch (as many on every rank)."""
        if self._next is None:
            self._next = self._fetch()
        _, futures, extra = self._next
        self._next = self._fetch()  # prefetch while this batch is collated and trained on
        return [collate([f.result() for f in fs], self.layout, [d for d, _ in e], self.latent_grid,
                        self.context_noise, [s for _, s in e], self.self_context) if fs else self._empty()
                for fs, e in zip(futures, extra)]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        """The next global batch's one micro-batch on this rank (steps of several: `next_step`)."""
        micro = self.next_step()
        if len(micro) != 1:
            raise ValueError(f"this global batch is {len(micro)} micro-batches on each rank: use next_step()")
        return micro[0]

    def state_dict(self) -> dict:
        """Resume point: the batch after the last one returned."""
        if self._next is None:
            return self.sampler.state_dict()
        return dict(self._next[0])

    def load_state_dict(self, state: dict) -> None:
        self._next = None
        self.sampler.load_state_dict(state)

    def padding_report(self, naive_batch_size: int | None = None) -> dict[str, float]:
        """Padding share of one epoch of bucketed micro-batches against the naive baseline: a plain
        shuffle in batches of budget // mean sequence length, each padded to its longest."""
        s = self.sampler
        plan = s.epoch_plan(s.epoch)
        refs = s.refs
        batches = []
        for f, chunk in plan:
            micro = s.buckets[f].micro_batch
            mine = [refs[i] for i in chunk[s.dp_rank::s.dp_size]]
            batches += [mine[i:i + micro] for i in range(0, len(mine), micro)]
        mean_len = float(np.mean([sequence_length(r) for r in refs]))
        size = naive_batch_size or max(2, int(self.sampler.token_budget // mean_len))
        return {"bucketed": padding_share(batches),
                "naive": padding_share(naive_batches(refs, size, self.sampler.seed)), "naive_batch_size": size}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["TokenLoader", "collate"]

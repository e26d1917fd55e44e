"""Sequence-length bucketing with an exact, resumable order that does not depend on the layout.

Samples are grouped by latent-frame count (from the shard index). Each bucket has a global batch
size and a micro-batch size, both from token budgets, so an image step and a 65-frame step cost
about the same: the global batch holds `global_tokens // longest sequence in the bucket` samples
over all ranks (`train.global_batch_tokens`, Megatron's global batch in tokens: a fact of the
config), and a micro-batch at most `token_budget // longest` on one rank (memory). Without
global_tokens the global batch is one micro-batch per data-parallel rank (the older per-rank
meaning: the global batch then grows with DP).

An epoch's plan is a pure function of (seed, epoch), whatever the layout:

  1. within each bucket, a permutation of its samples, cut into global batches (the remainder
     waits for the next epoch's permutation);
  2. inside a global batch, samples sorted by text length, so each micro-batch pads little;
  3. the global batches of all buckets, in a shuffled order.

At step i every rank takes global batch i (the same bucket everywhere) and every dp_size-th
sample of it from its rank on (`__next__`), cut into micro-batches (`split`): the same number on
every rank, the last ones shorter or empty where the batch does not divide. TP=1 x DP=2, TP=2 x
DP=1 and DP=2 with two micro-batches a step thus see the same global batches in the same order.
`state_dict()` is (epoch, position); loading it continues with exactly the next batch.

With `mix` (one share per entry of `frames`) the buckets are drawn by share instead: step t takes
its bucket from a draw seeded by (seed, t), and the next global batch of that bucket's own
permutation (step 1 above, per bucket epoch). A stage that mixes 30% images into 17-frame clips
sees that share whatever the sample counts; the state adds t and each bucket's (epoch, position).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from loong_dist.data.shards import SampleRef
from loong_dist.errors import UserError


class BucketError(UserError, ValueError):
    """Shards and batching settings that cannot make a batch (a user error: one line, exit 2)."""


def sequence_length(ref: SampleRef) -> int:
    """Input positions of a sample: text (BOS included) + <bov> + video + <eov>, less one (inputs
    and targets are the sequence shifted by one)."""
    return ref.text_tokens + ref.video_tokens + 1


@dataclass(frozen=True)
class Bucket:
    latent_frames: int
    """F: latent frames of every sample in the bucket."""
    micro_batch: int
    """Sequences per rank per micro-step (at most)."""
    max_len: int
    """Longest sequence in the bucket (tokens)."""
    size: int
    """Samples in the bucket."""
    global_batch: int = 0
    """Sequences per optimizer step over all ranks."""


def plan_buckets(refs: Sequence[SampleRef], token_budget: int, dp_size: int = 1,
                 global_tokens: int = 0) -> dict[int, Bucket]:
    by_frames: dict[int, list[SampleRef]] = {}
    for r in refs:
        by_frames.setdefault(r.latent_frames, []).append(r)
    buckets = {}
    for f, members in sorted(by_frames.items()):
        longest = max(sequence_length(r) for r in members)
        micro = max(1, token_budget // longest)
        glob = max(1, global_tokens // longest) if global_tokens else micro * dp_size
        buckets[f] = Bucket(f, micro, longest, len(members), glob)
    return buckets


class BucketedBatchSampler:
    """Yields this rank's samples of each global batch (a list of SampleRefs), forever (epoch
    after epoch); `split` cuts them into this step's micro-batches."""

    def __init__(self, refs: Sequence[SampleRef], token_budget: int, dp_rank: int = 0, dp_size: int = 1,
                 seed: int = 0, frames: Sequence[int] | None = None, mix: Sequence[float] | None = None,
                 global_tokens: int = 0):
        self.refs = [r for r in refs if frames is None or r.latent_frames in frames]
        if not self.refs:
            raise BucketError(f"train.latent_frames={list(frames or [])}: the shards hold no sample with those latent "
                              f"frame counts")
        self.token_budget, self.global_tokens = token_budget, global_tokens
        self.buckets = plan_buckets(self.refs, token_budget, dp_size, global_tokens)
        self.last_global: tuple[int, int] = (0, 0)
        """(latent frames, samples) of the global batch `__next__` returned last."""
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.epoch, self.position = 0, 0
        self._plan: list[tuple[int, np.ndarray]] | None = None
        if not self.epoch_plan(0):
            what = (f"train.global_batch_tokens={global_tokens}" if global_tokens
                    else f"train.token_budget={token_budget}")
            raise BucketError(f"{what}: too few samples for one global batch of {dp_size} rank(s) in any bucket ("
                              + ", ".join(f"{b.latent_frames} latent frames: {b.size} samples, need "
                                          f"{b.global_batch}" for b in self.buckets.values())
                              + "); lower the budget or add samples")
        self.mix: dict[int, float] = {}
        if mix:
            if frames is None or len(frames) != len(mix):
                raise ValueError(f"mix {list(mix)} needs one share per entry of frames {list(frames or [])}")
            self.mix = {f: m / sum(mix) for f, m in zip(frames, mix) if m > 0}
            for f in self.mix:
                if not self._bucket_batches(f, 0):
                    b = self.buckets.get(f)
                    raise ValueError(f"mix draws {f} latent frames, but the shards hold "
                                     f"{b.size if b else 0} such samples (one global batch needs "
                                     f"{b.global_batch if b else 1})")
        self.step = 0
        self.cursors = {f: (0, 0) for f in self.mix}  # bucket -> (its epoch, position in it)
        self._bucket_plans: dict[int, tuple[int, list[np.ndarray]]] = {}

    def _bucket_batches(self, f: int, epoch: int) -> list[np.ndarray]:
        """Global batches (sample indices) of bucket f in its permutation for `epoch`."""
        bucket = self.buckets.get(f)
        if bucket is None:
            return []
        members = np.array([i for i, r in enumerate(self.refs) if r.latent_frames == f])
        order = members[np.random.default_rng([self.seed, epoch, f]).permutation(len(members))]
        glob = bucket.global_batch
        out = []
        for j in range(0, len(order) - glob + 1, glob):
            chunk = order[j:j + glob]
            out.append(chunk[np.argsort([self.refs[i].text_tokens for i in chunk], kind="stable")])
        return out

    def epoch_plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """[(latent_frames, sample indices of one global batch)], in step order (without `mix`)."""
        batches = [(f, chunk) for f in self.buckets for chunk in self._bucket_batches(f, epoch)]
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(batches))
        return [batches[k] for k in perm]

    def _next_mixed(self) -> tuple[int, np.ndarray]:
        frames = list(self.mix)
        f = frames[np.random.default_rng([self.seed, 1 << 20, self.step]).choice(len(frames),
                                                                                 p=list(self.mix.values()))]
        epoch, position = self.cursors[f]
        if self._bucket_plans.get(f, (None,))[0] != epoch:
            self._bucket_plans[f] = (epoch, self._bucket_batches(f, epoch))
        plan = self._bucket_plans[f][1]
        if position >= len(plan):
            epoch, position = epoch + 1, 0
            self._bucket_plans[f] = (epoch, self._bucket_batches(f, epoch))
            plan = self._bucket_plans[f][1]
        self.cursors[f] = (epoch, position + 1)
        self.step += 1
        return f, plan[position]

    def __iter__(self) -> Iterator[list[SampleRef]]:
        return self

    def __next__(self) -> list[SampleRef]:
        if self.mix:
            f, chunk = self._next_mixed()
        else:
            if self._plan is None:
                self._plan = self.epoch_plan(self.epoch)
            if self.position >= len(self._plan):
                self.epoch, self.position = self.epoch + 1, 0
                self._plan = self.epoch_plan(self.epoch)
            f, chunk = self._plan[self.position]
            self.position += 1
        self.last_global = (int(f), len(chunk))
        # Rank r takes every dp_size-th sample: each rank gets the same spread of text lengths.
        return [self.refs[i] for i in chunk[self.dp_rank::self.dp_size]]

    def split(self, mine: list[SampleRef]) -> list[list[SampleRef]]:
        """This rank's samples of the last global batch as micro-batches of at most the bucket's
        micro_batch: as many on every rank (the ranks' shares differ by one at most), the last
        ones shorter, or empty on a rank whose share ran out."""
        f, total = self.last_global
        micro = self.buckets[f].micro_batch
        n = -(-(-(-total // self.dp_size)) // micro)  # ceil(ceil(total / dp) / micro)
        return [mine[i * micro:(i + 1) * micro] for i in range(n)]

    @property
    def steps_per_epoch(self) -> int:
        return len(self.epoch_plan(self.epoch))

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "position": self.position, "seed": self.seed}
        if self.mix:
            state.update(step=self.step, cursors={str(f): list(c) for f, c in self.cursors.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this run has seed {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._plan = None
        if self.mix:
            cursors = {int(f): tuple(c) for f, c in state.get("cursors", {}).items()}
            if set(cursors) != set(self.mix):
                raise ValueError(f"loader state mixes buckets {sorted(cursors)}, this run mixes {sorted(self.mix)}")
            self.step, self.cursors = int(state["step"]), cursors


def padding_share(batches: Sequence[Sequence[SampleRef]]) -> float:
    """Share of padded positions when each micro-batch is padded to its longest sequence."""
    real = padded = 0
    for batch in batches:
        lengths = [sequence_length(r) for r in batch]
        real += sum(lengths)
        padded += max(lengths) * len(lengths)
    return 1.0 - real / padded if padded else 0.0


def naive_batches(refs: Sequence[SampleRef], batch_size: int, seed: int = 0) -> list[list[SampleRef]]:
    """The baseline: a plain shuffle cut into fixed-size batches, lengths mixed."""
    order = np.random.default_rng(seed).permutation(len(refs))
    return [[refs[i] for i in order[j:j + batch_size]] for j in range(0, len(order) - batch_size + 1, batch_size)]

"""Stage mixing ratios over latent-frame buckets, caption dropout, context noise and self-context places:
the shares drawn, exact resume, the same draws on any layout, dropped captions built as the empty text."""

import numpy as np
import pytest
import torch

from loong_dist.data.bucketing import BucketedBatchSampler
from loong_dist.data.loader import TokenLoader
from loong_dist.data.shards import ShardIndex
from loong_dist.io.storage import Storage
from loong_dist.models.ar.layout import IGNORE
from tests.data.test_shards_and_loader import LAYOUT, make_samples, write_shards


def _refs():
    from loong_dist.data.shards import SampleRef
    return [SampleRef("s.tar", f"k{i}", [1, 2, 5][i % 3], 64 * [1, 2, 5][i % 3], 5 + i % 4, {}) for i in range(90)]


def test_mix_draws_buckets_by_share_and_resumes():
    refs = _refs()
    sampler = BucketedBatchSampler(refs, 700, seed=3, frames=[1, 5], mix=[1.0, 3.0])
    first = [next(sampler) for _ in range(2000)]
    frames = [b[0].latent_frames for b in first]
    assert set(frames) == {1, 5}  # 2-frame samples are filtered out
    assert frames.count(5) / len(frames) == pytest.approx(0.75, abs=0.03)  # 4 sigma
    # each bucket walks its own permutation: one pass sees every sample of the bucket once
    images = [r.key for b, f in zip(first, frames) if f == 1 for r in b]
    per_epoch = 30 // sampler.buckets[1].micro_batch * sampler.buckets[1].micro_batch
    assert len(set(images[:per_epoch])) == per_epoch
    # resume from a mid-run state: the same next batches
    again = BucketedBatchSampler(refs, 700, seed=3, frames=[1, 5], mix=[1.0, 3.0])
    for _ in range(137):
        next(again)
    state = again.state_dict()
    third = BucketedBatchSampler(refs, 700, seed=3, frames=[1, 5], mix=[1.0, 3.0])
    third.load_state_dict(state)
    assert [[r.key for r in next(third)] for _ in range(50)] == [[r.key for r in b] for b in first[137:187]]


def test_mix_is_checked():
    with pytest.raises(ValueError, match="one share per entry"):
        BucketedBatchSampler(_refs(), 700, frames=[1, 5], mix=[1.0])
    with pytest.raises(ValueError, match="17 latent frames"):
        BucketedBatchSampler(_refs(), 700, frames=[1, 17], mix=[1.0, 1.0])


def test_caption_dropout_is_the_empty_text_and_resumes(tmp_path):
    write_shards(Storage(), str(tmp_path), make_samples(60))
    index = ShardIndex.load(str(tmp_path))

    def loader():
        return TokenLoader(index, LAYOUT, token_budget=800, seed=1, workers=2, caption_dropout=0.5)

    a = loader()
    batches = [next(a) for _ in range(12)]
    state = a.state_dict()
    later = [next(a) for _ in range(4)]
    dropped = kept = 0
    for b in batches:
        for row in b["tokens"]:
            if row[1] == LAYOUT.bov_id:  # <s> <bov>: the caption was dropped
                dropped += 1
            else:
                kept += 1
                assert row[0] == LAYOUT.bos_id and LAYOUT.bov_id in row.tolist()
    assert dropped > 5 and kept > 5
    b = loader()
    b.load_state_dict(state)
    for want in later:
        got = next(b)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    plain = TokenLoader(index, LAYOUT, token_budget=800, seed=1, workers=2)
    assert all(row[1] != LAYOUT.bov_id for bt in [next(plain) for _ in range(12)] for row in bt["tokens"])
    for x in (a, b, plain):
        x.close()


def _rows(micro_batches):
    """{the row's targets (its sample, with no noise in them): its input tokens} over micro-batches."""
    out = {}
    for b in micro_batches:
        for tokens, targets in zip(b["tokens"], b["targets"]):
            keep = targets != IGNORE
            if keep.any():  # not the padding micro-batch of a rank the global batch left empty
                out[tuple(targets[keep].tolist())] = tokens[tokens != LAYOUT.pad_id].tolist()
    return out


def _loaders(folder, **fixed):
    """Shards of 60 samples in `folder` -> a maker of loaders over them: (rank, ranks, **options)."""
    write_shards(Storage(), str(folder), make_samples(60))
    index = ShardIndex.load(str(folder))

    def make(rank=0, ranks=1, **options):
        return TokenLoader(index, LAYOUT, token_budget=800, dp_rank=rank, dp_size=ranks, seed=1, workers=2,
                           caption_dropout=0.2, global_tokens=1600, **fixed, **options)
    return make


def test_context_noise_replaces_video_inputs_by_the_samples_codes_and_resumes_on_any_layout(tmp_path):
    make, share = _loaders(tmp_path), 0.3

    def loader(noise, rank=0, ranks=1):
        return make(rank, ranks, context_noise=noise)

    noisy, clean = loader(share), loader(0.0)
    steps = [(noisy.next_step(), clean.next_step()) for _ in range(10)]
    changed = video = 0
    expect = 0.0  # each video input is replaced w.p. share, by one of the sample's K distinct codes, itself too
    for got, want in steps:
        for g, w in zip(got, want):
            assert torch.equal(g["targets"], w["targets"]) and torch.equal(g["frame"], w["frame"])
            is_video = (w["tokens"] >= LAYOUT.video_offset) & (w["tokens"] < LAYOUT.vocab_size)
            assert torch.equal(g["tokens"][~is_video], w["tokens"][~is_video])  # text, <s>, <bov>, padding
            for gr, wr, vr in zip(g["tokens"], w["tokens"], is_video):
                assert set(gr[vr].tolist()) <= set(wr[vr].tolist())  # the sample's own codes
                changed += int((gr[vr] != wr[vr]).sum())
                video += int(vr.sum())
                expect += int(vr.sum()) * share * (1 - 1 / len(set(wr[vr].tolist())))
    assert video > 5000 and abs(changed - expect) < 4 * np.sqrt(expect * (1 - share))

    state = noisy.state_dict()
    later = [noisy.next_step() for _ in range(3)]
    again = loader(share)
    again.load_state_dict(state)
    for want in later:
        got = again.next_step()
        assert all(torch.equal(g[k], w[k]) for g, w in zip(got, want) for k in w)
    # two ranks see the same samples with the same noise as one rank
    ranks = [loader(share, r, 2) for r in range(2)]
    for got, _ in steps:
        split = {}
        for r in ranks:
            split.update(_rows(r.next_step()))
        assert split == _rows(got)
    for x in (noisy, clean, again, *ranks):
        x.close()


def test_self_context_places_only_video_inputs_at_its_share_and_leaves_the_noise_as_it_was(tmp_path):
    make, share = _loaders(tmp_path, context_noise=0.1), 0.25

    def loader(self_context):
        return make(self_context=self_context)

    with_places, without = loader(share), loader(0.0)
    steps = [(with_places.next_step(), without.next_step()) for _ in range(10)]
    hits = video = 0
    for got, want in steps:
        for g, w in zip(got, want):
            assert "resample" not in w and all(torch.equal(g[k], w[k]) for k in w)  # the noise is unchanged
            is_video = (g["tokens"] >= LAYOUT.video_offset) & (g["tokens"] < LAYOUT.vocab_size)
            u = g["resample"]
            assert u.dtype == torch.float32 and (u[~is_video] == -1).all()  # text, <bov>, padding: kept
            assert ((u[is_video] == -1) | ((u[is_video] >= 0) & (u[is_video] < 1))).all()
            hits += int((u >= 0).sum())
            video += int(is_video.sum())
    assert video > 5000 and abs(hits - share * video) < 4 * np.sqrt(video * share * (1 - share))
    state = with_places.state_dict()
    later = [with_places.next_step() for _ in range(2)]
    again = loader(share)
    again.load_state_dict(state)
    for want in later:
        assert all(torch.equal(g[k], w[k]) for g, w in zip(again.next_step(), want) for k in w)
    for x in (with_places, without, again):
        x.close()

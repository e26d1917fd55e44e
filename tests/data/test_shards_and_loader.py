"""Token shards (webdataset tars + index), the bucketed sampler and the resumable loader."""

import json

import numpy as np
import pytest
import torch
import webdataset as wds

from loong_dist.data.bucketing import BucketedBatchSampler, sequence_length
from loong_dist.data.loader import TokenLoader
from loong_dist.data.shards import Sample, ShardError, ShardIndex, ShardReader, ShardWriter, write_index
from loong_dist.io.storage import Storage, join
from loong_dist.models.ar.layout import IGNORE, VocabLayout

CODEBOOK, TEXT_VOCAB, HW = 1000, 300, 8
LAYOUT = VocabLayout(text_vocab_size=TEXT_VOCAB, codebook_size=CODEBOOK)


def make_samples(n=60, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        frames = [1, 2, 5][i % 3]  # latent frames: an image, a short clip, a longer clip
        text = np.concatenate([[2], rng.integers(6, TEXT_VOCAB, rng.integers(4, 9))])
        out.append(Sample(f"s{i:04d}", rng.integers(0, CODEBOOK, (frames, HW, HW)), text, f"caption {i}",
                          {"source": f"v{i}.mp4", "start": 0.0, "fps": 8.0, "frames": 1 + 4 * (frames - 1)}))
    return out


def write_shards(storage, folder, samples, per_shard=25):
    summaries = []
    for s in range(0, len(samples), per_shard):
        with ShardWriter(storage, join(folder, f"shard-{s // per_shard:06d}.tar"), CODEBOOK) as w:
            for sample in samples[s:s + per_shard]:
                w.add(sample)
        summaries.append(w.summary)
    write_index(storage, folder, summaries, {"codebook_size": CODEBOOK, "text_vocab_size": TEXT_VOCAB})


@pytest.fixture(params=["local", "s3"])
def shard_folder(request, tmp_path):
    if request.param == "local":
        storage, folder = Storage(), str(tmp_path / "shards")
    else:
        storage, folder = request.getfixturevalue("s3_storage"), request.getfixturevalue("s3_bucket") + "/shards"
    write_shards(storage, folder, make_samples())
    return storage, folder


def test_plain_webdataset_reads_shards(tmp_path):
    samples = make_samples(10)
    write_shards(Storage(), str(tmp_path), samples, per_shard=10)
    got = list(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False).decode())
    assert [g["__key__"] for g in got] == [s.key for s in samples]
    assert got[4]["video.npy"].dtype == np.uint16
    np.testing.assert_array_equal(got[4]["video.npy"], samples[4].video)
    np.testing.assert_array_equal(got[4]["text.npy"], samples[4].text)
    assert got[4]["caption.txt"] == "caption 4"
    assert got[4]["json"]["latent_shape"] == [2, HW, HW] and got[4]["json"]["video_tokens"] == 2 * HW * HW


def test_index_and_ranged_reads(shard_folder):
    storage, folder = shard_folder
    index = ShardIndex.load(folder, storage)
    samples = make_samples()
    assert index.totals["samples"] == 60 and index.totals["shards"] == 3
    assert index.totals["samples_by_latent_frames"] == {"1": 20, "2": 20, "5": 20}
    assert index.totals["video_tokens"] == sum(s.video.size for s in samples)
    reader = ShardReader(index, storage)
    for ref in (index.samples[0], index.samples[37], index.samples[-1]):
        back, orig = reader.read(ref), samples[int(ref.key[1:])]
        np.testing.assert_array_equal(back.video, orig.video)
        np.testing.assert_array_equal(back.text, orig.text)
        assert back.caption == orig.caption and back.meta["source"] == orig.meta["source"]


def test_bad_shards(tmp_path):
    storage = Storage()
    with pytest.raises(ShardError, match="no shard index"):
        ShardIndex.load(str(tmp_path), storage)
    (tmp_path / "index.json").write_text('{"version": 1, "shards": [{"name": "x.tar"}]}')
    with pytest.raises(ShardError, match="malformed index entry"):
        ShardIndex.load(str(tmp_path), storage)
    write_shards(storage, str(tmp_path / "ok"), make_samples(3), per_shard=3)
    index = ShardIndex.load(str(tmp_path / "ok"), storage)
    (tmp_path / "ok" / "shard-000000.tar").write_bytes(b"\0" * 100)  # truncated / overwritten
    with pytest.raises(ShardError, match="sample s0000"):
        ShardReader(index, storage).read(index.samples[0])
    with pytest.raises(ValueError, match="integer"):
        ShardWriter(storage, str(tmp_path / "f.tar"), CODEBOOK).add(
            Sample("x", np.zeros((1, 2, 2), np.float32), np.array([2]), "c"))


def _refs():
    from loong_dist.data.shards import SampleRef
    rng = np.random.default_rng(1)
    return [SampleRef("s.tar", f"k{i}", f, f * 256, int(rng.integers(8, 20)), {})
            for i, f in enumerate(rng.choice([1, 5, 17], size=600))]


def test_sampler_same_bucket_on_all_ranks_disjoint_and_budgeted():
    refs = _refs()
    ranks = [BucketedBatchSampler(refs, token_budget=8192, dp_rank=r, dp_size=2, seed=3) for r in range(2)]
    seen = set()
    for _ in range(ranks[0].steps_per_epoch):
        a, b = next(ranks[0]), next(ranks[1])
        assert {r.latent_frames for r in a} == {r.latent_frames for r in b} and len({r.latent_frames for r in a}) == 1
        keys = [r.key for r in a + b]
        assert not seen & set(keys) and len(set(keys)) == len(keys)  # each sample once per epoch
        seen |= set(keys)
        assert sum(sequence_length(r) for r in a) <= 8192 or len(a) == 1
    micro = {f: b.micro_batch for f, b in ranks[0].buckets.items()}
    assert micro[1] > micro[5] > micro[17] >= 1  # shorter sequences, bigger micro-batches


def test_sampler_resume_is_exact():
    refs = _refs()
    a = BucketedBatchSampler(refs, 8192, seed=5)
    steps = a.steps_per_epoch + 7  # cross an epoch boundary
    for _ in range(steps):
        next(a)
    state = a.state_dict()
    expected = [[r.key for r in next(a)] for _ in range(10)]
    b = BucketedBatchSampler(refs, 8192, seed=5)
    b.load_state_dict(state)
    assert [[r.key for r in next(b)] for _ in range(10)] == expected
    c = BucketedBatchSampler(refs, 8192, seed=6)
    assert [[r.key for r in next(c)] for _ in range(3)] != expected[:3]


def test_loader_batches_resume_and_padding(shard_folder):
    storage, folder = shard_folder
    index = ShardIndex.load(folder, storage)
    loader = TokenLoader(index, LAYOUT, token_budget=800, storage=storage, seed=1)
    batch = next(loader)
    assert batch["tokens"].dtype == torch.int64 and batch["tokens"].shape == batch["targets"].shape
    pad = batch["targets"] == IGNORE
    assert ((batch["frame"] == -1) == pad).all()
    for _ in range(4):
        next(loader)
    state = json.loads(json.dumps(loader.state_dict()))  # survives a JSON round trip (checkpoint)
    expected = [next(loader) for _ in range(6)]
    again = TokenLoader(index, LAYOUT, token_budget=800, storage=storage, seed=1)
    again.load_state_dict(state)
    for want in expected:
        got = next(again)
        assert all(torch.equal(got[k], want[k]) for k in want)
    report = loader.padding_report()
    assert report["bucketed"] < 0.02 < report["naive"]
    loader.close()
    again.close()


def test_loader_rejects_mismatched_layout(tmp_path):
    write_shards(Storage(), str(tmp_path), make_samples(6), per_shard=6)
    with pytest.raises(ShardError, match="shards hold 1000 video codes, the model's layout has 64"):
        TokenLoader(ShardIndex.load(str(tmp_path)), VocabLayout(TEXT_VOCAB, 64), token_budget=800)


def test_loader_checks_the_latent_grid_a_3d_position_model_needs(tmp_path):
    write_shards(Storage(), str(tmp_path), make_samples(6), per_shard=6)
    index = ShardIndex.load(str(tmp_path))
    fits = TokenLoader(index, LAYOUT, token_budget=800, latent_grid=[HW, HW])
    assert next(fits)["tokens"].shape[0] >= 1
    wrong = TokenLoader(index, LAYOUT, token_budget=800, latent_grid=[16, 16])
    with pytest.raises(ShardError, match=r"sample s000\d: latent frames of 8x8 codes, .* model.latent_grid=\[16, 16\]"):
        next(wrong)
    fits.close()
    wrong.close()


def test_code_counts_sum_every_shard(shard_folder):
    storage, folder = shard_folder
    index = ShardIndex.load(folder, storage)
    counts = index.code_counts(storage)
    want = np.bincount(np.concatenate([s.video.ravel() for s in make_samples()]), minlength=CODEBOOK)
    assert counts.shape == (CODEBOOK,) and (counts == want).all()
    raw = json.loads(storage.read_text(join(folder, "index.json")))
    assert all("code_counts" not in shard for shard in raw["shards"])  # the index stays small


def test_several_folders_read_as_one_corpus(tmp_path):
    storage = Storage()
    images, clips = make_samples(30, seed=1), make_samples(30, seed=2)
    for s in clips:
        s.key = "c" + s.key  # another corpus: other keys
    write_shards(storage, str(tmp_path / "a"), images, per_shard=10)
    write_shards(storage, str(tmp_path / "b"), clips, per_shard=10)
    index = ShardIndex.load_many([str(tmp_path / "a"), str(tmp_path / "b")], storage)
    assert len(index.samples) == 60 and index.folders() == [str(tmp_path / "a"), str(tmp_path / "b")]
    reader = ShardReader(index, storage)
    for ref, orig in ((index.samples[3], images[3]), (index.samples[45], clips[15])):
        np.testing.assert_array_equal(reader.read(ref).video, orig.video)  # same shard names, right folder
    both = np.concatenate([s.video.ravel() for s in images + clips])
    assert (index.code_counts(storage) == np.bincount(both, minlength=CODEBOOK)).all()
    loader = TokenLoader(index, LAYOUT, token_budget=800, storage=storage, seed=1)
    assert sum(len(next(loader)["tokens"]) for _ in range(12)) > 0
    loader.close()
    with pytest.raises(ShardError, match="share sample keys"):
        ShardIndex.load_many([str(tmp_path / "a"), str(tmp_path / "a")], storage)
    other = tmp_path / "c"
    write_shards(storage, str(other), make_samples(3, seed=3), per_shard=3)
    raw = json.loads((other / "index.json").read_text())
    raw["meta"]["text_vocab_size"] = 301
    (other / "index.json").write_text(json.dumps(raw))
    with pytest.raises(ShardError, match="text_vocab_size=301 differs"):
        ShardIndex.load_many([str(tmp_path / "a"), str(other)], storage)

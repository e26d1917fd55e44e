"""data_prep.pretokenize: shards plain webdataset reads, an index whose totals add up, ids equal to a
direct tokenizer call, rejects with reasons, resume without re-encoding (and a re-captioned manifest
redoing exactly the shard it changes), S3 in and out with killed workers (every key exactly once),
one-line errors before any work, and `ray job submit` against a `ray start --head` cluster on
127.0.0.1."""

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

import data_prep.pretokenize as job
import loong_dist.data.pretokenize as pretokenize
from loong_dist.config import load_config
from loong_dist.data.manifest import read_manifest, write_manifest
from loong_dist.data.pretokenize import CRASH_ENV, clip_key, plan_shards
from loong_dist.data.shards import ShardIndex, ShardReader
from loong_dist.data.text_tokenizer import TextTokenizer
from loong_dist.io.storage import join
from loong_dist.io.video import read_clip
from loong_dist.models.tokenizer import load_tokenizer
from tests.fixtures.pretok import make_pretok_assets
from tests.fixtures.ray_cluster import ray_head

ROOT = Path(__file__).resolve().parents[2]
PY = str(Path(sys.executable))
FAST = ["--frames", "1,17", "--fps", "8", "--size", "32", "pretokenize.local_cpus=2", "pretokenize.encode_batch=2",
        "pretokenize.shard_target_mb=0.01", "pretokenize.progress=false"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny random tokenizer, a text tokenizer, and 8 synthetic 17-frame 32x32 clips."""
    return make_pretok_assets(tmp_path_factory.mktemp("pretok"), clips=8)


def _args(assets, manifest, out, *extra):
    return ["--manifest", str(manifest), "--tokenizer", str(assets / "tok.safetensors"),
            "--text-tokenizer", str(assets / "text.model"), "--out", str(out), *FAST, *extra]


def _bad_manifest(assets, folder: Path) -> Path:
    """5 good windows, a corrupt file, a missing file, a bad line, and a window too short for 17 frames."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    lines = (assets / "syn" / "manifest.jsonl").read_text().splitlines()[:5]
    lines = [json.dumps(dict(json.loads(x), video=str(assets / "syn" / json.loads(x)["video"]))) for x in lines]
    video0 = json.loads(lines[0])["video"]
    lines += [json.dumps({"video": str(folder / "corrupt.mp4"), "caption": "corrupt"}),
              json.dumps({"video": str(folder / "missing.mp4"), "caption": "missing"}),
              '{"video": "x.mp4", "caption": ',
              json.dumps({"video": video0, "caption": "late start", "start": 1.5})]
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def _tar_keys(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.name.split(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".json")]


def _no_ray(*_):
    raise AssertionError("the job started Ray")


def test_local_run_rejects_index_ids_and_resume(assets, tmp_path, capsys, monkeypatch):
    manifest, out = _bad_manifest(assets, tmp_path / "in"), tmp_path / "out"
    assert job.main(_args(assets, manifest, out, "pretokenize.bf16=false")) == 0
    assert "9 rejects" not in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    # 5 good windows x 2 lengths + the late window's 1-frame clip; rejects: corrupt, missing, bad line, too short.
    assert (summary["videos"], summary["clips"], summary["clips_encoded"]) == (8, 11, 11)
    assert summary["rejects"] == 4 and summary["rejects_by_stage"] == {"manifest": 1, "decode": 3}
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    reasons = {r["line"]: r["reason"] for r in rejects}
    assert "not a readable video" in reasons[6] and "corrupt.mp4" in reasons[6]
    assert "no such file" in reasons[7] and "bad manifest line" in reasons[8]
    assert "too short" in reasons[9] and [r["frames"] for r in rejects if r["line"] == 9] == [[17]]

    index = ShardIndex.load(str(out))
    assert index.meta["codebook_size"] == load_tokenizer(assets / "tok.safetensors").codebook_size
    assert index.meta["text_vocab_size"] == TextTokenizer.load(str(assets / "text.model")).vocab_size
    assert index.totals["samples"] == 11 == len({s.key for s in index.samples})
    assert index.totals["samples_by_latent_frames"] == {"1": 6, "5": 5}
    assert index.totals["video_tokens"] == sum(s.video_tokens for s in index.samples) == summary["video_tokens"]
    shards = sorted(out.glob("shard-*.tar"))
    assert len(shards) == index.totals["shards"] == summary["shards"] > 1
    # Plain webdataset reads every shard; ids equal the tokenizer's own encoding of the same clip.
    got = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode())
    assert sorted(x["__key__"] for x in got) == sorted(s.key for s in index.samples)
    tok, text = load_tokenizer(assets / "tok.safetensors"), TextTokenizer.load(str(assets / "text.model"))
    for x in got[:4]:
        meta = x["json"]
        clip = read_clip(meta["source"], meta["start"], meta["frames"], 8.0, 32)
        assert np.array_equal(x["video.npy"], tok.encode(clip[None])[0].numpy())
        assert list(x["text.npy"]) == text.encode(x["caption.txt"])
        assert x["__key__"] == clip_key(meta["source"], meta["start"], meta["frames"])
    ref = index.samples[0]
    same = next(x for x in got if x["__key__"] == ref.key)
    assert np.array_equal(ShardReader(index).read(ref).video, same["video.npy"])

    # A re-run skips every complete shard (no Ray, no encoding); the tars stay as they were.
    mtimes = [p.stat().st_mtime_ns for p in shards + sorted((out / "_parts").iterdir())]
    with monkeypatch.context() as m:
        m.setattr(pretokenize, "init_ray", _no_ray)
        assert job.main(_args(assets, manifest, out, "pretokenize.bf16=false")) == 0
    again = json.loads((out / "summary.json").read_text())
    assert (again["shards_skipped"], again["clips_encoded"], again["clips"]) == (len(shards), 0, 11)
    assert again["pipeline_s"] == 0 and again["rejects"] == summary["rejects"]
    assert [p.stat().st_mtime_ns for p in shards + sorted((out / "_parts").iterdir())] == mtimes
    # A lost shard alone is redone.
    shards[1].unlink()
    assert job.main(_args(assets, manifest, out, "pretokenize.bf16=false")) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["shards_skipped"] == len(shards) - 1 and again["clips"] == 11 and shards[1].exists()


def test_plan_is_deterministic_and_packs_by_size(assets):
    cfg = load_config(None, ["data.frames=[1,17]", "data.fps=8", "data.size=32", "pretokenize.shard_target_mb=0.01"])
    entries, bad = read_manifest(str(assets / "syn" / "manifest.jsonl"))
    tok = load_tokenizer(assets / "tok.safetensors")
    plan = lambda: plan_shards(entries + entries[:1], bad, cfg, lambda c: [1, 2, 3],  # noqa: E731
                               lambda t: tok.latent_shape(t, 32, 32), tok.codebook_size, "x")
    a, rej, _ = plan()
    b, _, _ = plan()
    assert [(s.name, s.fingerprint) for s in a] == [(s.name, s.fingerprint) for s in b]
    keys = [c.key for s in a for w in s.windows for c in w.clips]
    assert len(keys) == len(set(keys)) == 16 and len(a) > 1
    assert [r["reason"].split(" (")[0] for r in rej] == ["duplicate clip"] * 2
    def plan_with(*overrides):
        c = load_config(None, ["data.frames=[1,17]", "data.fps=8", "data.size=32", *overrides])
        return plan_shards(entries, bad, c, lambda c: [1, 2, 3], lambda t: tok.latent_shape(t, 32, 32),
                           tok.codebook_size, "x")[0]

    full, short = plan_with(), plan_with("text.max_text_tokens=2")
    assert {w.text for s in full for w in s.windows} == {(1, 2, 3)}
    assert {w.text for s in short for w in s.windows} == {(1, 2)}  # captions cut to text.max_text_tokens
    assert [s.fingerprint for s in short] != [s.fingerprint for s in full]  # old shards are redone

    # What a sample carries besides its ids changes its shard's fingerprint, and only that one's:
    # the caption, the text ids (another text tokenizer), a manifest field written into its json.
    def plan_of(edited, text_encode=lambda c: [1, 2, 3]):
        return plan_shards(edited, bad, cfg, text_encode, lambda t: tok.latent_shape(t, 32, 32), tok.codebook_size,
                           "x")[0]

    def edit(**change):
        return [dataclasses.replace(e, **change) if i == 3 else e for i, e in enumerate(entries)]

    base = plan_of(entries)
    at = next(i for i, s in enumerate(base) if any(w.line == entries[3].line for w in s.windows))
    for edited in (plan_of(edit(caption="a new caption")), plan_of(edit(extra={**entries[3].extra, "source": "x"}))):
        assert [i for i, (x, y) in enumerate(zip(base, edited)) if x.fingerprint != y.fingerprint] == [at]
    assert all(x.fingerprint != y.fingerprint for x, y in zip(base, plan_of(entries, lambda c: [1, 2, 4])))


def _tar_samples(path: Path) -> dict[str, dict]:
    """key -> {"caption": str, "json": dict, "text": ids} of one shard."""
    out: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, suffix = m.name.split(".", 1)
            data = tar.extractfile(m).read()
            if suffix == "caption.txt":
                out.setdefault(key, {})["caption"] = data.decode()
            elif suffix == "json":
                out.setdefault(key, {})["json"] = json.loads(data)
            elif suffix == "text.npy":
                out.setdefault(key, {})["text"] = np.load(io.BytesIO(data)).tolist()
    return out


def test_recaptioned_manifest_rewrites_exactly_its_shard(assets, tmp_path):
    """The same manifest with one caption changed, run again into the same folder: the shard that
    holds that line is written again with the new caption and its text ids; every other shard (tar
    and part file) is skipped, its bytes and mtime unchanged."""
    lines = [json.loads(x) for x in (assets / "syn" / "manifest.jsonl").read_text().splitlines()[:4]]
    for x in lines:
        x["video"] = str(assets / "syn" / x["video"])
    manifest, out = tmp_path / "manifest.jsonl", tmp_path / "out"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert job.main(_args(assets, manifest, out, "pretokenize.bf16=false")) == 0
    files = sorted(out.glob("shard-*.tar")) + sorted((out / "_parts").iterdir())
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    holds = [p.name for p in sorted(out.glob("shard-*.tar"))
             if any(x["json"]["line"] == 4 for x in _tar_samples(p).values())]
    assert len(holds) == 1 and len(before) >= 4, (holds, list(before))
    redone = len(_tar_samples(out / holds[0]))

    new = "a tiny purple hexagon drifting in circles"
    assert new != lines[3]["caption"]
    lines[3]["caption"] = new
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert job.main(_args(assets, manifest, out, "pretokenize.bf16=false")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["shards_skipped"], summary["clips_encoded"], summary["clips"]) == (len(files) // 2 - 1, redone, 8)
    changed = sorted(p.name for p in files if (p.stat().st_mtime_ns, p.read_bytes()) != before[p.name])
    assert changed == [holds[0], holds[0] + ".json"]
    text = TextTokenizer.load(str(assets / "text.model"))
    for key, x in _tar_samples(out / holds[0]).items():
        if x["json"]["line"] == 4:
            assert x["caption"] == new and x["text"] == text.encode(new)
            assert key == clip_key(lines[3]["video"], 0.0, x["json"]["frames"])
        else:
            assert x["caption"] == lines[x["json"]["line"] - 1]["caption"]


def test_s3_in_and_out_with_killed_workers(assets, tmp_path, s3_bucket, s3_storage, monkeypatch):
    """Manifest, videos and output on S3; a decode task, an encoder actor and a write task each die
    once (os._exit) and are retried by Ray; every planned key is in the output exactly once."""
    local = _bad_manifest(assets, tmp_path / "in")
    entries, bad = read_manifest(str(local), strict=False)
    moved = []
    for e in entries:
        uri = join(s3_bucket, "videos", Path(e.video).name)
        if Path(e.video).exists():
            s3_storage.upload_file(e.video, uri)
        moved.append(type(e)(uri, e.caption, e.start, e.end, e.extra, e.line))
    manifest = join(s3_bucket, "manifest.jsonl")
    write_manifest(manifest, moved, s3_storage)
    s3_storage.write_text(manifest, s3_storage.read_text(manifest) + "not json\n")
    out = join(s3_bucket, "shards")
    monkeypatch.setenv(CRASH_ENV, f"{tmp_path}:decode,encode,write")
    assert job.main(_args(assets, manifest, out, "pretokenize.max_in_flight=2")) == 0
    assert sorted(p.name for p in tmp_path.glob("crashed-*")) == ["crashed-decode", "crashed-encode", "crashed-write"]
    summary = json.loads(s3_storage.read_text(join(out, "summary.json")))
    assert summary["clips"] == 11 and summary["rejects"] == 4
    reasons = " ".join(json.loads(x)["reason"] for x in s3_storage.read_text(join(out, "rejects.jsonl")).splitlines())
    assert "s3://" in reasons and "no such object" in reasons and "not a readable video" in reasons
    keys = []
    for uri in s3_storage.list(out):
        if uri.endswith(".tar"):
            keys += _tar_keys(s3_storage.read_bytes(uri))
    index = ShardIndex.load(out, s3_storage)
    assert len(keys) == len(set(keys)) == 11 and sorted(keys) == sorted(s.key for s in index.samples)
    sample = ShardReader(index, s3_storage).read(index.samples[-1])
    assert sample.video.shape[0] in (1, 5) and sample.text[0] == TextTokenizer.load(str(assets / "text.model")).bos_id


def test_encoder_dead_for_good_is_replaced_and_its_shard_redone(assets, tmp_path, monkeypatch):
    """An encoder actor that dies with no restarts left (encoder_restarts=0): its encode results
    are lost, the write of their shard fails; the pipeline replaces the actor and redoes the shard
    whole, so every planned key is still in the output exactly once."""
    manifest = _bad_manifest(assets, tmp_path / "in")
    out = tmp_path / "shards"
    monkeypatch.setenv(CRASH_ENV, f"{tmp_path}:encode")
    assert job.main(_args(assets, str(manifest), str(out), "pretokenize.encoder_restarts=0",
                          "pretokenize.num_encoders=1")) == 0
    assert (tmp_path / "crashed-encode").exists()
    keys = [k for tar in sorted(out.glob("*.tar")) for k in _tar_keys(tar.read_bytes())]
    index = ShardIndex.load(str(out))
    assert len(keys) == len(set(keys)) == 11 and sorted(keys) == sorted(s.key for s in index.samples)


def _run_cli(*args, env=None, timeout=120):
    return subprocess.run([PY, "-m", "data_prep.pretokenize", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_wrong_tokenizer_and_unreachable_bucket_fail_fast(assets, tmp_path, s3_env):
    """Each fails with one line, before any work: no Ray started (it would make a session folder
    under RAY_TMPDIR), nothing written."""
    manifest = assets / "syn" / "manifest.jsonl"
    runs = {
        "tokenizer": (_args(assets, manifest, tmp_path / "o1")[:2] + ["--tokenizer", str(tmp_path / "nope.safetensors")]
                      + _args(assets, manifest, tmp_path / "o1")[4:], "nope.safetensors"),
        "bucket": (_args(assets, manifest, "s3://no-such-bucket-xyz/out"), "bucket does not exist"),
        "endpoint": (_args(assets, manifest, "s3://loong-unreachable/out", "storage.endpoint_url=http://127.0.0.1:9",
                           "storage.max_attempts=1", "storage.connect_timeout_s=1"), "cannot reach"),
    }
    ray_tmp = tmp_path / "rt"
    ray_tmp.mkdir()
    for name, (args, needle) in runs.items():
        r = _run_cli(*args, env=dict(os.environ, RAY_TMPDIR=str(ray_tmp)))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (name, r.stderr)
        assert list(ray_tmp.iterdir()) == [] and not (tmp_path / "o1").exists(), name


def test_real_sample_clips(assets, sample_videos, tmp_path):
    entries, _ = read_manifest(str(sample_videos / "train.jsonl"))
    manifest = tmp_path / "real.jsonl"
    write_manifest(str(manifest), entries[:3])
    out = tmp_path / "out"
    assert job.main(_args(assets, manifest, out, "--size", "64")) == 0
    index = ShardIndex.load(str(out))
    assert index.totals["samples"] == 6 and index.meta["size"] == 64
    assert {s.video_tokens for s in index.samples} == {64, 5 * 64}


def test_ray_job_submit_against_a_head_node(assets, tmp_path):
    with ray_head("pretok", num_cpus=2) as (env, ray_bin, dashboard):
        out = tmp_path / "out"
        r = subprocess.run([ray_bin, "job", "submit", "--address", dashboard, "--working-dir", ".",
                            "--", "python", "-m", "data_prep.pretokenize",
                            *_args(assets, assets / "syn" / "manifest.jsonl", out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "succeeded" in r.stdout + r.stderr
        index = ShardIndex.load(str(out))
        assert index.totals["samples"] == 16 and len({s.key for s in index.samples}) == 16

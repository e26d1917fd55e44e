"""Every job with an output folder writes to s3:// when given it, and none writes a local folder
named `s3:`: synthetic clips, generated videos (and 4x copies, by an upscaler read from S3), their
evaluation, and tokenizer and upscaler runs that a second "node" (another scratch disk) resumes
from S3."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from loong_dist.config import UpscalerConfig
from loong_dist.data.manifest import read_manifest
from loong_dist.models.upscaler import VideoUpscaler, save_upscaler
from tests.inference.test_generate_job import files  # noqa: F401  (a tiny model, tokenizers)
from tests.jobs.test_tokenizer_jobs import TINY
from tests.jobs.test_upscaler_jobs import TINY as TINY_UPSCALER
from tests.jobs.test_upscaler_jobs import tokenizer  # noqa: F401  (a tiny video tokenizer)

ROOT = Path(__file__).resolve().parents[2]


def _run(module, *args, node):
    env = dict(os.environ, LOONG_CACHE_DIR=str(node))  # each call a node with its own scratch disk
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _keys(storage, uri):
    return sorted(u[len(uri) + 1:] for u in storage.list(uri))


def test_synthetic_generate_evaluate_and_tokenizer_runs_on_s3(tmp_path, s3_bucket, s3_storage, files):  # noqa: F811
    syn = f"{s3_bucket}/synthetic"
    _run("data_prep.synthetic", "--out", syn, "--n", "6", "--frames", "1,5", "--size", "32",
         "synthetic.held_out=0.5", node=tmp_path / "a")
    keys = _keys(s3_storage, syn)
    assert {"manifest.jsonl", "config.yaml", "preview.png"} <= set(keys)
    assert [k for k in keys if k.startswith("videos/")] == [f"videos/syn-{i:06d}.mp4" for i in range(6)]
    entries, bad = read_manifest(f"{syn}/manifest.jsonl", s3_storage)
    assert not bad and entries[0].video == f"{syn}/videos/syn-000000.mp4"

    gen = f"{s3_bucket}/gen/v.mp4"
    torch.manual_seed(0)
    save_upscaler(VideoUpscaler(UpscalerConfig(channels=8, blocks=1, hidden_channels=4)), tmp_path / "up.safetensors")
    s3_storage.upload_file(tmp_path / "up.safetensors", f"{s3_bucket}/up.safetensors")
    _run("jobs.generate", "--checkpoint", str(files / "model.safetensors"),
         "--tokenizer", str(files / "tok.safetensors"), "--text-tokenizer", str(files / "text.model"),
         "--prompts-file", f"{syn}/manifest.jsonl", "--out", gen, "--upscaler", f"{s3_bucket}/up.safetensors",
         "--seconds", "1", "data.size=32", "generate.window_latent_frames=3", "generate.overlap_latent_frames=1",
         "generate.batch_size=6", "generate.upscale_videos=1", node=tmp_path / "b")
    keys = set(_keys(s3_storage, f"{s3_bucket}/gen"))
    assert {"v.json", "v_000.mp4", "v_005.gif", "v_005.png", "v_000_x4.mp4", "v_000_x4.png"} <= keys
    assert "v_001_x4.mp4" not in keys  # generate.upscale_videos=1: the first video only
    report = json.loads(s3_storage.read_text(f"{s3_bucket}/gen/v.json"))
    assert report["videos"][0]["mp4"] == f"{s3_bucket}/gen/v_000.mp4"

    _run("jobs.evaluate", "generation", "--videos", f"{s3_bucket}/gen/v.json", "--out", f"{s3_bucket}/ev",
         "--window-s", "0.5", node=tmp_path / "c")
    ev = json.loads(s3_storage.read_text(f"{s3_bucket}/ev/generation_eval.json"))
    assert len(ev["per_video"]) == 6 and ev["alignment"]["videos"] == 6
    _run("jobs.evaluate", "compare", "--out", f"{s3_bucket}/cmp", "--run", f"run 1={s3_bucket}/ev/generation_eval.json",
         "--run", f"run 2={s3_bucket}/ev/generation_eval.json", node=tmp_path / "c")
    assert {"comparison.json", "comparison.png"} <= set(_keys(s3_storage, f"{s3_bucket}/cmp"))
    cmp = json.loads(s3_storage.read_text(f"{s3_bucket}/cmp/comparison.json"))
    assert [r["videos"] for r in cmp["generation"].values()] == [6, 6]  # the same evaluation twice, read from S3

    tok = f"{s3_bucket}/tok"
    common = ["--config", "configs/tokenizer/cpu.yaml", "--out", tok, "--manifest", f"{syn}/manifest.jsonl",
              *[t for t in TINY if not t.startswith(("tokenizer_train.eval", "tokenizer_train.crop"))],
              "tokenizer_train.eval_clips=0", "data.size=32", "tokenizer_train.crop=0"]
    _run("jobs.train_tokenizer", *common, "optim.steps=2", node=tmp_path / "d")
    again = _run("jobs.train_tokenizer", *common, "optim.steps=4", node=tmp_path / "e")  # a fresh node
    assert "at step 2" in again.stderr
    keys = _keys(s3_storage, tok)
    assert {"config.yaml", "tokenizer.safetensors", "checkpoints/latest"} <= set(keys)
    assert s3_storage.read_text(f"{tok}/checkpoints/latest").strip() == "step00000004"
    # a third node exports the mean of the last two checkpoints: the older one it must fetch from S3
    done = _run("jobs.train_tokenizer", *common, "optim.steps=4", "tokenizer_train.average_last=2", node=tmp_path / "f")
    assert "nothing left to train" in done.stderr and "mean weights of step00000002, step00000004" in done.stderr
    assert not list(ROOT.glob("s3:*")) and not list(tmp_path.rglob("s3:*"))


def test_upscaler_run_on_s3_resumes_on_a_fresh_node(tmp_path, s3_bucket, s3_storage, sample_videos,
                                                     tokenizer):  # noqa: F811
    """Node A trains two steps into an s3:// run folder; node B, whose scratch disk holds nothing of
    it, builds its own pair banks, fetches the checkpoint and trains on to step 4."""
    run = f"{s3_bucket}/up"
    common = ["--config", "configs/upscaler/cpu.yaml", "--out", run, "--manifest", str(sample_videos / "train.jsonl"),
              "--eval-manifest", str(sample_videos / "held_out.jsonl"), "--tokenizer", str(tokenizer), *TINY_UPSCALER]
    _run("jobs.train_upscaler", *common, "optim.steps=2", node=tmp_path / "a")
    again = _run("jobs.train_upscaler", *common, "optim.steps=4", node=tmp_path / "b")  # a fresh node
    assert "resumed from" in again.stderr and "at step 2" in again.stderr
    keys = set(_keys(s3_storage, run))
    assert {"config.yaml", "upscaler.safetensors", "eval.jsonl", "metrics.jsonl", "psnr_curve.png",
            "checkpoints/latest"} <= keys
    assert s3_storage.read_text(f"{run}/checkpoints/latest").strip() == "step00000004"
    rows = [json.loads(line) for line in s3_storage.read_text(f"{run}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # node B's rows continue node A's
    assert [json.loads(line)["step"] for line in s3_storage.read_text(f"{run}/eval.jsonl").splitlines()] == [0, 2, 4]
    assert not list(ROOT.glob("s3:*")) and not list(tmp_path.rglob("s3:*"))

"""jobs.train_tokenizer and jobs.evaluate tokenizer, end to end on tiny synthetic clips."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from loong_dist.models.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
TINY = ["tokenizer.channels=8", "tokenizer.decoder_res_blocks=1", "tokenizer.num_res_blocks=1", "data.size=64",
        "tokenizer_train.frames=5", "tokenizer_train.clips=6", "tokenizer_train.eval_clips=2",
        "tokenizer_train.eval_every=2", "tokenizer_train.save_every=2", "optim.micro_batch_size=2",
        "optim.warmup_steps=1", "run.log_every=1", "tokenizer_train.manifest_shares=[]", "tokenizer_train.crop=32"]


def _run(module, *args):
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    _run("data_prep.synthetic", "--n", "12", "--frames", "5", "--size", "64", "--out", str(out),
         "synthetic.held_out=0.3")
    return out / "manifest.jsonl"


def _dcp_weights(folder: Path, scratch: Path) -> dict:
    """A layout-free checkpoint's weights, read by torch's own DCP converter."""
    dcp_to_torch_save(folder, scratch)
    return {k[len("model."):]: v for k, v in torch.load(scratch).items() if k.startswith("model.")}


def test_train_resume_and_evaluate(tmp_path, synthetic):
    run = tmp_path / "tok"
    common = ["--config", "configs/tokenizer/cpu.yaml", "--out", str(run), "--manifest", str(synthetic),
              "--eval-manifest", str(synthetic), *TINY]
    _run("jobs.train_tokenizer", *common, "optim.steps=4")
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4] and all(r["ref_psnr"] > 0 for r in rows)
    assert sorted(p.name for p in (run / "previews").iterdir())[-1] == "preview_00000004.gif"
    assert any((run / "tensorboard").iterdir())
    tok = load_tokenizer(run / "tokenizer.safetensors")
    assert tok.latent_shape(5, 64, 64) == (2, 8, 8)

    again = _run("jobs.train_tokenizer", *common, "optim.steps=6", "tokenizer_train.average_last=2")
    assert "resumed from" in again.stderr and "at step 4" in again.stderr
    assert [json.loads(line)["step"] for line in (run / "eval.jsonl").read_text().splitlines()][-1] == 6
    # the export is the mean of the step-4 and step-6 checkpoints' weights, across the resume
    states = {s: _dcp_weights(run / "checkpoints" / f"step{s:08d}", tmp_path / f"{s}.pt") for s in (2, 4, 6)}
    assert not torch.equal(states[4]["decoder.conv_out.conv.weight"], states[6]["decoder.conv_out.conv.weight"])

    def assert_mean_of(steps):
        for k, v in load_tokenizer(run / "tokenizer.safetensors").state_dict().items():
            mean = sum(states[s][k].double() for s in steps) / len(steps)
            torch.testing.assert_close(v, mean.float(), rtol=0, atol=1e-7, msg=lambda m: f"{k}: {m}")

    assert_mean_of([4, 6])
    # a finished run started again trains nothing and exports with the new setting
    done = _run("jobs.train_tokenizer", *common, "optim.steps=6", "tokenizer_train.average_last=3")
    assert "nothing left to train (step 6 of 6)" in done.stderr
    assert_mean_of([2, 4, 6])

    out = tmp_path / "eval"
    _run("jobs.evaluate", "tokenizer", "--checkpoint", str(run / "tokenizer.safetensors"), "--manifest", str(synthetic),
         "--out", str(out), "--clips", "2", "--frames", "5", "data.size=64")
    report = json.loads((out / "tokenizer_eval.json").read_text())
    assert report["clips"] == 2 and len(report["per_clip"]) == 2 and 0 <= report["used"] <= 1
    assert (out / "tokenizer_eval" / "clip_001.gif").exists()
    from PIL import Image
    videos = {c["video"] for c in report["per_clip"]}
    # one row per video; first and last frame, original | reconstruction, and a 4 px gutter
    assert Image.open(out / "reconstructions.png").size == (4 * 64 + 4, 64 * len(videos))


def test_two_ranks_train_as_one_rank_accumulating_the_same_global_batch(tmp_path, synthetic):
    """Two local ranks of one micro-batch each against one rank accumulating two: the same global
    batch (each micro-batch draws by its place in it, not by its rank alone), so the same losses,
    logged as the global batch's means, at every step. Step 3's loss is that of step 2's update (the
    first step runs at lr 0). Losses, not weights: a bias under a norm has no gradient but rounding
    noise, which Adam scales to full steps in both runs alike. A third run changes layout: one rank
    (ZeRO-1 over one rank) stops after step 1 and two ranks continue its checkpoint, with the
    two-rank run's losses, at ZeRO-3 (its parameters partitioned over the two ranks), evaluating on
    held-out clips and exporting the mean of its last two checkpoints' weights."""
    common = ["--config", "configs/tokenizer/cpu.yaml", "--manifest", str(synthetic), *TINY, "optim.steps=3",
              "tokenizer_train.eval_manifest=", "parallel.precision=fp32"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}

    def two_ranks(out, log, *extra) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "jobs.train_tokenizer", *common, "--out", str(out),
                                 "--nproc", "2", *extra], cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"}, stdout=log,
                                stderr=subprocess.STDOUT)

    with open(tmp_path / "two.log", "w") as log:  # a file, not a pipe that nobody reads while "one" runs
        two = two_ranks(tmp_path / "two", log)
        _run("jobs.train_tokenizer", *common, "--out", str(tmp_path / "one"), "optim.grad_accum_steps=2")
        stopped = _run("jobs.train_tokenizer", *common, "--out", str(tmp_path / "moved"), "optim.grad_accum_steps=2",
                       "--max-minutes", "0")
        assert "time limit reached at step 1" in stopped.stderr
        assert two.wait() == 0, (tmp_path / "two.log").read_text()[-3000:]
    with open(tmp_path / "moved.log", "w") as log:
        assert two_ranks(tmp_path / "moved", log, "parallel.zero_stage=3", f"tokenizer_train.eval_manifest={synthetic}",
                         "tokenizer_train.average_last=2").wait() == 0, (tmp_path / "moved.log").read_text()[-3000:]
    moved_log = (tmp_path / "moved.log").read_text()
    assert "written on 1 rank(s) at ZeRO-1, resumed on 2 at ZeRO-3" in moved_log and "at step 1" in moved_log
    evals = [json.loads(line) for line in (tmp_path / "moved" / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals] == [2] and evals[0]["psnr"] > 0
    states = [_dcp_weights(tmp_path / "moved" / "checkpoints" / f"step{s:08d}", tmp_path / f"{s}.pt") for s in (2, 3)]
    for k, v in load_tokenizer(tmp_path / "moved" / "tokenizer.safetensors").state_dict().items():
        mean = (states[0][k].double() + states[1][k].double()) / 2  # gathered from ZeRO-3's partitions, then averaged
        torch.testing.assert_close(v, mean.float(), rtol=0, atol=1e-7, msg=lambda m: f"{k}: {m}")
    rows = {k: [json.loads(line) for line in (tmp_path / k / "metrics.jsonl").read_text().splitlines()]
            for k in ("one", "two", "moved")}
    assert [r["step"] for r in rows["two"]] == [1, 2, 3] and [r["step"] for r in rows["moved"]] == [1, 2, 3]
    for key in ("loss", "l1", "l2", "lr"):  # the resumed run's schedule goes on where it stopped
        assert [r[key] for r in rows["one"]] == pytest.approx([r[key] for r in rows["two"]], rel=1e-6), key
        assert [r[key] for r in rows["moved"]] == pytest.approx([r[key] for r in rows["two"]], rel=1e-6), key


def test_train_tokenizer_without_manifest_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jobs.train_tokenizer", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: config: tokenizer_train.manifests is empty: pass --manifest M[,M2]"]

"""A training job killed with SIGKILL after a checkpoint and started again with the same command
logs the same losses as a run that was never interrupted, and ends with the same weights (CPU).
The killed run mirrors its checkpoints to S3 (a local moto server) and the restart finds no local
checkpoint - as on a fresh node - so it resumes from the mirror."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from loong_dist.io.storage import Storage
from loong_dist.models.ar.checkpoint import load_model
from tests.data.test_shards_and_loader import make_samples, write_shards

ROOT = Path(__file__).resolve().parents[2]
STEPS, SAVE_EVERY = 24, 5


def _command(shards, out, *extra):
    return [sys.executable, "-m", "jobs.train", "--shards", shards, "--out", out, "--nproc", "1", *extra,
            "model.size=tiny", "model.max_seq_len=512", "parallel.precision=fp32", "train.token_budget=700",
            f"train.save_every={SAVE_EVERY}", f"optim.steps={STEPS}", "optim.warmup_steps=2", "optim.lr=1e-2",
            "train.loader_workers=2", "train.caption_dropout=0.3", "loss.mode=frame_groups",
            "loss.boundaries=[1,3]", "loss.weights=[2.0,1.0,0.5]"]


def _lines(path: Path) -> list[dict]:
    """The complete lines of a metrics file (one being written, or torn by the kill, is left out)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def test_sigkill_then_same_command_reproduces_losses(tmp_path, s3_bucket):
    shards = str(tmp_path / "shards")
    write_shards(Storage(), shards, make_samples(48))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_command(shards, str(ref)), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)

    # the run under test: killed (the whole process group, as a lost node) once it has a checkpoint
    # and has logged steps past it, which the restart must train again
    command = _command(shards, str(run), f"train.checkpoint_uri={s3_bucket}/ckpt")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mirror, deadline = Storage(), time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(_lines(run / "metrics.jsonl")) >= SAVE_EVERY + 2 and mirror.exists(f"{s3_bucket}/ckpt/latest"):
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = len(_lines(run / "metrics.jsonl"))
    assert SAVE_EVERY < killed_at < STEPS and not (run / "model.safetensors").exists(), "not killed mid-run"

    shutil.rmtree(run / "checkpoints")  # the restart finds only the S3 mirror
    restart = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600)
    assert "downloaded from" in restart.stderr
    want, got = _lines(ref / "metrics.jsonl"), _lines(run / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # steps past the checkpoint not doubled
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bit-identical
    assert [r["frame_loss"] for r in got] == [r["frame_loss"] for r in want]
    a, b = load_model(ref / "model.safetensors")[0].state_dict(), load_model(run / "model.safetensors")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

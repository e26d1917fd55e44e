"""A training job killed with SIGKILL after a checkpoint and started again with the same command
logs the same losses as a run that was never interrupted, and ends with the same weights (CPU).
The killed run mirrors its checkpoints to S3 (a local moto server) and the restart finds no local
checkpoint - as on a fresh node - so it resumes from the mirror.

The kill lands at a named point, not at a moment: tests/train/kill_point/sitecustomize.py (on
PYTHONPATH, no change to the trainer) holds the job right after it logs step SAVE_EVERY + 2, and
the test kills its process group when the hook's marker appears."""

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
HOOK = Path(__file__).resolve().parent / "kill_point"
STEPS, SAVE_EVERY = 24, 5
KILL_AFTER = SAVE_EVERY + 2
"""The step after whose metrics line the job is killed: past a checkpoint, with steps to train again."""


def _command(shards, out, *extra):
    return [sys.executable, "-m", "jobs.train", "--shards", shards, "--out", out, "--nproc", "1", *extra,
            "model.size=tiny", "model.max_seq_len=512", "parallel.precision=fp32", "train.token_budget=700",
            f"train.save_every={SAVE_EVERY}", f"optim.steps={STEPS}", "optim.warmup_steps=2", "optim.lr=1e-2",
            "train.loader_workers=2", "train.caption_dropout=0.3", "train.context_noise=0.1", "loss.mode=frame_groups",
            "loss.boundaries=[1,3]", "loss.weights=[2.0,1.0,0.5]", "train.self_context=0.2"]


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
    marker = tmp_path / "held"
    hold = dict(env, LOONG_TEST_HOLD_AFTER_STEP=f"{KILL_AFTER}:{marker}",
                PYTHONPATH=os.pathsep.join([str(HOOK), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    log = tmp_path / "killed.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(command, cwd=ROOT, env=hold, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    deadline = time.monotonic() + 600  # a safety net only: the kill waits for the marker, not a time
    try:
        while not marker.exists():
            assert time.monotonic() < deadline, "the job never reached the kill point"
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"the job ended before the kill point: {log.read_text()[-3000:]}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [r["step"] for r in _lines(run / "metrics.jsonl")] == list(range(1, KILL_AFTER + 1))
    assert Storage().read_text(f"{s3_bucket}/ckpt/latest").strip() == f"step{SAVE_EVERY:08d}"
    assert not (run / "model.safetensors").exists()

    shutil.rmtree(run / "checkpoints")  # the restart finds only the S3 mirror
    restart = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600)
    assert "downloaded from" in restart.stderr
    want, got = _lines(ref / "metrics.jsonl"), _lines(run / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # steps past the checkpoint not doubled
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bit-identical
    assert [r["frame_loss"] for r in got] == [r["frame_loss"] for r in want]
    a, b = load_model(ref / "model.safetensors")[0].state_dict(), load_model(run / "model.safetensors")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

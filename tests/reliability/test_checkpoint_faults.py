"""Checkpoints interrupted while being written, with real jobs.train processes:

- killed during a save: the job's torch.save of the step-4 checkpoint writes half its bytes and
  hangs (tests/reliability/save_fault/sitecustomize.py, injected through PYTHONPATH, no change to
  the trainer), then the test SIGKILLs the job's whole process group;
- disk full during a save: the same write fails with ENOSPC.

Either way `latest` still names the step-2 checkpoint, whose files are intact, and the job started
again resumes from it and logs exactly the losses of an uninterrupted run for steps 3 to 6.
"""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from torch.distributed.checkpoint import FileSystemReader

from loong_dist.io.storage import Storage
from tests.data.test_shards_and_loader import make_samples, write_shards

ROOT = Path(__file__).resolve().parents[2]
HOOK = Path(__file__).resolve().parent / "save_fault"
TRAIN = ["model.size=tiny", "model.max_seq_len=512", "parallel.precision=fp32", "parallel.zero_stage=1",
         "train.token_budget=700", "train.save_every=2", "train.keep_checkpoints=3", "optim.steps=6",
         "optim.warmup_steps=1", "optim.lr=1e-2", "train.loader_workers=1", "run.log_every=1", "--nproc", "1"]


def _cmd(shards: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.train", "--shards", str(shards), "--out", str(out), *TRAIN]


def _env(fault: str | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LOONG_TEST_SAVE_FAULT", None)
    if fault:
        env["LOONG_TEST_SAVE_FAULT"] = fault
        env["PYTHONPATH"] = os.pathsep.join([str(HOOK), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _losses(run: Path) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {json.loads(x)["step"]: json.loads(x)["loss"] for x in lines if x}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Shards, and an uninterrupted 6-step run over them."""
    root = tmp_path_factory.mktemp("ckpt")
    write_shards(Storage(), str(root / "shards"), make_samples(24), per_shard=8)
    r = subprocess.run(_cmd(root / "shards", root / "ref"), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = _losses(root / "ref")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    return root, losses


def _step2_intact(run: Path, ref: Path) -> None:
    ckpt = run / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step00000002"
    files = sorted(p.name for p in (ckpt / "step00000002").iterdir())
    assert files and files == sorted(p.name for p in (ref / "checkpoints" / "step00000002").iterdir())
    for name in files:
        if name.endswith(".pt"):  # the client states: torch.save zip archives, every member's CRC checks out
            with zipfile.ZipFile(ckpt / "step00000002" / name) as z:
                assert z.testzip() is None
    # the weights and moments: DCP's metadata reads, and names every file it needs
    meta = FileSystemReader(str(ckpt / "step00000002")).read_metadata()
    assert {i.relative_path for i in meta.storage_data.values()} <= set(files)


def _resume_matches(root: Path, run: Path, losses: dict[int, float]) -> None:
    r = subprocess.run(_cmd(root / "shards", run), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "at step 2" in r.stderr and "step00000002" in r.stderr, r.stderr[-3000:]
    assert _losses(run) == losses  # steps 1-2 from the first run, 3-6 retrained: the same numbers
    assert (run / "checkpoints" / "latest").read_text().strip() == "step00000006"


def _kill_once_torn(cmd: list[str], fault: str, run: Path, torn_glob: str, linger_s: float = 0) -> None:
    """Run the job with the `fault` hook until a file matching `torn_glob` is half-written (plus
    `linger_s`), then SIGKILL its process group: the job, its spawned ranks and their helpers."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(fault), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not list(run.glob(torn_glob)):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
        time.sleep(linger_s)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stderr.close()


def test_killed_during_save_keeps_the_previous_checkpoint(reference):
    root, losses = reference
    run = root / "killed"
    _kill_once_torn(_cmd(root / "shards", run), "step00000004:hang", run, "checkpoints/step00000004/*.torn")
    torn = list(run.glob("checkpoints/step00000004/*.pt"))
    assert torn  # a half-written file really is on disk
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(torn[0])
    _step2_intact(run, root / "ref")
    _resume_matches(root, run, losses)


def test_disk_full_during_save_keeps_the_previous_checkpoint(reference):
    root, losses = reference
    run = root / "full"
    r = subprocess.run(_cmd(root / "shards", run), cwd=ROOT, env=_env("step00000004:enospc"), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2 and "No space left on device" in r.stderr, r.stderr[-3000:]
    # one line naming the checkpoint and the one kept, no traceback
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    line = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "step00000004" in line[0] and "still names step00000002" in line[0], r.stderr[-3000:]
    _step2_intact(run, root / "ref")
    _resume_matches(root, run, losses)


def test_two_ranks_killed_while_rank1_writes_keeps_latest_on_the_previous_checkpoint(reference):
    root, _ = reference
    run = root / "two-ranks"
    cmd = _cmd(root / "shards", run)
    cmd[cmd.index("--nproc") + 1] = "2"
    # rank 0 is free for 5 s more meanwhile: its own files, then `latest`, then the barrier
    _kill_once_torn(cmd, "step00000004/client_rank00001:hang", run, "checkpoints/step00000004/client_rank00001*.torn",
                    linger_s=5)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step00000002"

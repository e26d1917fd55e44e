"""A simulated two-node cluster: two Ray nodes on 127.0.0.1 (`ray start --head`, `ray start
--address`), each with its own Ray temp dir, scratch disk (LOONG_CACHE_DIR) and compiled-ops
cache; the shards and run folders live only on the S3 test server. Stage 1, then stage 2, are
submitted with `ray job submit ... --num-workers 2` (one Ray Train worker per node, gloo,
DeepSpeed inside each). The second node's worker is killed once stage 2 has published a
checkpoint; the same command again resumes from S3 on both nodes and ends with the losses of two
local ranks started by `--nproc 2` from the same stage-1 export and never interrupted: same
ranks, same batches, same arithmetic."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.data.test_shards_and_loader import make_samples, write_shards
from tests.fixtures.ray_cluster import node_processes, ray_two_nodes, tools_first_path

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["model.size=tiny", "model.max_seq_len=512", "parallel.precision=fp32", "parallel.zero_stage=1",
          "train.token_budget=700", "optim.warmup_steps=1", "optim.lr=1e-2", "train.loader_workers=1",
          "loss.mode=frame_groups", "loss.boundaries=[1,3]", "loss.weights=[2.0,1.0,0.5]"]


def _stage1(shards, out, launch):
    return ["-m", "jobs.train", "--shards", shards, "--out", out, *launch, *COMMON, "optim.steps=2",
            "train.save_every=0"]


def _stage2(shards, out, init, launch):
    return ["-m", "jobs.train", "--shards", shards, "--out", out, *launch, *COMMON, f"train.init_from={init}",
            "optim.steps=6", "train.save_every=3"]


def _submit(ray_bin, dashboard, env, args):
    return [ray_bin, "job", "submit", "--address", dashboard, "--working-dir", str(ROOT), "--", "python", *args]


def _prebuilt_ops(monkeypatch) -> Path:
    """This suite's compiled-extensions folder, holding DeepSpeed's CPU communication op (the one
    op a gloo rank of jobs.train compiles): built here once, where a test suite started from a
    clean clone may not have built it yet. Built by the ninja the nodes run (their PATH): a build
    log of another ninja version makes each node compile it again."""
    from deepspeed.accelerator import get_accelerator
    from torch.utils.cpp_extension import get_default_build_root

    monkeypatch.setenv("PATH", tools_first_path())
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        builder.load(verbose=False)
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())  # where load() built it
    root.mkdir(parents=True, exist_ok=True)
    return root


def _losses(text: str) -> list[float]:
    return [json.loads(line)["loss"] for line in text.splitlines()]


def test_two_nodes_train_from_s3_and_resume_after_losing_a_worker(tmp_path, s3_bucket, s3_storage, monkeypatch):
    shards = f"{s3_bucket}/shards"
    write_shards(s3_storage, shards, make_samples(48))
    built = _prebuilt_ops(monkeypatch)
    nodes = []
    for i in range(2):
        own = tmp_path / f"node{i}"
        (own / "cache").mkdir(parents=True)
        # each node's own compiled-ops cache, as from a node image with DeepSpeed's ops prebuilt:
        # two nodes compiling the same op at once on a 2-core machine would only add minutes
        shutil.copytree(built, own / "ops", ignore=shutil.ignore_patterns("lock"))
        # (not TMPDIR: Ray's agents put sockets under it, and a pytest tmp path is too long for one)
        nodes.append({"LOONG_CACHE_DIR": str(own / "cache"), "TORCH_EXTENSIONS_DIR": str(own / "ops")})
    stage1, run = f"{s3_bucket}/runs/stage1", f"{s3_bucket}/runs/stage2"
    launch = ["--num-workers", "2", "parallel.ray_placement=SPREAD"]  # one worker per node
    with ray_two_nodes("nodes", nodes, num_cpus=2) as (env, ray_bin, dashboard, temps):
        r = subprocess.run(_submit(ray_bin, dashboard, env, _stage1(shards, stage1, launch)), cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        assert s3_storage.exists(f"{stage1}/model.safetensors") and s3_storage.exists(f"{stage1}/config.yaml")

        command = _submit(ray_bin, dashboard, env, _stage2(shards, run, stage1, launch))
        job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, killed = time.monotonic() + 1200, []
        while time.monotonic() < deadline and job.poll() is None and not killed:
            if s3_storage.exists(f"{run}/checkpoints/latest"):  # the step-3 checkpoint is on S3
                killed = node_processes(temps[1], "ray::RayTrainWorker")
                for p in killed:
                    p.kill()
            time.sleep(0.2)
        assert killed, "no worker of the second node to kill"
        assert job.wait(timeout=1200) != 0  # the job failed with its worker
        lost_at = s3_storage.read_text(f"{run}/checkpoints/latest").strip()

        r = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        assert "resumed from" in r.stdout + r.stderr

    # the reference: two local ranks, never interrupted, from the same stage-1 export
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, *_stage2(shards, str(ref), stage1, ["--nproc", "2"])], cwd=ROOT,
                   env={**os.environ}, check=True, capture_output=True, timeout=1200)
    resumed = _losses(s3_storage.read_text(f"{run}/metrics.jsonl"))
    assert lost_at in ("step00000003", "step00000006") and len(resumed) == 6
    assert resumed == _losses((ref / "metrics.jsonl").read_text())
    assert not any(p.name.startswith("s3:") for p in tmp_path.rglob("*"))
    for i in range(2):  # each node kept its own copy of the run in its own scratch
        assert list((tmp_path / f"node{i}" / "cache" / "scratch").glob("*runs-stage2*"))
    assert s3_storage.exists(f"{run}/model.safetensors") and s3_storage.exists(f"{run}/frame_loss.png")

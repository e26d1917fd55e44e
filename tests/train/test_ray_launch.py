"""`ray job submit -- python -m jobs.train ... --num-workers 2` on a private `ray start --head`
cluster on 127.0.0.1: two Ray Train CPU workers (gloo, DeepSpeed inside each) train the same
losses as two local ranks started by `--nproc 2`."""

import json
import subprocess
import sys
from pathlib import Path

from loong_dist.io.storage import Storage
from tests.data.test_shards_and_loader import make_samples, write_shards
from tests.fixtures.ray_cluster import ray_head

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def _args(shards, out, launch):
    return ["-m", "jobs.train", "--shards", shards, "--out", out, *launch, "model.size=tiny", "model.max_seq_len=512",
            "parallel.precision=fp32", "train.token_budget=700", "train.save_every=0", "optim.steps=4",
            "optim.warmup_steps=0", "optim.lr=1e-2", "train.loader_workers=2", "loss.mode=frame_groups",
            "loss.boundaries=[1,3]", "loss.weights=[2.0,1.0,0.5]"]


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ray_train_workers_match_local_ranks(tmp_path):
    shards = str(tmp_path / "shards")
    write_shards(Storage(), shards, make_samples(48))
    local = tmp_path / "local"
    subprocess.run([PY, *_args(shards, str(local), ["--nproc", "2"])], cwd=ROOT, check=True, capture_output=True,
                   timeout=600)

    out = tmp_path / "ray"
    with ray_head("rt", num_cpus=3) as (env, ray_bin, dashboard):
        r = subprocess.run([ray_bin, "job", "submit", "--address", dashboard, "--working-dir", ".",
                            "--", "python", *_args(shards, str(out), ["--num-workers", "2"])],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    assert _losses(out) == _losses(local)  # same ranks, same batches, same arithmetic
    assert (out / "model.safetensors").exists() and (out / "frame_loss.png").exists()

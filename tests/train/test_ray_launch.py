"""`ray job submit -- python -m jobs.train ... --num-workers 2` on a private `ray start --head`
cluster on 127.0.0.1: two Ray Train CPU workers (gloo, DeepSpeed inside each) train the same
losses as two local ranks started by `--nproc 2`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from loong_dist.io.storage import Storage
from tests.data.test_shards_and_loader import make_samples, write_shards
from tests.data_prep.test_pretokenize import _free_port, _kill_cluster

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

    temp_dir = f"/tmp/loong-rt-{os.getpid()}"  # short: Ray's socket paths must stay under 107 bytes
    port, dash, client = _free_port(), _free_port(), _free_port()
    env = dict(os.environ, PATH=f"{Path(PY).parent}:{os.environ['PATH']}", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="disabled")  # a private cluster on 127.0.0.1, torn down below
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(PY).parent / "ray")
    out = tmp_path / "ray"
    try:
        subprocess.run([ray_bin, "start", "--head", "--num-cpus", "3", "--node-ip-address", "127.0.0.1",
                        "--port", str(port), "--ray-client-server-port", str(client),
                        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                        "--temp-dir", temp_dir, "--disable-usage-stats"], env=env, check=True, capture_output=True,
                       timeout=120)
        r = subprocess.run([ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".",
                            "--", "python", *_args(shards, str(out), ["--num-workers", "2"])],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    finally:
        _kill_cluster(temp_dir, port)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert _losses(out) == _losses(local)  # same ranks, same batches, same arithmetic
    assert (out / "model.safetensors").exists() and (out / "frame_loss.png").exists()

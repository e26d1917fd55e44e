"""The Loong recipe in the trainer: the re-weighted loss over the global batch (DP=2 against one
process on the same global batches), per-frame telemetry, the exported weights and the hand-over
to the next stage."""

import json

import torch
import torch.multiprocessing

from loong_dist.config import load_config
from loong_dist.io.storage import Storage
from loong_dist.models.ar.checkpoint import load_model
from loong_dist.parallel.process_groups import launch_local
from tests.data.test_shards_and_loader import make_samples, write_shards


def _cfg(shards, out, budget, *extra):
    return load_config(None, [f"train.shards={shards}", f"run.out_dir={out}", "model.size=tiny",
                              "model.max_seq_len=512", "parallel.precision=fp32", "parallel.zero_stage=1",
                              f"train.token_budget={budget}", "train.save_every=0", "optim.lr=1e-2",
                              "optim.warmup_steps=0", "optim.steps=3", "train.loader_workers=2",
                              "loss.mode=frame_groups", "loss.boundaries=[1,3]", "loss.weights=[2.0,1.0,0.5]",
                              *extra])


def _worker(shards, tmp, budget, results):
    import torch.distributed as dist

    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.train.trainer import Trainer

    groups = init_parallel(1, "gloo")
    try:
        name = f"dp{groups.dp_size}"
        first = Trainer(_cfg(shards, f"{tmp}/{name}", budget), groups)
        buckets = {f: b.micro_batch * groups.dp_size for f, b in first.loader.sampler.buckets.items()}
        losses = [s.loss for s in first.fit()]
        # the next stage: starts from the exported weights, fresh optimizer and schedule
        second = Trainer(_cfg(shards, f"{tmp}/{name}_next", budget, f"train.init_from={tmp}/{name}",
                              "optim.steps=2"), groups)  # 2: DeepSpeed's first step runs at lr 0
        exported = load_model(f"{tmp}/{name}/model.safetensors")[0].state_dict()
        start = second.engine.module.state_dict()
        same_start = set(start) == set(exported) and all(torch.equal(start[k], exported[k]) for k in exported)
        second.fit()
        if dist.get_rank() == 0:  # small results only: a full pipe would block the queue
            results.put((buckets, losses, same_start))
    finally:
        destroy_parallel()


def test_weighted_loss_is_global_and_stages_hand_over(tmp_path):
    shards = str(tmp_path / "shards")
    write_shards(Storage(), shards, make_samples(48))
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    launch_local(_worker, 2, shards, str(tmp_path), 700, results)  # DP=2
    buckets2, dp2, same_start = results.get()
    launch_local(_worker, 1, shards, str(tmp_path), 1400, results)  # one rank, twice the budget
    buckets1, dp1, _ = results.get()
    assert buckets1 == buckets2  # the same global batches
    torch.testing.assert_close(torch.tensor(dp2), torch.tensor(dp1), rtol=2e-5, atol=0)

    # telemetry: per-frame mean loss every step, TensorBoard events, the plot
    rows = [json.loads(line) for line in (tmp_path / "dp2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert len(r["frame_loss"]) == 5 and any(v is not None for v in r["frame_loss"])
        assert r["loss"] != r["plain_loss"] or all(v is None for v in r["frame_loss"][1:])
    assert (tmp_path / "dp2" / "frame_loss.png").stat().st_size > 1000
    assert list((tmp_path / "dp2" / "tensorboard").glob("events.out.tfevents.*"))

    # the next stage starts from exactly the exported weights, and trains on from there
    assert same_start
    exported = load_model(tmp_path / "dp2" / "model.safetensors")[0].state_dict()
    fresh = load_model(tmp_path / "dp2_next" / "model.safetensors")[0].state_dict()
    assert any(not torch.equal(fresh[k], exported[k]) for k in exported)  # and trained on from there

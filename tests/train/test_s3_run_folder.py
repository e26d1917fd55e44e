"""A run folder on S3 (run.out_dir=s3://...): config, metrics, checkpoints and exports land there,
each "node" works in its own scratch, a node with an empty disk resumes from S3 exactly, and the
next stage starts from the S3 export (train.init_from=s3://...). No local folder named `s3:`."""

import json
import os
from pathlib import Path

import torch
import torch.multiprocessing

from loong_dist.config import load_config
from loong_dist.io.storage import Storage
from loong_dist.parallel.process_groups import launch_local
from tests.data.test_shards_and_loader import make_samples, write_shards

ROOT = Path(__file__).resolve().parents[2]


def _cfg(shards, out, steps, *extra):
    return load_config(None, [f"train.shards={shards}", f"run.out_dir={out}", "model.size=tiny",
                              "model.max_seq_len=512", "parallel.precision=fp32", "parallel.zero_stage=1",
                              "train.token_budget=700", "train.save_every=2", "optim.lr=1e-2", "optim.warmup_steps=1",
                              f"optim.steps={steps}", "train.loader_workers=1", "train.keep_checkpoints=1", *extra])


def _on_node(tmp, name):
    """This process now plays node `name`: its scratch disk is its own."""
    os.environ["LOONG_CACHE_DIR"] = str(Path(tmp) / name)


def _worker(shards, bucket, tmp, results):
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.train.trainer import Trainer

    groups = init_parallel(1, "gloo")
    try:
        _on_node(tmp, "ref")
        reference = [s.loss for s in Trainer(_cfg(shards, f"{bucket}/ref", 6), groups).fit()]
        _on_node(tmp, "node1")
        first = Trainer(_cfg(shards, f"{bucket}/run", 6), groups)
        before = [s.loss for s in first.fit(steps=4)]  # node 1 is lost after its step-4 checkpoint
        _on_node(tmp, "node2")  # a fresh node: nothing of the run on its disk
        second = Trainer(_cfg(shards, f"{bucket}/run", 6), groups)
        resumed, step = second.resume(), second.step
        after = [s.loss for s in second.fit()]
        _on_node(tmp, "node3")
        nxt = Trainer(_cfg(shards, f"{bucket}/next", 2, f"train.init_from={bucket}/run"), groups)
        start = {k: v.clone() for k, v in nxt.engine.module.state_dict().items()}
        nxt.fit()
        results.put((reference, before, resumed, step, after, {k: v.sum().item() for k, v in start.items()}))
    finally:
        destroy_parallel()


def test_run_folder_on_s3_resumes_on_a_fresh_node_and_hands_over(tmp_path, s3_bucket, s3_storage):
    from loong_dist.models.ar.checkpoint import load_model

    shards = str(tmp_path / "shards")
    write_shards(Storage(), shards, make_samples(48))
    results = torch.multiprocessing.get_context("spawn").SimpleQueue()
    launch_local(_worker, 1, shards, s3_bucket, str(tmp_path), results)
    reference, before, resumed, step, after, start = results.get()
    assert resumed and step == 4
    assert before + after == reference  # bit-identical across the lost node

    objects = [u[len(s3_bucket) + 1:] for u in s3_storage.list(f"{s3_bucket}/run")]
    for name in ("run/metrics.jsonl", "run/model.safetensors", "run/padding.json", "run/frame_loss.png",
                 "run/checkpoints/latest"):
        assert name in objects, (name, objects)
    assert any(o.startswith("run/tensorboard/") for o in objects)
    assert {o.split("/")[2] for o in objects if o.startswith("run/checkpoints/step")} == {"step00000006"}  # keep 1
    lines = [json.loads(x) for x in s3_storage.read_text(f"{s3_bucket}/run/metrics.jsonl").splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    with s3_storage.local_copy(f"{s3_bucket}/run/model.safetensors") as path:
        exported = load_model(path)[0].state_dict()
    assert start == {k: v.sum().item() for k, v in exported.items()}  # the next stage began from it
    assert s3_storage.exists(f"{s3_bucket}/next/model.safetensors")
    assert not list(ROOT.glob("s3:*")) and not list(tmp_path.rglob("s3:*"))
    node1 = [p.name for p in (tmp_path / "node1" / "scratch").iterdir()]
    assert len(node1) == 1 and node1[0].startswith(s3_bucket[len("s3://"):] + "-run")

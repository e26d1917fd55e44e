"""A checkpoint resumes on another layout, exactly (fp32, two gloo ranks).

Three uninterrupted 4-step runs with one config and its global batch (train.global_batch_tokens),
from the same initial weights (train.init_from: megatron initialises a TP=2 model's random
weights differently from a single-device one): TP=1 x DP=2 at ZeRO-2, TP=2 x DP=1 at ZeRO-1, and
one rank at ZeRO-0 (two micro-batches a step). They see the same batches and give the same losses.
Their step-2 checkpoints, moved into fresh run folders by jobs.convert_checkpoint (one of them on
S3), are resumed on another layout; steps 3-4 must give the target layout's uninterrupted losses
to 1e-5 relative:

    TP=2 x DP=1 (ZeRO-1) -> TP=1 x DP=2 (ZeRO-2)
    TP=1 x DP=2 (ZeRO-2) -> TP=2 x DP=1 (ZeRO-1)
    TP=1 x DP=2 (ZeRO-2) -> one rank (ZeRO-0), in two legs: train.exit_interval=3 stops it after
                            step 3 with a checkpoint, and the same config continues to step 4
    TP=2 x DP=1 (ZeRO-1) -> DP=2 at ZeRO-3 for step 3 (its partitioned parameters read and
                            written) -> one rank (ZeRO-0) for step 4

A resume whose config changes the global batch is refused with one line.
"""

import json
from pathlib import Path

import pytest

import torch

from jobs import convert_checkpoint
from loong_dist.config import load_config
from loong_dist.data.shards import ShardIndex
from loong_dist.models.ar.checkpoint import save_model
from loong_dist.models.ar.model import Transformer
from loong_dist.errors import UserError
from loong_dist.io.storage import Storage
from loong_dist.parallel.process_groups import launch_local
from loong_dist.train.trainer import layout_from_index
from tests.data.test_shards_and_loader import make_samples, write_shards

LAYOUTS = {"tp1dp2": (2, ["parallel.tp=1", "parallel.zero_stage=2"]),
           "tp2dp1": (2, ["parallel.tp=2", "parallel.zero_stage=1"]),
           "dp1": (1, ["parallel.tp=1", "parallel.zero_stage=0"])}
ZERO3 = {"tp1dp2z3": (2, ["parallel.tp=1", "parallel.zero_stage=3"])}


def _cfg(shards, out, extra):
    return load_config(None, [f"train.shards={shards}", f"run.out_dir={out}", "model.size=tiny",
                              f"train.init_from={Path(shards).parent / 'init.safetensors'}",
                              "model.max_seq_len=512", "parallel.precision=fp32", "train.token_budget=400",
                              "train.global_batch_tokens=800", "train.save_every=2", "train.keep_checkpoints=4",
                              "optim.lr=1e-2", "optim.warmup_steps=1", "optim.steps=4", "train.loader_workers=1",
                              "run.seed=3", "loss.mode=frame_groups", "loss.boundaries=[1,3]",
                              "loss.weights=[2.0,1.0,0.5]", "train.caption_dropout=0.3", "train.context_noise=0.1",
                              "train.self_context=0.2", *extra])


def _worker(shards, out, extra):
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.train.trainer import Trainer

    cfg = _cfg(shards, out, extra)
    groups = init_parallel(cfg.parallel.tp, "gloo")
    try:
        trainer = Trainer(cfg, groups)
        trainer.resume()
        trainer.fit()
    finally:
        destroy_parallel()


def _run(shards, out, layout, *extra):
    n, overrides = {**LAYOUTS, **ZERO3}[layout]
    launch_local(_worker, n, str(shards), str(out), [*overrides, *extra])


def _losses(run, storage=None):
    text = storage.read_text(f"{run}/metrics.jsonl") if storage else (run / "metrics.jsonl").read_text()
    return {r["step"]: r["loss"] for r in map(json.loads, text.splitlines())}


def _convert_step2(src, dst):
    """What a user moving a run does: its step-2 checkpoint into a new run folder (local or s3://)."""
    convert_checkpoint.main(["--from", str(src / "checkpoints" / "step00000002"), "--to", str(dst)])


def _close(got, want):
    for step in (3, 4):
        assert got[step] == pytest.approx(want[step], rel=1e-5), (step, got[step], want[step])


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    write_shards(Storage(), str(root / "shards"), make_samples(36, seed=5), per_shard=12)
    cfg = _cfg(root / "shards", root / "init", [])
    layout = layout_from_index(ShardIndex.load(str(root / "shards"), Storage()), cfg.model.vocab_multiple)
    torch.manual_seed(0)
    save_model(Transformer(cfg.model, layout.padded_vocab_size).state_dict(), cfg.model, layout,
               root / "init.safetensors")
    for layout in LAYOUTS:
        _run(root / "shards", root / layout, layout)
    return root, {layout: _losses(root / layout) for layout in LAYOUTS}


def test_same_global_batches_on_every_layout(references):
    _, losses = references
    for layout in ("tp2dp1", "dp1"):
        for step in (1, 2, 3, 4):
            assert losses[layout][step] == pytest.approx(losses["tp1dp2"][step], rel=1e-5), (layout, step)


def test_tp2_checkpoint_resumes_at_dp2_exactly(references, tmp_path):
    root, losses = references
    _convert_step2(root / "tp2dp1", tmp_path / "run")
    _run(root / "shards", tmp_path / "run", "tp1dp2")
    assert sorted(_losses(tmp_path / "run")) == [3, 4]
    _close(_losses(tmp_path / "run"), losses["tp1dp2"])


def test_dp2_checkpoint_resumes_at_tp2_exactly_through_s3(references, s3_bucket, s3_storage):
    root, losses = references
    run = f"{s3_bucket}/moved"
    _convert_step2(root / "tp1dp2", run)
    assert s3_storage.read_text(f"{run}/checkpoints/latest") == "step00000002"
    _run(root / "shards", run, "tp2dp1")
    _close(_losses(run, s3_storage), losses["tp2dp1"])
    assert s3_storage.read_text(f"{run}/checkpoints/latest") == "step00000004"


def test_two_ranks_to_one_stops_at_exit_interval_and_refuses_another_batch(references, tmp_path):
    root, losses = references
    run = tmp_path / "run"
    _convert_step2(root / "tp1dp2", run)
    with pytest.raises(UserError, match="global batch of 800 tokens.*train.allow_batch_change"):
        _run(root / "shards", run, "dp1", "train.global_batch_tokens=1200")
    _run(root / "shards", run, "dp1", "train.exit_interval=3")
    assert sorted(_losses(run)) == [3]
    assert (run / "checkpoints" / "latest").read_text() == "step00000003"
    _run(root / "shards", run, "dp1", "train.exit_interval=3")
    _close(_losses(run), losses["dp1"])


def test_zero3_reads_and_writes_the_layout_free_state(references, tmp_path):
    root, losses = references
    run = tmp_path / "run"
    _convert_step2(root / "tp2dp1", run)
    _run(root / "shards", run, "tp1dp2z3", "train.exit_interval=3")  # ZeRO-3 takes over at step 3
    assert _losses(run)[3] == pytest.approx(losses["tp1dp2"][3], rel=1e-5)
    _run(root / "shards", run, "dp1")  # and its checkpoint of step 3 goes on on one rank
    assert sorted(_losses(run)) == [3, 4]
    assert _losses(run)[4] == pytest.approx(losses["dp1"][4], rel=1e-5)

"""The training loop on two gloo processes (DP=2, ZeRO-1): loss goes down on a small corpus, and a
run stopped after a checkpoint and started again gives bit-identical losses to an uninterrupted one."""

import torch.multiprocessing

from loong_dist.config import load_config
from loong_dist.io.storage import Storage
from loong_dist.parallel.process_groups import launch_local
from tests.data.test_shards_and_loader import make_samples, write_shards


def _cfg(shards, out, steps):
    return load_config(None, [f"train.shards={shards}", f"run.out_dir={out}", "model.size=tiny",
                              "model.max_seq_len=512", "parallel.precision=fp32", "parallel.zero_stage=1",
                              "train.token_budget=700", "train.save_every=3", "optim.lr=1e-2",
                              "optim.warmup_steps=2", f"optim.steps={steps}", "optim.grad_accum_steps=2",
                              "train.loader_workers=2", "run.log_every=100"])


def _worker(shards, tmp, results):
    import torch.distributed as dist

    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.train.trainer import Trainer

    groups = init_parallel(1, "gloo")
    try:
        straight = [s.loss for s in Trainer(_cfg(shards, f"{tmp}/a", 8), groups).fit()]
        first = Trainer(_cfg(shards, f"{tmp}/b", 8), groups)
        first.fit(steps=3)  # "killed" after the step-3 checkpoint
        second = Trainer(_cfg(shards, f"{tmp}/b", 8), groups)
        assert second.resume() and second.step == 3
        resumed = [s.loss for s in second.fit()]
        if dist.get_rank() == 0:
            results.put((straight, resumed))
    finally:
        destroy_parallel()


def test_trainer_learns_and_resumes_exactly(tmp_path):
    shards = str(tmp_path / "shards")
    write_shards(Storage(), shards, make_samples(48))
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    launch_local(_worker, 2, shards, str(tmp_path), results)
    straight, resumed = results.get()
    assert len(straight) == 8 and resumed == straight[3:]  # bit-identical after the restart
    assert straight[-1] < straight[0] - 0.3  # it learns (random ids: from ~ln(vocab) downwards)
    assert (tmp_path / "a" / "metrics.jsonl").exists()

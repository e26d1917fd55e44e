"""Gradient accumulation with data parallelism: the step's gradient is that of the loss over the
whole global batch (every micro-batch on every rank), in both loss modes, even when one step
holds an image micro-batch and a clip micro-batch. Compared with one process that computes the
weighted loss of all the step's samples at once, written out here from the loss functions."""

import pytest
import torch

from loong_dist.config import load_config
from loong_dist.io.storage import Storage
from loong_dist.parallel.process_groups import launch_local
from tests.data.test_shards_and_loader import make_samples, write_shards

def _cfg(shards, out, mode):
    return load_config(None, [f"train.shards={shards}", f"run.out_dir={out}", "model.size=tiny",
                              "model.max_seq_len=512", "parallel.precision=fp32", "parallel.zero_stage=0",
                              "train.token_budget=400", "train.save_every=0", "optim.lr=1e-2", "optim.warmup_steps=0",
                              "optim.steps=1", "optim.grad_accum_steps=2", "train.loader_workers=1", "run.seed=1",
                              f"loss.mode={mode}", "loss.boundaries=[1,3]", "loss.weights=[2.0,1.0,0.5]"])


def _worker(shards, out, mode, results):
    import torch.distributed as dist

    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.train.trainer import Trainer

    groups = init_parallel(1, "gloo")
    try:
        trainer = Trainer(_cfg(shards, out, mode), groups)
        seen, grads = [], {}
        fetch, step = trainer.loader.next_step, trainer.engine.step

        def recording_next():
            micro = fetch()
            seen.extend({k: v.clone() for k, v in batch.items()} for batch in micro)
            return micro

        def recording_step():  # reduces, then updates: the reduced gradients are read when the optimizer steps
            opt_step = trainer.engine.optimizer.step

            def reading_step(*args, **kwargs):
                grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()})
                return opt_step(*args, **kwargs)

            trainer.engine.optimizer.step = reading_step
            return step()

        trainer.loader.next_step = recording_next
        trainer.engine.step = recording_step
        stats = trainer.train_step()
        everyone = [None] * groups.dp_size
        dist.all_gather_object(everyone, seen)
        if groups.dp_rank == 0:  # a file: a pipe would block on this much, and shared memory leaves with the process
            torch.save((stats.loss, grads, [b for rank in everyone for b in rank], trainer.layout.padded_vocab_size),
                       results)
    finally:
        destroy_parallel()


def _reference(batches, vocab, mode):
    """One process, all of the step's micro-batches: the global weighted loss and its gradient."""
    from loong_dist.models.ar.model import Transformer
    from loong_dist.models.losses import combine, frame_groups, group_counts, group_sums

    cfg = _cfg("x", "x", mode)
    torch.manual_seed(cfg.run.seed)
    model = Transformer(cfg.model, vocab)
    boundaries, weights = ([1, 3], [2.0, 1.0, 0.5]) if mode == "frame_groups" else ([], [1.0])
    per_token = [model(b["tokens"], b["targets"]) for b in batches]
    group = [frame_groups(b["frame"], boundaries) for b in batches]
    counts = sum(group_counts(g, len(weights)) for g in group)
    loss = sum(combine(group_sums(t, g, len(weights)), counts, weights) for t, g in zip(per_token, group))
    # what the trainer did before: the mean over the accumulation steps of per-micro-batch means
    # (with the counts of one micro-step, summed over the ranks)
    n = len(batches) // 2
    old = sum(combine(group_sums(t, g, len(weights)), group_counts(g, len(weights)) + group_counts(g2, len(weights)),
                      weights) for t, g, g2 in zip(per_token, group, group[n:] + group[:n])) / 2
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    old_grads = torch.autograd.grad(old, params)
    names = [k for k, _ in model.named_parameters()]
    return float(loss.detach()), dict(zip(names, grads)), dict(zip(names, old_grads))


@pytest.mark.parametrize("mode", ["frame_groups", "token_mean"])
def test_accumulated_step_is_the_global_batch_gradient(tmp_path, mode):
    shards = str(tmp_path / "shards")
    write_shards(Storage(), shards, make_samples(60))
    results = str(tmp_path / "results.pt")
    launch_local(_worker, 2, shards, str(tmp_path / "run"), mode, results)
    loss, grads, batches, vocab = torch.load(results)
    frames = {int(b["frame"].max()) for b in batches}
    assert len(frames) > 1, "the step should mix buckets"
    ref_loss, ref_grads, old_grads = _reference(batches, vocab, mode)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-8, msg=lambda m: f"{name}: {m}")
    # the weighting this replaced gives another gradient: the image micro-batch counts as much as
    # the clip one, whatever their token counts
    head = "lm_head.weight"
    assert (old_grads[head] - ref_grads[head]).norm() > 1e-3 * ref_grads[head].norm()  # 100x the match tolerance

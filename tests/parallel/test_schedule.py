"""Learning-rate schedules: warmup-stable-decay against its definition written out here, through a
DeepSpeed engine, across a checkpoint, and extended by a resume before its decay."""

import math

import pytest
import torch

from loong_dist.config import load_config
from loong_dist.parallel.engine import wsd_factor


def _expected(step, warmup, steps, decay, floor):
    """The schedule by hand: linear warm-up to the peak, the peak, a half cosine down to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    if step < steps - decay:
        return 1.0
    return floor + (1 - floor) * (1 + math.cos(math.pi * (step - (steps - decay)) / decay)) / 2


def test_wsd_factor_by_hand():
    o = load_config(None, ["optim.warmup_steps=4", "optim.steps=20", "optim.decay_steps=5",
                           "optim.min_lr_ratio=0.1"]).optim
    got = [wsd_factor(i, o) for i in range(22)]
    assert got == pytest.approx([_expected(min(i, 20), 4, 20, 5, 0.1) for i in range(22)])
    assert got[3] == 1.0 and got[15] == 1.0 and got[20] == pytest.approx(0.1) and got[21] == pytest.approx(0.1)


def _engine(groups, steps, decay):
    from loong_dist.parallel.engine import build_engine, build_model

    cfg = load_config(None, ["parallel.zero_stage=0", "parallel.precision=fp32", "model.size=tiny",
                             "model.max_seq_len=32", "optim.lr=1e-2", "optim.warmup_steps=2",
                             f"optim.steps={steps}", f"optim.decay_steps={decay}", "optim.min_lr_ratio=0.1"])
    torch.manual_seed(0)
    return build_engine(build_model(cfg.model, 128, groups, cfg.parallel), cfg, groups)


def _train(engine, n):
    lrs = []
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        tokens = torch.randint(0, 128, (2, 16), generator=g)
        lrs.append(engine.get_lr()[0])
        engine.backward(engine(tokens, tokens).mean())
        engine.step()
    return lrs


def _wsd_worker(ckpt: str):
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel

    groups = init_parallel(tp_size=1, backend="gloo")
    try:
        engine = _engine(groups, steps=12, decay=4)
        lrs = _train(engine, 6)
        assert lrs == pytest.approx([1e-2 * _expected(i, 2, 12, 4, 0.1) for i in range(6)])
        engine.save_checkpoint(ckpt, tag="s6")
        # The run resumed with twice the steps while still at its peak: its past is unchanged, the
        # decay moves to the new end.
        longer = _engine(groups, steps=24, decay=4)
        longer.load_checkpoint(ckpt, tag="s6")
        lrs = _train(longer, 18)
        assert lrs == pytest.approx([1e-2 * _expected(i, 2, 24, 4, 0.1) for i in range(6, 24)])
    finally:
        destroy_parallel()


def test_engine_follows_wsd_and_a_resume_extends_it(tmp_path):
    from loong_dist.parallel.process_groups import launch_local
    launch_local(_wsd_worker, 1, str(tmp_path))

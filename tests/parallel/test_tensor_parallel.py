"""TP=2 (megatron-core layers, two gloo processes) against TP=1 (plain torch) on the same batch,
with and without code level embeddings (whose head vectors each rank reaches through its own
vocabulary block only, so their gradient is summed over the group).

Tolerance: losses to 1e-6 relative, gradients to 1e-5 relative / 1e-7 absolute in float32: the
only differences are the order of the sums that the row-parallel all-reduce splits in two.
"""

import pytest
import torch

from loong_dist.config import ModelConfig
from loong_dist.models.ar.layout import IGNORE
from loong_dist.models.ar.model import Transformer
from loong_dist.parallel.process_groups import launch_local

VOCAB = 384


def _batch():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (2, 33), generator=g)
    targets = torch.randint(0, VOCAB, (2, 33), generator=g)
    targets[:, :5] = IGNORE  # text positions take no loss
    return tokens, targets


def _code_levels() -> torch.Tensor:
    """A level table as VocabLayout.code_levels writes one: no level for the first 40 ids (text,
    specials), then three FSQ dimensions of 4, 5 and 3 levels (entries 1-4, 5-9, 10-12)."""
    g = torch.Generator().manual_seed(2)
    table = torch.stack([torch.randint(1, 5, (VOCAB,), generator=g), torch.randint(5, 10, (VOCAB,), generator=g),
                         torch.randint(10, 13, (VOCAB,), generator=g)], dim=1)
    table[:40] = 0
    return table


def _reference(cfg: ModelConfig) -> Transformer:
    """The TP=1 model, identical on both ranks; trained-looking (non-zero) code level vectors."""
    torch.manual_seed(0)
    model = Transformer(cfg, VOCAB, code_levels=_code_levels() if cfg.code_level_embeddings else None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("level_vectors"):
                p.normal_(0, 0.05)
    return model


def _tp_worker(code_levels: bool):
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.parallel.tensor_parallel import gather_full, load_sharded, megatron_spec

    groups = init_parallel(tp_size=2, backend="gloo")
    try:
        assert (groups.tp_size, groups.dp_size) == (2, 1)
        cfg = ModelConfig(size="tiny", max_seq_len=64, code_level_embeddings=code_levels)
        reference = _reference(cfg)
        tokens, targets = _batch()
        ref_loss = reference(tokens, targets).sum() / (targets != IGNORE).sum()
        ref_loss.backward()

        model = Transformer(cfg, VOCAB, megatron_spec(groups), _code_levels() if code_levels else None)
        n_local = sum(p.numel() for p in model.parameters())
        n_full = sum(p.numel() for p in reference.parameters())
        assert n_local < 0.6 * n_full, "each rank should hold about half the weights"
        load_sharded(model, reference.state_dict(), groups)
        loss = model(tokens, targets).sum() / (targets != IGNORE).sum()
        loss.backward()

        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
        grads = gather_full(model, groups, grads=True)
        assert grads.keys() == dict(reference.named_parameters()).keys()
        for name, p in reference.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")
        if code_levels:
            assert reference.lm_head.level_vectors.grad.abs().sum() > 0
    finally:
        destroy_parallel()


@pytest.mark.parametrize("code_levels", [False, True], ids=["plain", "code_levels"])
def test_tp2_matches_tp1_loss_and_gradients(code_levels):
    launch_local(_tp_worker, 2, code_levels)


def _tp_engine_worker(zero_stage: int, code_levels: bool):
    """TP=2 inside DeepSpeed (parallel_state as mpu): its loss curve, clipping active, matches a
    single-device model trained by torch AdamW with the engine's learning rates. At ZeRO-3 the
    weights live partitioned and each layer's are gathered for its own forward only: the code level
    vectors are their layer's own parameters, read there."""
    from loong_dist.config import load_config
    from loong_dist.parallel.engine import build_engine, build_model, param_groups
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.parallel.tensor_parallel import load_sharded

    groups = init_parallel(tp_size=2, backend="gloo")
    try:
        cfg = load_config(None, ["model.size=tiny", "model.max_seq_len=64", "parallel.tp=2",
                                 f"parallel.zero_stage={zero_stage}", f"model.code_level_embeddings={code_levels}",
                                 "parallel.precision=fp32", "optim.lr=1e-2", "optim.warmup_steps=1",
                                 "optim.grad_clip=0.3", "optim.micro_batch_size=2", "optim.steps=10"])
        reference = _reference(cfg.model)
        model = build_model(cfg.model, VOCAB, groups, cfg.parallel, _code_levels() if code_levels else None)
        load_sharded(model, reference.state_dict(), groups)
        engine = build_engine(model, cfg, groups)
        opt = torch.optim.AdamW(param_groups(reference, cfg.optim.weight_decay), lr=1.0, betas=cfg.optim.betas,
                                eps=cfg.optim.eps)
        tokens, targets = _batch()
        clipped = 0
        for _ in range(5):
            lr = engine.get_lr()[0]
            loss = engine(tokens, targets).sum() / (targets != IGNORE).sum()
            engine.backward(loss)
            engine.step()
            for group in opt.param_groups:
                group["lr"] = lr
            ref = reference(tokens, targets).sum() / (targets != IGNORE).sum()
            ref.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(reference.parameters(), cfg.optim.grad_clip))
            clipped += norm > cfg.optim.grad_clip
            # The norm DeepSpeed clips by is over the full model: shards summed across TP ranks,
            # replicated weights (RMSNorm gains) counted once - what the mpu is for.
            clipped_by = float(engine.get_global_grad_norm())
            assert abs(clipped_by - norm) <= 1e-5 * norm, (clipped_by, norm)
            opt.step()
            opt.zero_grad()
            torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-5, atol=0)
        assert clipped >= 3, "the test should exercise gradient clipping"
        assert ref.item() < 5.5  # it learned (from ~ln 384 = 5.95)
    finally:
        destroy_parallel()


@pytest.mark.parametrize("zero_stage,code_levels", [(1, False), (3, True)], ids=["zero1", "zero3_code_levels"])
def test_tp2_under_deepspeed_matches_single_device_training(zero_stage, code_levels):
    launch_local(_tp_engine_worker, 2, zero_stage, code_levels)

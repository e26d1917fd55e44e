"""The re-weighted loss against hand-computed values, padding, a data-parallel split, and the
tensor-parallel cross-entropy (TP=2 on two gloo processes against TP=1)."""

import numpy as np
import pytest
import torch

from loong_dist.config import ModelConfig
from loong_dist.models.ar.layout import IGNORE, VocabLayout
from loong_dist.models.ar.model import Transformer
from loong_dist.models.losses import frame_groups, frame_sums, group_counts, group_sums, weighted_loss
from loong_dist.parallel.process_groups import launch_local

# Two rows: an image (1 latent frame of 2 tokens, then <eov>) padded to the length of a
# 3-latent-frame clip (1 token per frame, then <eov>). -1: text / padding.
FRAME = torch.tensor([[-1, 0, 0, 1, -1, -1],
                      [-1, 0, 1, 2, 3, -1]])
LOSS = torch.tensor([[0.0, 4.0, 2.0, 6.0, 0.0, 0.0],
                     [0.0, 3.0, 1.0, 5.0, 7.0, 0.0]])


def test_groups_fold_eov_into_the_last_frame():
    g = frame_groups(FRAME, (1, 2))
    # image: frame 0 and its <eov> -> group 0; clip: f0 -> 0, f1 -> 1, f2 and its <eov> (3) -> 2
    assert g.tolist() == [[-1, 0, 0, 0, -1, -1], [-1, 0, 1, 2, 2, -1]]
    assert group_counts(g, 3).tolist() == [4.0, 1.0, 2.0]
    assert group_sums(LOSS, g, 3).tolist() == [4 + 2 + 6 + 3, 1.0, 5 + 7.0]


def test_hand_computed_weighted_loss():
    # group means: first frame (4+2+6+3)/4 = 3.75, rest of short 1/1 = 1, rest of long 12/2 = 6
    got = weighted_loss(LOSS, FRAME, (2.0, 1.0, 0.5), (1, 2))
    assert got.item() == pytest.approx((2 * 3.75 + 1 * 1 + 0.5 * 6) / 3.5)
    # a group with no tokens drops out of the normaliser: only the image row
    got = weighted_loss(LOSS[:1], FRAME[:1], (2.0, 1.0, 0.5), (1, 2))
    assert got.item() == pytest.approx(4.0)


def test_no_boundaries_is_the_plain_token_mean():
    valid = FRAME >= 0
    assert weighted_loss(LOSS, FRAME).item() == pytest.approx((LOSS.sum() / valid.sum()).item())
    assert weighted_loss(LOSS, FRAME, (3.0,), ()).item() == pytest.approx(28 / 7)


def test_gradient_is_weight_over_group_size():
    x = LOSS.clone().requires_grad_()
    weighted_loss(x, FRAME, (2.0, 1.0, 0.5), (1, 2)).backward()
    want = torch.tensor([[0, 2 / 4, 2 / 4, 2 / 4, 0, 0],
                         [0, 2 / 4, 1 / 1, 0.5 / 2, 0.5 / 2, 0]]) / 3.5
    torch.testing.assert_close(x.grad, want)


def test_padding_and_row_order_do_not_matter():
    # the same targets as one unpadded row each, in the other order, more padding on the right
    frame = torch.full((2, 9), -1)
    loss = torch.zeros(2, 9)
    frame[0, :5], loss[0, :5] = FRAME[1, :5], LOSS[1, :5]
    frame[1, 2:5], loss[1, 2:5] = FRAME[0, 1:4], LOSS[0, 1:4]
    a = weighted_loss(LOSS, FRAME, (2.0, 1.0, 0.5), (1, 2))
    b = weighted_loss(loss, frame, (2.0, 1.0, 0.5), (1, 2))
    assert a.item() == pytest.approx(b.item())


def test_data_parallel_shares_sum_to_the_global_loss():
    weights, bounds = (2.0, 1.0, 0.5), (1, 2)
    whole = weighted_loss(LOSS, FRAME, weights, bounds)
    counts = group_counts(frame_groups(FRAME, bounds), 3)  # what the all-reduce over ranks gives
    shares = [weighted_loss(LOSS[r:r + 1], FRAME[r:r + 1], weights, bounds, counts) for r in range(2)]
    assert (shares[0] + shares[1]).item() == pytest.approx(whole.item())


def test_frame_sums_per_latent_frame():
    sums, counts = frame_sums(LOSS, FRAME, 4)
    # frame 0: the image's 2 tokens + its <eov>, and the clip's first token
    assert counts.tolist() == [4.0, 1.0, 2.0, 0.0]
    assert sums.tolist() == [4 + 2 + 6 + 3.0, 1.0, 5 + 7.0, 0.0]


def test_built_sequences_weight_first_frame():
    layout = VocabLayout(text_vocab_size=300, codebook_size=16)
    b = layout.build([2, 10, 11], np.zeros((3, 2, 2), np.int64))  # 3 latent frames of 4 tokens
    frame = torch.from_numpy(b["frame"])[None]
    assert (frame_groups(frame, (1,)) >= 0).sum() == 13  # 12 codes + <eov>
    loss = torch.where(frame == 0, 1.0, 0.0)  # only first-frame tokens cost anything
    assert weighted_loss(loss, frame).item() == pytest.approx(4 / 13)
    assert weighted_loss(loss, frame, (1.0, 1.0), (1,)).item() == pytest.approx(0.5)


# -- tensor parallel ----------------------------------------------------------------------------

VOCAB = 384
WEIGHTS, BOUNDS = (2.0, 1.0, 0.5), (1, 3)


def _batch():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, VOCAB, (2, 40), generator=g)
    targets = torch.randint(0, VOCAB, (2, 40), generator=g)
    frame = torch.full((2, 40), -1)
    frame[0, 4:21] = torch.arange(17) // 4  # 4 frames of 4 tokens + <eov> (frame 4)
    frame[1, 6:38] = torch.arange(32) // 4  # 8 frames ...
    frame[1, 37] = 8  # ... and its <eov>
    targets[frame < 0] = IGNORE
    return tokens, targets, frame


def _tp_worker():
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.parallel.tensor_parallel import gather_full, load_sharded, megatron_spec

    groups = init_parallel(tp_size=2, backend="gloo")
    try:
        cfg = ModelConfig(size="tiny", max_seq_len=64)
        torch.manual_seed(0)
        reference = Transformer(cfg, VOCAB)
        tokens, targets, frame = _batch()
        ref = weighted_loss(reference(tokens, targets), frame, WEIGHTS, BOUNDS)
        ref.backward()
        model = Transformer(cfg, VOCAB, megatron_spec(groups))
        load_sharded(model, reference.state_dict(), groups)
        loss = weighted_loss(model(tokens, targets), frame, WEIGHTS, BOUNDS)
        loss.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)
        plain = reference(tokens, targets).sum() / (targets != IGNORE).sum()
        assert abs(ref.item() - plain.item()) > 1e-4, "the weighting should change the loss here"
        grads = gather_full(model, groups, grads=True)
        for name, p in reference.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")
    finally:
        destroy_parallel()


def test_tp2_weighted_loss_matches_tp1():
    launch_local(_tp_worker, 2)

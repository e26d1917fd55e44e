"""KV cache: incremental logits against the full causal forward (the reference), fp32, with 1D
rotary positions and with 3D ones (video tokens placed on a 2x3 latent grid after each row's <bov>).

Tolerance: atol 2e-5, rtol 1e-4 on logits of size ~1 - the cached path sums attention over the
same keys in another order (one query against L keys vs. the full causal matrix)."""

import pytest
import torch

from loong_dist.config import ModelConfig
from loong_dist.models.ar.layout import BOV_ID
from loong_dist.models.ar.model import Transformer

TOL = dict(rtol=1e-4, atol=2e-5)


@pytest.fixture(params=["1d", "3d"])
def model(request):
    torch.manual_seed(0)
    # 4 query heads over 2 kv heads: the cache path runs grouped-query attention too
    return Transformer(ModelConfig(size="tiny", max_seq_len=64, rope=request.param, latent_grid=[2, 3]),
                       vocab_size=384).eval()


def _random_rows(shape, seed, bov_at):
    """Random tokens without <bov>, then one <bov> at index bov_at[i] of row i: 3D positions
    count video tokens from it."""
    tokens = torch.randint(BOV_ID + 1, 384, shape, generator=torch.Generator().manual_seed(seed))
    for row, at in enumerate(bov_at):
        tokens[row, at] = BOV_ID
    return tokens


@torch.no_grad()
def test_token_by_token_equals_full_recompute(model):
    tokens = _random_rows((3, 48), 1, [3, 8, 12])  # <bov> before, at and after the prefill's end
    full = model(tokens)  # (b, s, v)
    cache = model.new_cache(48)
    prefill = 9
    steps = [model(tokens[:, :prefill], cache=cache)]
    for i in range(prefill, 48):
        steps.append(model(tokens[:, i:i + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)
    assert cache.pos == 48


@torch.no_grad()
def test_chunked_prefill_equals_full_recompute(model):
    tokens = _random_rows((2, 40), 2, [5, 9])
    full = model(tokens)
    cache = model.new_cache(40)
    chunks = [model(tokens[:, a:a + 7], cache=cache) for a in range(0, 40, 7)]  # 7,7,...,5 queries
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, **TOL)


@torch.no_grad()
def test_left_padded_rows_equal_each_row_alone(model):
    """Prompts of different lengths in one batch: left padding masked in the cache gives each
    row's own logits (rotary positions are relative)."""
    lengths, new = [5, 11, 8], 12
    rows = [_random_rows((1, n + new), 3 + i, [n - 1])[0] for i, n in enumerate(lengths)]  # prompts end in <bov>
    width = max(lengths)
    prompt = torch.zeros(3, width, dtype=torch.long)
    valid = torch.zeros(3, width, dtype=torch.bool)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        prompt[i, width - n:] = row[:n]
        valid[i, width - n:] = True
    cache = model.new_cache(width + new, valid)
    first = model(prompt, cache=cache)[:, -1]  # (b, v) logits after each prompt
    later = [model(torch.stack([r[n + j] for r, n in zip(rows, lengths)])[:, None], cache=cache)[:, 0]
             for j in range(new - 1)]
    for i, (row, n) in enumerate(zip(rows, lengths)):
        alone = model(row[None])[0]  # (s, v)
        torch.testing.assert_close(first[i], alone[n - 1], **TOL)
        torch.testing.assert_close(torch.stack([x[i] for x in later]), alone[n:n + new - 1], **TOL)


def test_cache_overflow_is_refused(model):
    cache = model.new_cache(4)
    with torch.no_grad(), pytest.raises(ValueError, match="full"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)

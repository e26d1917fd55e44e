"""KV cache under tensor parallelism: TP=2 (megatron-core layers, two gloo processes) decoding
token by token with the cache against TP=1 full recompute. Each rank's cache holds its own kv
heads; its logits are its half of the vocabulary. Tolerance as tests/models/ar/test_kv_cache.py."""

import torch

from loong_dist.config import ModelConfig
from loong_dist.models.ar.model import Transformer
from loong_dist.parallel.process_groups import launch_local

VOCAB = 384


def _worker():
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.parallel.tensor_parallel import load_sharded, megatron_spec

    groups = init_parallel(tp_size=2, backend="gloo")
    try:
        cfg = ModelConfig(size="tiny", max_seq_len=64)
        torch.manual_seed(0)
        reference = Transformer(cfg, VOCAB).eval()
        tokens = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            full = reference(tokens)  # (b, s, v)
            model = Transformer(cfg, VOCAB, megatron_spec(groups)).eval()
            load_sharded(model, reference.state_dict(), groups)
            cache = model.new_cache(30)
            steps = [model(tokens[:, :6], cache=cache)] + [model(tokens[:, i:i + 1], cache=cache) for i in range(6, 30)]
        local = torch.cat(steps, dim=1)  # (b, s, v / 2)
        half = VOCAB // 2
        torch.testing.assert_close(local, full[..., groups.tp_rank * half:(groups.tp_rank + 1) * half],
                                   rtol=1e-4, atol=2e-5)
        assert cache.keys[0].shape[1] == cfg.n_kv_heads // 2  # this rank's kv heads only
    finally:
        destroy_parallel()


def test_tp2_cached_decoding_matches_tp1_full_recompute():
    launch_local(_worker, 2)

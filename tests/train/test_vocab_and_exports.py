"""A run on the codes in use (model.video_codes) and what its exports carry: the top-N codes of
the shards' code counts, the next stage keeping that vocabulary (and adding code level embeddings,
which its export folds away), mid-run exports, the carried text tokenizer and sampling settings; and
the checks before the first step."""

import base64
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.multiprocessing

from loong_dist.config import load_config
from loong_dist.data.shards import ShardIndex
from loong_dist.errors import UserError
from loong_dist.io.storage import Storage
from loong_dist.models.ar.checkpoint import load_model, read_model_meta
from loong_dist.parallel.process_groups import launch_local
from tests.data.test_shards_and_loader import make_samples, write_shards


def _cfg(shards, out, *extra):
    return load_config(None, [f"train.shards={shards}", f"run.out_dir={out}", "model.size=tiny",
                              "model.max_seq_len=512", "parallel.precision=fp32", "parallel.zero_stage=0",
                              "train.token_budget=700", "train.save_every=2", "optim.lr=1e-2", "optim.warmup_steps=0",
                              "optim.steps=4", "train.loader_workers=1", *extra])


def _worker(shards, tmp, results):
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.train.trainer import Trainer

    groups = init_parallel(1, "gloo")
    try:
        first = Trainer(_cfg(shards, f"{tmp}/one", "model.video_codes=50", "train.export_every=2",
                             "generate.top_k=9", "generate.window_latent_frames=3", "optim.decay_steps=2"), groups)
        first.fit()
        second = Trainer(_cfg(shards, f"{tmp}/two", f"train.init_from={tmp}/one", "model.video_codes=0",
                              "model.code_level_embeddings=true"), groups)
        results.put((first.layout.codes, second.layout.codes, second.model.vocab_size))
        second.fit(steps=2)  # (the first step of a run without warm-up moves nothing: DeepSpeed's lr 0)
        # Its code level vectors (zero at the start) have trained; its export is the plain model they fold into.
        tokens = torch.arange(second.layout.video_offset - 2, second.layout.vocab_size).view(1, -1)
        with torch.no_grad():  # to a file: a queue's pipe would fill before the parent reads it
            np.savez(f"{tmp}/live.npz", logits=second.model(tokens).numpy(), tokens=tokens.numpy(),
                     levels_moved=second.model.lm_head.level_vectors.abs().sum().item())
        second.export(second.out / "folded.safetensors")
    finally:
        destroy_parallel()


def test_codes_in_use_exports_and_what_they_carry(tmp_path):
    shards = str(tmp_path / "shards")
    storage = Storage()
    write_shards(storage, shards, make_samples(30))
    text_model = tmp_path / "text.model"
    text_model.write_bytes(b"not really sentencepiece, but bytes the export must carry")
    raw = json.loads((tmp_path / "shards" / "index.json").read_text())  # as data_prep.pretokenize writes it
    raw["meta"].update(fsq_levels=[10, 10, 10], text_tokenizer=str(text_model), tokenizer="tok.safetensors",
                       tokenizer_sha256="ab" * 32, size=64, fps=8.0,
                       text_tokenizer_sha256=hashlib.sha256(text_model.read_bytes()).hexdigest())
    (tmp_path / "shards" / "index.json").write_text(json.dumps(raw))
    results = torch.multiprocessing.get_context("spawn").SimpleQueue()
    launch_local(_worker, 1, shards, str(tmp_path), results)
    first_codes, second_codes, vocab = results.get()

    counts = ShardIndex.load(shards).code_counts()
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))[:50]  # most used, ties to the lower id
    assert first_codes == tuple(sorted(order))
    assert second_codes == first_codes  # the next stage keeps its start's vocabulary
    assert vocab == 384  # 300 text + 50 codes, padded to 128

    # Each step's logged learning rate is the one it trained with: the peak, then half a cosine to
    # min_lr_ratio 0.1 over the last two steps (its second: 0.1 + 0.9 * (1 + cos(pi / 2)) / 2 = 0.55).
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-2, 5.5e-3])
    exports = sorted(p.name for p in (tmp_path / "one" / "exports").iterdir())
    assert exports == ["step00000002.safetensors", "step00000004.safetensors"]
    _, layout, extra = read_model_meta(tmp_path / "one" / "model.safetensors")
    assert layout.codes == first_codes and layout.fsq_levels == (10, 10, 10)
    assert base64.b64decode(extra["text_tokenizer_model"]) == text_model.read_bytes()
    assert extra["generate"]["top_k"] == 9 and extra["generate"]["window_latent_frames"] == 3
    assert (extra["size"], extra["fps"], extra["tokenizer_sha256"]) == (64, 8.0, "ab" * 32)

    live = np.load(tmp_path / "live.npz")
    assert live["levels_moved"] > 0
    folded, layout = load_model(tmp_path / "two" / "folded.safetensors")
    assert not folded.cfg.code_level_embeddings and layout.codes == first_codes
    with torch.no_grad():
        np.testing.assert_allclose(folded(torch.from_numpy(live["tokens"])).numpy(), live["logits"],
                                   rtol=1e-5, atol=1e-5)


def _check_worker(shards, out, extra):
    from loong_dist.parallel.process_groups import destroy_parallel, init_parallel
    from loong_dist.train.trainer import Trainer

    groups = init_parallel(1, "gloo")
    try:
        Trainer(_cfg(shards, out, *extra), groups)
    finally:
        destroy_parallel()


def test_a_bucket_too_long_for_the_model_fails_before_the_first_step(tmp_path):
    shards = str(tmp_path / "shards")
    write_shards(Storage(), shards, make_samples(12))
    longest = max(len(s.text) + s.video.size + 1 for s in make_samples(12) if s.video.shape[0] == 5)
    with pytest.raises(UserError, match=f"model.max_seq_len=200: the 5-latent-frame bucket holds sequences of up "
                                          f"to {longest} tokens"):
        launch_local(_check_worker, 1, shards, str(tmp_path / "a"), ("model.max_seq_len=200",))

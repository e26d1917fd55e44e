"""jobs.export_model: a trained model re-exported for shipping keeps what it carries, holds its
weights rounded to bf16, and records the sampling settings it is given (to a folder or to S3)."""

import tempfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from jobs import export_model
from loong_dist.config import ModelConfig
from loong_dist.errors import UserError
from loong_dist.models.ar.checkpoint import load_model, read_model_meta, save_model
from loong_dist.models.ar.layout import VocabLayout
from loong_dist.models.ar.model import Transformer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    cfg = ModelConfig(size="tiny", max_seq_len=64)
    layout = VocabLayout(text_vocab_size=300, codebook_size=125)
    torch.manual_seed(0)
    extra = {"step": 7, "size": 32, "fps": 8.0, "tokenizer_sha256": "ab" * 32, "text_tokenizer_model": "c2VudGVuY2U=",
             "generate": {"temperature": 1.0, "top_k": 100, "top_p": 1.0, "cfg_scale": 1.0, "window_latent_frames": 5,
                          "overlap_latent_frames": 2, "reencode": True, "first_frame_candidates": 1}}
    save_model(Transformer(cfg, layout.padded_vocab_size).state_dict(), cfg, layout, d / "model.safetensors", extra)
    return d / "model.safetensors", extra


def _tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_bf16_weights_and_new_sampling_settings_keep_the_rest(trained, tmp_path):
    src, extra = trained
    dst = tmp_path / "ship" / "model.safetensors"
    assert export_model.main(["--from", str(src), "--to", str(dst), "generate.top_k=20", "generate.cfg_scale=3"]) == 0
    got, want = _tensors(dst), _tensors(src)
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], v.to(torch.bfloat16)), k
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    _, _, meta = read_model_meta(dst)
    assert meta["generate"] == dict(extra["generate"], top_k=20, cfg_scale=3.0)
    assert {k: meta[k] for k in extra if k != "generate"} == {k: v for k, v in extra.items() if k != "generate"}
    assert meta["weights_dtype"] == "bf16"
    model, _ = load_model(dst)  # what jobs.generate loads: fp32 modules from the bf16 file
    assert next(model.parameters()).dtype == torch.float32


def test_to_s3_and_bad_arguments(trained, s3_bucket, s3_storage):
    src, extra = trained
    uri = f"{s3_bucket}/ship/model.safetensors"
    assert export_model.main(["--from", str(src), "--to", uri, "--dtype", "fp32"]) == 0
    with tempfile.TemporaryDirectory() as tmp:
        local = s3_storage.download_file(uri, Path(tmp) / "m.safetensors")
        assert read_model_meta(local)[2]["generate"] == extra["generate"]  # the file's own, unchanged
        assert all(torch.equal(a, _tensors(src)[k]) for k, a in _tensors(local).items())
    with pytest.raises(UserError, match="--to .*model.bin: expected a .safetensors"):
        export_model.main(["--from", str(src), "--to", "model.bin"])
    with pytest.raises(UserError, match="generate.top_kk"):
        export_model.main(["--from", str(src), "--to", str(Path(tempfile.gettempdir()) / "x.safetensors"),
                           "generate.top_kk=3"])
    with pytest.raises(UserError, match="nope.safetensors: model file not found"):
        export_model.main(["--from", "nope.safetensors", "--to", "x.safetensors"])


def test_average_is_the_mean_of_the_runs_weights_and_refuses_another_model(trained, tmp_path):
    src, extra = trained
    cfg, layout, _ = read_model_meta(src)
    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    save_model(Transformer(cfg, layout.padded_vocab_size).state_dict(), cfg, layout, other, dict(extra, step=9))
    dst = tmp_path / "soup.safetensors"
    assert export_model.main(["--from", str(src), "--average", str(other), "--to", str(dst), "--dtype", "fp32"]) == 0
    a, b, got = _tensors(src), _tensors(other), _tensors(dst)
    assert set(got) == set(a)
    for k in a:
        want = (a[k].numpy().astype("float64") + b[k].numpy().astype("float64")) / 2
        assert got[k].dtype == a[k].dtype and torch.equal(got[k], torch.from_numpy(want).to(a[k].dtype)), k
    assert any(not torch.equal(a[k], b[k]) for k in a)  # (the two runs differ)
    meta = read_model_meta(dst)[2]
    assert meta["averaged_with"] == [str(other)] and meta["step"] == extra["step"]  # the rest is --from's
    wide = ModelConfig(size="tiny", max_seq_len=128)
    wide_model = Transformer(wide, layout.padded_vocab_size).state_dict()
    save_model(wide_model, wide, layout, tmp_path / "w.safetensors", extra)
    with pytest.raises(UserError, match="--average .*w.safetensors: its model config"):
        export_model.main(["--from", str(src), "--average", str(tmp_path / "w.safetensors"), "--to", str(dst)])

"""Bad input everywhere: each case runs a real job as a subprocess and must end with exactly one
line on stderr that starts with `error:` and names what is wrong, an exit code that is not 0, and
no traceback (log lines and library warnings may precede the error line).

One table row per case: (id, module, arguments built from the fixture files, text the line must
hold). The files are real: manifests with broken lines, YAML configs with unknown keys or wrong
types, tokenizer and model files of other vocabularies or architectures, shards whose index or
members are wrong.
"""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from loong_dist.config import ModelConfig, TokenizerConfig
from loong_dist.data.shards import Sample, ShardWriter, write_index
from loong_dist.data.text_tokenizer import TextTokenizer
from loong_dist.io.storage import Storage
from loong_dist.models.ar.checkpoint import save_model
from loong_dist.models.ar.layout import VocabLayout
from loong_dist.models.ar.model import Transformer
from loong_dist.models.tokenizer import VideoTokenizer, save_tokenizer
from tests.data.test_shards_and_loader import CODEBOOK, TEXT_VOCAB, make_samples, write_shards

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["model.size=tiny", "model.max_seq_len=512", "parallel.precision=fp32", "parallel.zero_stage=1",
         "train.token_budget=700", "optim.steps=2", "optim.warmup_steps=1", "train.loader_workers=1"]
GEN = ["data.size=32", "data.fps=8", "generate.window_latent_frames=3", "generate.overlap_latent_frames=1",
       "generate.device=cpu", "--seconds", "1"]
PRETOK = ["--frames", "1,17", "--fps", "8", "--size", "32", "pretokenize.local_cpus=2", "pretokenize.progress=false"]


def _shards_with(folder: Path, edit) -> str:
    """Good shards from the project's writer, then `edit(folder)` breaks them."""
    write_shards(Storage(), str(folder), make_samples(12), per_shard=6)
    edit(folder)
    return str(folder)


def _rewrite_index(folder: Path, change) -> None:
    index = json.loads((folder / "index.json").read_text())
    change(index)
    (folder / "index.json").write_text(json.dumps(index))


def _float_video_shard(folder: Path) -> None:
    """A shard whose video.npy members hold float32 (a writer bug or a foreign tool)."""
    summaries = []
    for i in range(2):
        with ShardWriter(Storage(), str(folder / f"shard-{i:06d}.tar"), CODEBOOK) as w:
            for s in make_samples(12)[6 * i:6 * i + 6]:
                w.add(s)
        summaries.append(w.summary)
    write_index(Storage(), str(folder), summaries, {"codebook_size": CODEBOOK, "text_vocab_size": TEXT_VOCAB})
    # Replace every video.npy member, in place, with a float32 array of the same byte size.
    for tar_path in folder.glob("*.tar"):
        data = bytearray(tar_path.read_bytes())
        with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".video.npy"):
                    arr = np.load(io.BytesIO(data[m.offset_data:m.offset_data + m.size]))
                    buf = io.BytesIO()
                    np.save(buf, arr.astype(np.float16))  # uint16 -> float16: same bytes per id
                    assert len(buf.getvalue()) == m.size
                    data[m.offset_data:m.offset_data + m.size] = buf.getvalue()
        tar_path.write_bytes(bytes(data))


def _out_of_range_shard(folder: Path) -> None:
    """Video ids at and beyond the codebook size that the index declares (1000)."""
    samples = [Sample(s.key, s.video + CODEBOOK, s.text, s.caption, s.meta) for s in make_samples(12)]
    with ShardWriter(Storage(), str(folder / "shard-000000.tar"), 2 * CODEBOOK) as w:
        for s in samples:
            w.add(s)
    write_index(Storage(), str(folder), [w.summary], {"codebook_size": CODEBOOK, "text_vocab_size": TEXT_VOCAB})


@pytest.fixture(scope="module")
def files(tmp_path_factory, pretok_assets):
    d = tmp_path_factory.mktemp("bad-input")
    a = pretok_assets
    # Manifests
    (d / "blank.jsonl").write_text("\n\n")
    (d / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\x80\x81\n")
    good = (a / "syn" / "manifest.jsonl").read_text().splitlines()[0]
    (d / "badline.jsonl").write_text(good.replace(json.loads(good)["video"], str(a / "syn" / json.loads(good)["video"]))
                                     + "\n" + '{"video": "x.mp4"}\n')
    # Configs
    (d / "unknown_key.yaml").write_text("model:\n  size: tiny\n  dimm: 64\n")
    (d / "wrong_type.yaml").write_text("optim:\n  lr: fast\n")
    (d / "not_yaml.yaml").write_text("model: [size: tiny\n  dim: 3\n")
    (d / "list_root.yaml").write_text("- 1\n- 2\n")
    # Tokenizers and models
    text = TextTokenizer.load(str(a / "text.model"))
    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig(channels=8, num_res_blocks=0, decoder_res_blocks=0, fsq_levels=[5, 5, 5]))
    save_tokenizer(tok, d / "tok.safetensors")
    # "Another resolution": the same weights declared with 16x spatial compression; and another architecture.
    meta = json.loads(_safetensors_meta(d / "tok.safetensors")["config"])
    save_file(load_file(d / "tok.safetensors"), str(d / "tok_16x.safetensors"),
              metadata={"format": _safetensors_meta(d / "tok.safetensors")["format"],
                        "config": json.dumps(dict(meta, spatial_downsample=16))})
    save_file(load_file(d / "tok.safetensors"), str(d / "tok_4levels.safetensors"),
              metadata={"format": _safetensors_meta(d / "tok.safetensors")["format"],
                        "config": json.dumps(dict(meta, channel_mult=[1, 1, 2, 4]))})
    cfg = ModelConfig(size="tiny", max_seq_len=128)
    for name, codebook, vocab in (("model", tok.codebook_size, text.vocab_size),
                                  ("wrong_codebook", 64, text.vocab_size), ("wrong_text", tok.codebook_size, 200)):
        layout = VocabLayout(text_vocab_size=vocab, codebook_size=codebook)
        save_model(Transformer(cfg, layout.padded_vocab_size).state_dict(), cfg, layout, d / f"{name}.safetensors")
    layout = VocabLayout(text_vocab_size=text.vocab_size, codebook_size=tok.codebook_size)
    save_model(Transformer(cfg, layout.padded_vocab_size).state_dict(), cfg, layout, d / "model_128px.safetensors",
               {"size": 128, "fps": 8.0})  # what the trainer records from the shards it trained on
    (d / "empty_prompts.txt").write_text("\n  \n")
    # Shards
    _shards_with(d / "no_ranges", lambda f: _rewrite_index(f, lambda i: i["shards"][0]["samples"][0].pop("ranges")))
    _shards_with(d / "bad_json", lambda f: (f / "index.json").write_text('{"version": 1, "shards": ['))
    _shards_with(d / "old_version", lambda f: _rewrite_index(f, lambda i: i.update(version=7)))
    _shards_with(d / "no_video_member", lambda f: _rewrite_index(
        f, lambda i: [s["ranges"].pop("video.npy") for sh in i["shards"] for s in sh["samples"]]))
    (d / "float_video").mkdir()
    _float_video_shard(d / "float_video")
    (d / "out_of_range").mkdir()
    _out_of_range_shard(d / "out_of_range")
    return d


def _safetensors_meta(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def _pretok(a, d, manifest, *extra, tokenizer=None):
    return ["--manifest", str(manifest), "--tokenizer", str(tokenizer or a / "tok.safetensors"),
            "--text-tokenizer", str(a / "text.model"), "--out", str(d / "never"), *PRETOK, *extra]


def _gen(a, d, *extra, model="model", tok="tok", text=None):
    return ["--checkpoint", str(d / f"{model}.safetensors"), "--tokenizer", str(d / f"{tok}.safetensors"),
            "--text-tokenizer", str(text or a / "text.model"), "--out", str(d / "never.mp4"), *GEN, *extra]


def _train(d, shards, *extra):
    return ["--shards", str(shards), "--out", str(d / "never-run"), "--nproc", "1", *TRAIN, *extra]


# (id, module, args(a: assets, d: files), needle)
CASES = [
    # Manifests
    ("manifest missing", "data_prep.pretokenize", lambda a, d: _pretok(a, d, d / "nope.jsonl"),
     "nope.jsonl: no such file"),
    ("manifest blank", "data_prep.pretokenize", lambda a, d: _pretok(a, d, d / "blank.jsonl"),
     "manifest has no entries"),
    ("manifest binary", "data_prep.pretokenize", lambda a, d: _pretok(a, d, d / "binary.jsonl"), "not UTF-8"),
    ("manifest bad line (strict job)", "jobs.train_tokenizer",
     lambda a, d: ["--manifest", str(d / "badline.jsonl"), "--out", str(d / "never-tok")], "badline.jsonl:2"),
    # Configs
    ("unknown key", "jobs.train", lambda a, d: _train(d, d / "no_ranges", "model.dimm=64"), "model.dimm"),
    ("unknown section", "jobs.train", lambda a, d: _train(d, d / "no_ranges", "modle.dim=64"), "modle"),
    ("wrong type", "jobs.train", lambda a, d: _train(d, d / "no_ranges", "optim.lr=fast"), "optim.lr"),
    ("bad value", "jobs.train", lambda a, d: _train(d, d / "no_ranges", "optim.steps=-3"), "optim.steps"),
    ("not key=value", "jobs.train", lambda a, d: _train(d, d / "no_ranges", "optim.steps"), "optim.steps"),
    ("yaml unknown key", "jobs.train", lambda a, d: ["--config", str(d / "unknown_key.yaml"), *_train(d, d / "x")],
     "dimm"),
    ("yaml wrong type", "jobs.train", lambda a, d: ["--config", str(d / "wrong_type.yaml"), *_train(d, d / "x")],
     "optim.lr"),
    ("yaml syntax", "jobs.train", lambda a, d: ["--config", str(d / "not_yaml.yaml"), *_train(d, d / "x")],
     "not_yaml.yaml"),
    ("yaml not a mapping", "jobs.train", lambda a, d: ["--config", str(d / "list_root.yaml"), *_train(d, d / "x")],
     "list_root.yaml"),
    ("yaml missing", "jobs.train", lambda a, d: ["--config", str(d / "nope.yaml"), *_train(d, d / "x")], "nope.yaml"),
    ("frames not 1+4k", "data_prep.pretokenize", lambda a, d: _pretok(a, d, d / "blank.jsonl", "data.frames=[1,18]"),
     "data.frames"),
    # Vocabularies, tokenizer and model files
    ("model codebook != tokenizer", "jobs.generate",
     lambda a, d: _gen(a, d, "--prompt", "a red circle", model="wrong_codebook"), "video codes"),
    ("model text vocab != tokenizer", "jobs.generate",
     lambda a, d: _gen(a, d, "--prompt", "a red circle", model="wrong_text"), "text vocabulary"),
    ("model trained at another size", "jobs.generate",
     lambda a, d: _gen(a, d, "--prompt", "a red circle", model="model_128px"), "trained on clips with data.size=128"),
    ("tokenizer for 16x compression", "jobs.generate",
     lambda a, d: _gen(a, d, "--prompt", "a red circle", tok="tok_16x"), "spatial_downsample"),
    ("tokenizer of another architecture", "data_prep.pretokenize",
     lambda a, d: _pretok(a, d, d / "badline.jsonl", tokenizer=d / "tok_4levels.safetensors"), "do not fit"),
    ("tokenizer is a text model", "data_prep.pretokenize",
     lambda a, d: _pretok(a, d, d / "badline.jsonl", tokenizer=a / "text.model"), "not a readable safetensors"),
    ("tokenizer is a transformer", "jobs.generate", lambda a, d: _gen(a, d, "--prompt", "x", tok="model"),
     "no tokenizer config"),
    ("model is a tokenizer", "jobs.generate", lambda a, d: _gen(a, d, "--prompt", "x", model="tok"),
     "not a loong-dist model file"),
    ("text tokenizer is a safetensors", "jobs.generate",
     lambda a, d: _gen(a, d, "--prompt", "x", text=d / "tok.safetensors"), "tok.safetensors"),
    # Prompts
    ("empty prompt", "jobs.generate", lambda a, d: _gen(a, d, "--prompt", ""), "prompt is empty"),
    ("blank prompts file", "jobs.generate", lambda a, d: _gen(a, d, "--prompts-file", str(d / "empty_prompts.txt")),
     "no prompts"),
    # Shards
    ("shards: no index", "jobs.train", lambda a, d: _train(d, d / "nothing-here"), "no shard index"),
    ("shards: index not JSON", "jobs.train", lambda a, d: _train(d, d / "bad_json"), "not valid JSON"),
    ("shards: index version", "jobs.train", lambda a, d: _train(d, d / "old_version"), "index version 7"),
    ("shards: entry without ranges", "jobs.train", lambda a, d: _train(d, d / "no_ranges"), "malformed index entry"),
    ("shards: no video member", "jobs.train", lambda a, d: _train(d, d / "no_video_member"), "no 'video.npy' member"),
    ("shards: float video ids", "jobs.train", lambda a, d: _train(d, d / "float_video"), "video ids must be integer"),
    ("shards: ids beyond the codebook", "jobs.train", lambda a, d: _train(d, d / "out_of_range"),
     "outside [0, 1000) that the index declares"),
]


@pytest.mark.parametrize("name,module,build,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(files, pretok_assets, name, module, build, needle):
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled")
    r = subprocess.run([sys.executable, "-m", module, *build(pretok_assets, files)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode not in (0, None), r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr[-3000:]
    assert needle in errors[0], errors[0]

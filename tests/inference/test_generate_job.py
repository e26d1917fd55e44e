"""jobs.generate end to end with tiny untrained models, and its one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loong_dist.config import ModelConfig, TokenizerConfig
from loong_dist.data.text_tokenizer import TextTokenizer, train_text_tokenizer
from loong_dist.errors import UserError
from loong_dist.io.video import probe_video
from loong_dist.models.ar.checkpoint import ModelFileError, save_model
from loong_dist.models.ar.layout import VocabLayout
from loong_dist.models.ar.model import Transformer
from loong_dist.models.tokenizer import VideoTokenizer, save_tokenizer
from jobs.generate import main

ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = [f"a {s} {c} {sh} moving {d} on a {b} background"
            for s in ["small", "large"] for c in ["red", "green", "blue"] for sh in ["circle", "square"]
            for d in ["left", "right"] for b in ["black", "white"]]
SMALL = ["data.size=32", "data.fps=8", "generate.window_latent_frames=3", "generate.overlap_latent_frames=1",
         "generate.device=cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    text = TextTokenizer(train_text_tokenizer(CAPTIONS * 4, vocab_size=400))
    text.save(str(d / "text.model"))
    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig(channels=8, num_res_blocks=0, decoder_res_blocks=0, fsq_levels=[5, 5, 5]))
    save_tokenizer(tok, d / "tok.safetensors")
    cfg = ModelConfig(size="tiny", max_seq_len=128)
    for name, codebook in (("model", tok.codebook_size), ("wrong_codebook", 64)):
        layout = VocabLayout(text_vocab_size=text.vocab_size, codebook_size=codebook)
        save_model(Transformer(cfg, layout.padded_vocab_size).state_dict(), cfg, layout, d / f"{name}.safetensors")
    return d


def args(d, *extra):
    return ["--checkpoint", str(d / "model.safetensors"), "--tokenizer", str(d / "tok.safetensors"),
            "--text-tokenizer", str(d / "text.model"), *SMALL, *extra]


def test_one_prompt_end_to_end(files, tmp_path):
    out = tmp_path / "video.mp4"
    flags = args(files, "--prompt", CAPTIONS[0], "--seconds", "3", "--out", str(out), "--seed", "3")
    proc = subprocess.run([sys.executable, "-m", "jobs.generate", *flags],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3.0 / 3.0 s of video generated" in proc.stderr  # progress in seconds of video
    assert probe_video(str(out)).num_frames == 24
    assert (tmp_path / "video.gif").stat().st_size > 0 and (tmp_path / "video.png").stat().st_size > 0
    report = json.loads((tmp_path / "video.json").read_text())
    assert report["generate"]["seconds"] == 3.0 and report["seed"] == 3 and report["fps"] == 8.0
    (video,) = report["videos"]
    assert video["prompt"] == CAPTIONS[0] and video["frames"] == 24 and video["timings"]["tokens_per_s"] > 0


def test_prompts_file_batches_and_seed(files, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join([json.dumps({"caption": CAPTIONS[1], "attributes": {"colour": "red"}}),
                                  "", CAPTIONS[2], json.dumps({"prompt": CAPTIONS[3]})]) + "\n")
    common = args(files, "--prompts-file", str(prompts), "--seconds", "1.5", "generate.batch_size=2",
                  "generate.tokenizer_bf16=false")
    assert main([*common, "--out", str(tmp_path / "a.mp4")]) == 0
    report = json.loads((tmp_path / "a.json").read_text())
    assert [v["prompt"] for v in report["videos"]] == CAPTIONS[1:4]
    assert report["videos"][0]["attributes"] == {"colour": "red"} and report["videos"][1]["attributes"] is None
    assert [v["seed"] for v in report["videos"]] == [0, 0, 2]  # one seed per batch: run.seed + first index
    assert all(probe_video(str(tmp_path / f"a_{i:03d}.mp4")).num_frames == 12 for i in range(3))
    # same seed, same videos; another seed, others. Compared on the lossless PNG strips: libx264
    # with threads does not encode the same frames to the same pixels every time.
    main([*common, "--out", str(tmp_path / "b.mp4")])
    main([*common, "--out", str(tmp_path / "c.mp4"), "--seed", "1"])
    strip = lambda name: np.asarray(Image.open(tmp_path / name))  # noqa: E731
    for i in range(3):
        np.testing.assert_array_equal(strip(f"a_{i:03d}.png"), strip(f"b_{i:03d}.png"))
    assert not np.array_equal(strip("a_000.png"), strip("c_000.png"))
    assert strip("a_000.png").shape == (32, 8 * 32, 3)


@pytest.mark.parametrize("extra,message", [
    (["--prompt", "   "], "prompt is empty"),
    (["--prompt", CAPTIONS[0], "text.max_text_tokens=5"], "longer than the text context text.max_text_tokens=5"),
    (["--prompt", CAPTIONS[0], "--checkpoint", "WRONG"],
     "model was trained on 64 video codes, the video tokenizer has 125"),
    (["--prompt", CAPTIONS[0], "generate.window_latent_frames=9"], "above the model's max_seq_len=128"),
    ([], "pass exactly one of --prompt TEXT or --prompts-file F"),
])
def test_errors(files, tmp_path, extra, message):
    argv = args(files, "--out", str(tmp_path / "v.mp4"), *extra)
    if "WRONG" in argv:
        argv[argv.index("WRONG")] = str(files / "wrong_codebook.safetensors")
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        main(argv)


def test_error_is_one_line(files, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jobs.generate", *args(files, "--prompt", "")], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == ["error: prompt is empty"]
    assert issubclass(ModelFileError, UserError)


def test_evaluate_generation(files, tmp_path):
    from jobs.evaluate import main as evaluate
    from loong_dist.data.synthetic import attributes_for, caption, render_clip
    from loong_dist.io.video import write_mp4

    attrs = [attributes_for(i, 0) for i in range(2)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"caption": caption(a, 65), "attributes": a}) + "\n" for a in attrs))
    main(args(files, "--prompts-file", str(prompts), "--seconds", "4", "--out", str(tmp_path / "gen.mp4"),
              "generate.tokenizer_bf16=false"))
    assert evaluate(["generation", "--videos", str(tmp_path / "gen.json"), "--out", str(tmp_path / "ev"),
                     "--window-s", "2"]) == 0
    report = json.loads((tmp_path / "ev" / "generation_eval.json").read_text())
    assert [w["start_s"] for w in report["drift"]] == [0.0, 2.0] and report["first_clip_frames"] == 9
    assert all(0 <= w["colour_tv"] <= 1 and 0 <= w["code_tv"] <= 1 and w["code_entropy_bits"] >= 0
               for w in report["drift"])
    assert report["alignment"]["videos"] == 2 and len(report["per_video"][0]["alignment"]) == 2

    # the reference generator: the renderer itself, at 64 px, listed the way jobs.generate lists videos
    videos = []
    for i, a in enumerate(attrs):
        write_mp4(tmp_path / f"r{i}.mp4", render_clip(a, 65, 64), fps=8.0)
        videos.append({"mp4": str(tmp_path / f"r{i}.mp4"), "prompt": caption(a, 65), "attributes": a})
    (tmp_path / "rendered.json").write_text(json.dumps({"fps": 8.0, "generate": {"window_latent_frames": 5},
                                                         "videos": videos}))
    evaluate(["generation", "--videos", str(tmp_path / "rendered.json"), "--out", str(tmp_path / "ev2"),
              "--window-s", "4"])
    rendered = json.loads((tmp_path / "ev2" / "generation_eval.json").read_text())
    assert rendered["alignment"]["all_attributes_first_window"] == 1.0
    assert set(rendered["alignment"]["all_windows"].values()) == {1.0}
    assert "code_tv" not in rendered["drift"][0]  # no tokenizer named: pixel statistics only


@pytest.fixture(scope="module")
def carried(files):
    """A model file as jobs.train exports it: it carries its text tokenizer, names its video
    tokenizer by place and hash, and recommends sampling settings."""
    import base64
    import hashlib
    proto = (files / "text.model").read_bytes()
    tok = files / "tok.safetensors"
    text = TextTokenizer(proto)
    layout = VocabLayout(text_vocab_size=text.vocab_size, codebook_size=125)
    cfg = ModelConfig(size="tiny", max_seq_len=128)
    extra = {"size": 32, "fps": 8.0, "tokenizer": str(tok),
             "tokenizer_sha256": hashlib.sha256(tok.read_bytes()).hexdigest(),
             "text_tokenizer_sha256": hashlib.sha256(proto).hexdigest(),
             "text_tokenizer_model": base64.b64encode(proto).decode(),
             "generate": {"top_k": 7, "temperature": 0.5, "window_latent_frames": 3, "overlap_latent_frames": 1,
                          "reencode": False, "cfg_scale": 1.0, "top_p": 1.0, "first_frame_candidates": 2}}
    path = files / "carried.safetensors"
    torch.manual_seed(1)
    save_model(Transformer(cfg, layout.padded_vocab_size).state_dict(), cfg, layout, path, extra)
    return path


def test_a_model_file_that_carries_its_settings_needs_no_other_flag(carried, tmp_path):
    out = tmp_path / "v.mp4"
    assert main(["--checkpoint", str(carried), "--prompt", CAPTIONS[0], "--seconds", "1.5", "--out", str(out),
                 "generate.device=cpu"]) == 0
    report = json.loads((tmp_path / "v.json").read_text())
    g = report["generate"]
    assert (g["top_k"], g["temperature"], g["window_latent_frames"], g["overlap_latent_frames"], g["reencode"],
            g["first_frame_candidates"]) == (7, 0.5, 3, 1, False, 2)
    assert (report["size"], report["fps"], report["text_tokenizer"]) == (32, 8.0, "carried")
    assert probe_video(str(out)).num_frames == 12
    # the user's items win over the carried settings
    main(["--checkpoint", str(carried), "--prompt", CAPTIONS[0], "--seconds", "1.5", "--out", str(tmp_path / "w.mp4"),
          "generate.top_k=3", "generate.device=cpu"])
    assert json.loads((tmp_path / "w.json").read_text())["generate"]["top_k"] == 3


def test_tokenizers_passed_explicitly_must_be_the_models_own(carried, files, tmp_path):
    other_text = tmp_path / "other.model"
    other_captions = [c.replace("a ", "one ") for c in CAPTIONS] * 4
    TextTokenizer(train_text_tokenizer(other_captions, vocab_size=400)).save(str(other_text))
    torch.manual_seed(5)
    other_tok = tmp_path / "other_tok.safetensors"
    save_tokenizer(VideoTokenizer(TokenizerConfig(channels=8, num_res_blocks=0, decoder_res_blocks=0,
                                                  fsq_levels=[5, 5, 5])), other_tok)
    base = ["--checkpoint", str(carried), "--prompt", CAPTIONS[0], "--out", str(tmp_path / "v.mp4")]
    with pytest.raises(UserError, match="not the text tokenizer .* was trained with"):
        main([*base, "--text-tokenizer", str(other_text)])
    with pytest.raises(UserError, match="not the video tokenizer .* was trained with"):
        main([*base, "--tokenizer", str(other_tok)])
    with pytest.raises(UserError, match="trained on clips with data.fps=8.0, data.fps is 12.0"):
        main([*base, "data.fps=12"])
    proc = subprocess.run([sys.executable, "-m", "jobs.generate", *base, "--text-tokenizer", str(other_text)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr

"""Teacher-forced loss per latent frame (loong_dist/evaluation/frame_loss.py, jobs.evaluate frames):
each piece against a reference written out by hand, then the job end to end on rendered clips."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.evaluate import main
from loong_dist.config import ModelConfig
from loong_dist.data.synthetic import BACKGROUNDS, attributes_for, render_clip
from loong_dist.evaluation.frame_loss import clip_token_loss, latent_frame_spans, object_cells, summarise
from loong_dist.io.video import write_mp4
from loong_dist.models.ar.layout import VocabLayout
from loong_dist.models.ar.model import Transformer
from tests.inference.test_generate_job import CAPTIONS, files  # noqa: F401  (files: a fixture)


def test_latent_frame_spans_follow_the_causal_time_compression():
    assert latent_frame_spans(1) == [(0, 1)]
    assert latent_frame_spans(17) == [(0, 1), (1, 5), (5, 9), (9, 13), (13, 17)]
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        latent_frame_spans(16)


@pytest.mark.parametrize("index", range(6))
def test_object_cells_are_the_cells_whose_pixels_differ_from_the_background(index):
    attrs = attributes_for(index, seed=3, num_frames=9)
    frames, size, cell = 9, 64, 8
    video = render_clip(attrs, frames, size)  # (T, H, W, 3)
    drawn = (video != np.array(BACKGROUNDS[attrs["background"]])).any(axis=-1)  # (T, H, W)
    expected = np.zeros((3, size // cell, size // cell), bool)
    for j, pixel_frames in enumerate([[0], [1, 2, 3, 4], [5, 6, 7, 8]]):
        for r in range(size // cell):
            for c in range(size // cell):
                expected[j, r, c] = drawn[pixel_frames, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].any()
    got = object_cells(attrs, frames, size, (size // cell, size // cell))
    np.testing.assert_array_equal(got, expected)
    assert got.any() and not got.all()


def test_clip_token_loss_is_the_log_probability_of_each_video_token():
    torch.manual_seed(0)
    layout = VocabLayout(text_vocab_size=300, codebook_size=40)
    model = Transformer(ModelConfig(size="tiny", max_seq_len=64), layout.padded_vocab_size).eval()
    text = [2, 17, 120, 45]
    codes = np.random.default_rng(0).integers(0, 40, (2, 3, 4))
    got = clip_token_loss(model, layout, text, codes)
    # by hand: the sequence <s> text <bov> video <eov>, the logits of the whole prefix, one token at a time
    seq = text + [layout.bov_id] + [layout.video_offset + int(c) for c in codes.reshape(-1)]
    with torch.no_grad():
        logits = model(torch.tensor([seq])).double()[0]  # (s, v)
    first = len(text) + 1  # position of the first video token
    expected = [-torch.log_softmax(logits[p - 1], -1)[seq[p]].item() for p in range(first, len(seq))]
    np.testing.assert_allclose(got.reshape(-1), expected, rtol=1e-5, atol=1e-5)
    assert got.shape == codes.shape


def test_summarise_groups_tokens_by_motion_and_cell():
    still_loss = np.array([[[4.0, 1.0]], [[0.5, 1.0]]])  # (F=2, 1, 2)
    moving_loss = np.array([[[3.0, 2.0]], [[3.0, 2.0]]])
    cells = np.array([[[True, False]], [[True, False]]])
    rows = [{"still": True, "loss": still_loss, "object": cells, "tokens": np.array([[[7, 8]], [[7, 9]]])},
            {"still": False, "loss": moving_loss, "object": cells, "tokens": np.array([[[5, 6]], [[6, 6]]])}]
    s = summarise(rows)
    assert s["clips"] == 2 and s["still_clips"] == 1
    f0, f1 = s["frames"]
    assert f0["still_object"] == {"loss": 4.0, "tokens": 1} and f1["still_object"] == {"loss": 0.5, "tokens": 1}
    assert f0["moving_background"] == {"loss": 2.0, "tokens": 1}
    assert f1["repeat_share"] == 0.5  # 7 = 7 and 6 = 6 of four cells
    assert f1["repeat_loss"] == pytest.approx((0.5 + 2.0) / 2)
    assert s["copy_gain"] == pytest.approx(4.0 - 0.5)
    assert "repeat_share" not in f0


def test_frames_job_end_to_end(files, tmp_path):  # noqa: F811  (files: the fixture)
    videos = tmp_path / "videos"
    videos.mkdir()
    lines = []
    for i in range(6):
        attrs = attributes_for(i, seed=1, num_frames=5)
        attrs["motion"] = "still" if i % 2 else "left"
        write_mp4(str(videos / f"c{i}.mp4"), render_clip(attrs, 5, 32), fps=8.0)
        lines.append({"video": f"videos/c{i}.mp4", "caption": CAPTIONS[i], "split": "held_out" if i < 5 else "train",
                      "attributes": attrs, "frames": 5})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "eval"
    assert main(["frames", "--checkpoint", str(files / "model.safetensors"), "--tokenizer",
                 str(files / "tok.safetensors"), "--text-tokenizer", str(files / "text.model"),
                 "--manifest", str(tmp_path / "manifest.jsonl"), "--out", str(out), "--frames", "5", "--clips", "4",
                 "data.size=32"]) == 0
    report = json.loads((out / "frames_eval.json").read_text())
    assert report["clips"] == 4 and report["still_clips"] == 2  # the train clip is never read
    assert [t["latent_frame"] for t in report["frames"]] == [0, 1]
    for t in report["frames"]:
        assert sum(t[g]["tokens"] for g in t if isinstance(t[g], dict)) == 4 * 4 * 4  # 4 clips x 4 x 4 cells
        losses = [t[g]["loss"] for g in t if isinstance(t[g], dict) and t[g]["tokens"]]
        assert all(math.isfinite(v) and v > 0 for v in losses)
    assert report["copy_gain"] is not None and (out / "frame_loss.png").stat().st_size > 0
    # --split train reads the one train clip and nothing else
    main(["frames", "--checkpoint", str(files / "model.safetensors"), "--tokenizer", str(files / "tok.safetensors"),
          "--text-tokenizer", str(files / "text.model"), "--manifest", str(tmp_path / "manifest.jsonl"),
          "--out", str(tmp_path / "train"), "--frames", "5", "--split", "train", "data.size=32"])
    report = json.loads((tmp_path / "train" / "frames_eval.json").read_text())
    assert report["split"] == "train" and [Path(c["video"]).name for c in report["per_clip"]] == ["c5.mp4"]

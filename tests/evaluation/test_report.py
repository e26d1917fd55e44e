"""report.html from a run folder: every section the files call for, every picture it points at
present on disk (the page must open from disk), and summary.json with the same numbers."""

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from loong_dist.evaluation.report import write_report
from loong_dist.io.video import write_gif, write_mp4


def _done(folder: Path, module: str, wall: float):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".done").write_text(json.dumps({"module": module, "args": [], "wall_s": wall}))


def test_report_sections_links_and_summary(tmp_path):
    root = tmp_path / "run"
    frames = np.random.default_rng(0).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8)
    # tokenizer evaluation with one side-by-side GIF
    _done(root / "tokenizer_eval", "jobs.evaluate", 4.0)
    write_gif(root / "tokenizer_eval" / "tokenizer_eval" / "clip_000.gif", frames, fps=8)
    (root / "tokenizer_eval" / "tokenizer_eval.json").write_text(json.dumps({
        "checkpoint": "tok.safetensors", "clips": 1, "frames": 9, "size": 32, "psnr": 24.5, "ssim": 0.71,
        "ref_psnr": 22.1, "ref_ssim": 0.66, "used": 0.05, "perplexity": 812.0, "codebook_size": 64000,
        "per_clip": [{"psnr": 24.5, "ssim": 0.71, "ref_psnr": 22.1, "video": "a.mp4", "start": 0.0,
                      "gif": str(root / "tokenizer_eval" / "tokenizer_eval" / "clip_000.gif")}]}))
    # two training runs with per-frame losses
    for name, first in (("stage2", 2.0), ("stage2_plain", 3.0)):
        _done(root / name, "jobs.train", 30.0)
        with open(root / name / "metrics.jsonl", "w") as f:
            for step in range(1, 9):
                f.write(json.dumps({"step": step, "loss": 5.0 - step * 0.1, "lr": 1e-3, "tokens": 1000, "seconds": 0.5,
                                    "frame_loss": [first, 4.0, None]}) + "\n")
        (root / name / "config.yaml").write_text("model:\n  size: tiny\n")
    # a generated video and its evaluation
    _done(root / "generate", "jobs.generate", 20.0)
    write_mp4(root / "generate" / "videos_000.mp4", frames, fps=8)
    write_gif(root / "generate" / "videos_000.gif", frames, fps=8)
    Image.fromarray(frames[0]).save(root / "generate" / "videos_000.png")
    write_mp4(root / "generate" / "videos_000_x4.mp4", frames.repeat(4, axis=1).repeat(4, axis=2), fps=8)
    (root / "generate" / "videos.json").write_text(json.dumps({
        "fps": 8.0, "size": 32, "wall_s": 20.0,
        "checkpoint": "stage3/model.safetensors",
        "generate": {"seconds": 1.125, "top_k": 100, "temperature": 1.0, "cfg_scale": 3.0, "reencode": True,
                     "window_latent_frames": 5},
        "videos": [{"prompt": "a large red circle moving left quickly on a black background", "seconds": 1.125,
                    "attributes": {"colour": "red", "shape": "circle"},
                    "mp4_x4": str(root / "generate" / "videos_000_x4.mp4"),
                    **{k: str(root / "generate" / f"videos_000.{k}") for k in ("mp4", "gif", "png")}}]}))
    _done(root / "generate_eval", "jobs.evaluate", 2.0)
    window = {"start_s": 0.0, "end_s": 1.125, "match": {"colour": True, "shape": False},
              "detected": {"colour": "red", "shape": "square"}}
    (root / "generate_eval" / "generation_eval.json").write_text(json.dumps({
        "window_s": 10.0, "drift": [{"window": 0, "start_s": 0.0, "colour_tv": 0.0, "motion": 3.5}],
        "alignment": {"videos": 1, "first_window": {"colour": 1.0, "shape": 0.0},
                      "per_window": [{"window": 0, "start_s": 0.0, "videos": 1, "colour": 1.0, "shape": 0.0,
                                      "all": 0.0}]},
        "per_video": [{"mp4": str(root / "generate" / "videos_000.mp4"), "alignment": [window]}]}))

    page, summary = write_report(root, "test run", "python -m jobs.quickstart --out run")
    text = page.read_text()
    for heading in ("Steps", "Video tokenizer", "Transformer training", "Generated videos: the demo",
                    "Resolved configs"):
        assert f"<h2>{heading}" in text, heading
    assert "a large red circle moving left" in text and "24.5" in text and "22.1" in text
    assert "\u2713</span> colour: red" in text and "\u2717</span> shape: square" in text and "(asked circle)" in text
    assert "<td>100%</td><td>0%</td>" in text  # the per-window alignment table
    assert 'width="512" src="generate/videos_000_x4.mp4"' in text  # the 4x upscaled video beside it
    for ref in re.findall(r'(?:src|href)="([^"]+)"', text):  # relative, and present on disk
        assert not ref.startswith(("/", "http")), ref
        assert (root / ref).is_file(), ref
    assert (root / "report_assets" / "stage2_frame_loss.png").is_file()

    saved = json.loads((root / "summary.json").read_text())
    assert saved["tokenizer"]["psnr"] == 24.5 and saved["tokenizer"]["ref_psnr"] == 22.1
    assert saved["training"]["stage2"]["frame_loss"]["latent frame 0"] == 2.0
    assert saved["training"]["stage2_plain"]["frame_loss"]["latent frame 0"] == 3.0
    assert saved["training"]["stage2"]["tokens_per_s"] == 2000.0
    assert saved["generation"]["generate"]["alignment"]["first_window"]["colour"] == 1.0
    assert saved["steps"]["generate"]["throughput"] == "0.056 s of video per s"
    assert saved["total_wall_s"] == 86.0
    assert "generate_shipped" not in saved["generation"]  # a step that did not run leaves no section

"""jobs.quickstart (make demo): every step that exists runs as its own job; a re-run skips finished steps."""

import json
import re
import subprocess
import sys
from pathlib import Path

from loong_dist.data.manifest import read_manifest
from loong_dist.data.text_tokenizer import TextTokenizer

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    return subprocess.run([sys.executable, "-m", "jobs.quickstart", *args], cwd=ROOT, capture_output=True, text=True)


# The demo's chain at the smallest size that still exercises every step (the shipped tokenizer).
# samples.window_s=60: the real videos in 27 windows instead of 75 (pre-tokenizing them was half the test).
SMALL = ["synthetic.n=12", "synthetic.held_out=0.3", "data.size=64", "samples.window_s=60", "optim.steps=2",
         "train.save_every=0", "train.token_budget=1536",
         "generate.seconds=2.5", "generate.window_latent_frames=5", "generate.overlap_latent_frames=2"]
STEPS = {"samples", "synthetic", "text_tokenizer", "shards", "stage1", "stage2", "stage3", "stage2_plain",
         "generate", "generate_eval", "tokenizer_eval"}


def _check_outputs(out: Path, shards_index: dict):
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["steps"]) == STEPS
    assert shards_index["totals"]["samples"] > 0 and shards_index["meta"]["codebook_size"] == 64000
    assert set(shards_index["totals"]["samples_by_latent_frames"]) == {"1", "5", "17"}
    for stage in ("stage1", "stage2", "stage3", "stage2_plain"):
        assert len((out / stage / "metrics.jsonl").read_text().splitlines()) == 2
        assert (out / stage / "model.safetensors").exists()
    videos = json.loads((out / "generate" / "videos.json").read_text())["videos"]
    assert len(videos) >= 1 and all(Path(v["mp4"]).exists() and v["frames"] == 20 for v in videos)  # 2.5 s at 8 fps
    assert json.loads((out / "generate_eval" / "generation_eval.json").read_text())["drift"]
    assert json.loads((out / "tokenizer_eval" / "tokenizer_eval.json").read_text())["clips"] > 0
    page = (out / "report.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"]+)"', page):  # the page opens from disk
        assert (out / ref).is_file(), ref
    assert summary["training"]["stage2"]["frame_loss"] and summary["generation"]["generate"]["videos"] == len(videos)


def test_quickstart_on_s3_skips_finished_steps_on_rerun(tmp_path, sample_videos, s3_env, s3_bucket):
    """The demo's chain with --s3 (shards written to and trained from the S3 server on 127.0.0.1),
    then the same command twice: everything skipped, then only the step whose .done was lost."""
    import boto3

    out = tmp_path / "demo"
    cmd = ["--out", str(out), "--s3", f"{s3_bucket}/demo", "--shipped-seconds", "0", *SMALL]  # s3_env is in our env
    first = run(*cmd)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (out / "shards" / "index.json").exists()
    s3 = boto3.client("s3", endpoint_url=s3_env)
    index = json.loads(s3.get_object(Bucket=s3_bucket[len("s3://"):], Key="demo/shards/index.json")["Body"].read())
    _check_outputs(out, index)
    assert len(read_manifest(str(out / "synthetic" / "manifest.jsonl"))[0]) == 12
    tok = TextTokenizer.load(str(out / "text_tokenizer" / "text.model"))
    assert tok.decode(tok.encode("a small red circle")) == "a small red circle"

    model_bytes = (out / "text_tokenizer" / "text.model").read_bytes()
    second = run(*cmd)
    assert second.returncode == 0
    assert second.stderr.count("done before, skipped") == len(STEPS)
    assert (out / "text_tokenizer" / "text.model").read_bytes() == model_bytes

    (out / "stage3" / ".done").unlink()  # as if the run had been killed during stage 3
    third = run(*cmd)
    assert third.returncode == 0 and third.stderr.count("done before, skipped") == len(STEPS) - 1
    _check_outputs(out, index)


def test_the_upscaler_goes_to_the_shipped_models_videos(tmp_path):
    from jobs.quickstart import SHIPPED_MODEL, plan
    assert SHIPPED_MODEL.is_file()
    for seconds, upscaled in ((60.0, "generate_shipped"), (0.0, "generate")):
        steps = {s.name: s for s in plan(tmp_path, "small", "c.yaml", False, "shards", seconds, upscaler="U.st")}
        assert [n for n, s in steps.items() if "--upscaler" in s.args] == [upscaled]
        assert steps[upscaled].args[steps[upscaled].args.index("--upscaler") + 1] == "U.st"
        assert "generate.upscale_videos=1" in steps[upscaled].overrides  # one minute of video, not three
    assert not any("--upscaler" in s.args for s in plan(tmp_path, "small", "c.yaml", False, "shards", 60.0))


def test_quickstart_bad_override_is_one_line(tmp_path):
    proc = run("--out", str(tmp_path / "x"), "synthetic.n=zero")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: config: synthetic.n='zero': expected an integer"]

"""jobs.quickstart (make demo): every step that exists runs as its own job; a re-run skips finished steps."""

import json
import subprocess
import sys
from pathlib import Path

from loong_dist.data.manifest import read_manifest
from loong_dist.data.text_tokenizer import TextTokenizer

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    return subprocess.run([sys.executable, "-m", "jobs.quickstart", *args], cwd=ROOT, capture_output=True, text=True)


# The demo's chain at the smallest size that still exercises every step.
SMALL = ["synthetic.n=12", "data.size=64", "optim.steps=2", "tokenizer_train.clips=4", "tokenizer_train.eval_clips=1",
         "tokenizer.channels=8", "tokenizer.num_res_blocks=1", "tokenizer.decoder_res_blocks=1"]
STEPS = {"samples", "synthetic", "text_tokenizer", "tokenizer", "shards", "lm", "tokenizer_eval"}


def test_quickstart_runs_steps_and_skips_them_on_rerun(tmp_path, sample_videos):
    out = tmp_path / "demo"
    first = run("--out", str(out), *SMALL)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["steps"]) == STEPS
    index = json.loads((out / "shards" / "index.json").read_text())
    assert index["totals"]["samples"] > 0 and index["meta"]["codebook_size"] == 64000
    assert len((out / "lm" / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "tokenizer_eval" / "tokenizer_eval.json").read_text())["clips"] > 0
    assert len(read_manifest(str(out / "synthetic" / "manifest.jsonl"))[0]) == 12
    assert (out / "samples" / "held_out.jsonl").exists()
    tok = TextTokenizer.load(str(out / "text_tokenizer" / "text.model"))
    assert tok.decode(tok.encode("a small red circle")) == "a small red circle"
    assert (out / "config.yaml").exists()

    model_bytes = (out / "text_tokenizer" / "text.model").read_bytes()
    second = run("--out", str(out), *SMALL)
    assert second.returncode == 0
    assert second.stderr.count("done before, skipped") == len(STEPS)
    assert (out / "text_tokenizer" / "text.model").read_bytes() == model_bytes

    (out / "lm" / ".done").unlink()  # as if the run had been killed during training
    third = run("--out", str(out), *SMALL)
    assert third.returncode == 0 and third.stderr.count("done before, skipped") == len(STEPS) - 1


def test_quickstart_bad_override_is_one_line(tmp_path):
    proc = run("--out", str(tmp_path / "x"), "synthetic.n=zero")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: config: synthetic.n='zero': expected an integer"]

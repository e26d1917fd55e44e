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


def test_quickstart_runs_steps_and_skips_them_on_rerun(tmp_path, sample_videos):
    out = tmp_path / "demo"
    first = run("--out", str(out), "synthetic.n=12")
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["steps"]) == {"samples", "synthetic", "text_tokenizer"}
    assert len(read_manifest(str(out / "synthetic" / "manifest.jsonl"))[0]) == 12
    assert (out / "samples" / "held_out.jsonl").exists()
    tok = TextTokenizer.load(str(out / "text_tokenizer" / "text.model"))
    assert tok.decode(tok.encode("a small red circle")) == "a small red circle"
    assert (out / "config.yaml").exists()

    model_bytes = (out / "text_tokenizer" / "text.model").read_bytes()
    second = run("--out", str(out), "synthetic.n=12")
    assert second.returncode == 0
    assert second.stderr.count("done before, skipped") == 3
    assert (out / "text_tokenizer" / "text.model").read_bytes() == model_bytes

    forced = run("--out", str(out), "synthetic.n=12", "--force")
    assert forced.returncode == 0 and "skipped" not in forced.stderr


def test_quickstart_bad_override_is_one_line(tmp_path):
    proc = run("--out", str(tmp_path / "x"), "synthetic.n=zero")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: config: synthetic.n='zero': expected an integer"]

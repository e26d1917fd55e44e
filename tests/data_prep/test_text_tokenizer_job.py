"""data_prep.text_tokenizer: trains on a manifest's training captions, writes the model and stats."""

import json
import subprocess
import sys
from pathlib import Path

from data_prep.text_tokenizer import main
from loong_dist.data.text_tokenizer import TextTokenizer

ROOT = Path(__file__).resolve().parents[2]


def _manifest(path: Path) -> Path:
    lines = [{"video": f"v{i}.mp4", "caption": f"a {c} {s} moving {d}", "split": "train"}
             for i, (c, s, d) in enumerate((c, s, d) for c in ["red", "blue", "green"] for s in ["circle", "square"]
                                           for d in ["left", "right", "up"])]
    lines.append({"video": "h.mp4", "caption": "zebra zebra zebra", "split": "held_out"})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_job_writes_model_and_stats(tmp_path):
    manifest = _manifest(tmp_path / "m.jsonl")
    out = tmp_path / "tok" / "text.model"
    assert main(["--manifest", str(manifest), "--out", str(out), "--vocab-size", "400"]) == 0
    tok = TextTokenizer.load(str(out))
    stats = json.loads(Path(str(out) + ".json").read_text())
    assert stats["vocab_size"] == tok.vocab_size and stats["captions"] == 18
    assert stats["held_out_captions_left_out"] == 1
    assert tok.decode(tok.encode("a red circle moving up")) == "a red circle moving up"
    assert len(tok.encode("a red circle moving up")) == 6  # BOS + 5 whole words
    assert len(tok.encode("zebra")) > 2  # never seen: held-out captions are not in the vocabulary


def test_job_bad_manifest_line_is_one_line_error(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"video": "a.mp4", "caption": "x"}\n{"video": "b.mp4"}\n')
    proc = subprocess.run([sys.executable, "-m", "data_prep.text_tokenizer", "--manifest", str(manifest),
                           "--out", str(tmp_path / "t.model")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {manifest}:2: missing 'caption'"]
    assert not (tmp_path / "t.model").exists()

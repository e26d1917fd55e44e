"""data_prep.synthetic: mp4 clips readable at the right length, a manifest with the attributes, a
re-run that gives the same manifest, and one-line errors for bad flags."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data_prep.synthetic as job
from loong_dist.config import load_config
from loong_dist.data.manifest import read_manifest
from loong_dist.data.synthetic import (CHECKED, attributes_for, caption, compare_attributes, detect_attributes,
                                       render_clip)
from loong_dist.errors import VideoError
from loong_dist.io.video import read_clip

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, *flags: str) -> None:
    assert job.main(["--out", str(out), *flags]) == 0


def test_job_writes_readable_clips_and_manifest(tmp_path, capsys):
    out = tmp_path / "syn"
    _run(out, "--n", "7", "--frames", "1,17,65", "--size", "64", "--seed", "3", "synthetic.held_out=0.3")
    assert "synthetic: 7 clips" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "videos").iterdir()) == [f"syn-{i:06d}.mp4" for i in range(7)]
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    entries, bad = read_manifest(str(out / "manifest.jsonl"))
    assert not bad and len(entries) == 7
    for i, (line, entry) in enumerate(zip(lines, entries)):
        t = (1, 17, 65)[i % 3]
        attrs = attributes_for(i, 3, t)
        assert line["video"] == f"videos/syn-{i:06d}.mp4"  # relative to the manifest
        assert line["caption"] == caption(attrs, t)
        assert line["attributes"] == attrs
        assert (line["frames"], line["fps"], line["size"], line["source"]) == (t, 8.0, 64, "synthetic")
        assert line["split"] in ("train", "held_out")
        clip = read_clip(entry.video, num_frames=t, fps=8.0, size=None)
        assert clip.shape == (t, 64, 64, 3)
        with pytest.raises(VideoError, match="too short"):
            read_clip(entry.video, num_frames=t + 1, fps=8.0, size=None)
        # After H.264 the pixels still show what the caption says.
        assert compare_attributes(attrs, detect_attributes(clip)) == {k: True for k in CHECKED}, (i, attrs)
    cfg = load_config(out / "config.yaml")
    assert (cfg.synthetic.n, cfg.synthetic.frames, cfg.synthetic.size, cfg.run.seed) == (7, [1, 17, 65], 64, 3)
    with Image.open(out / "preview.png") as img:
        assert img.size[0] == 8 * 64 and img.size[1] > 7 * 64


def test_rerun_gives_the_same_manifest_and_keeps_clips(tmp_path, capsys):
    out = tmp_path / "syn"
    _run(out, "--n", "5", "--frames", "1,5", "--size", "32")
    manifest = (out / "manifest.jsonl").read_bytes()
    mtimes = [p.stat().st_mtime_ns for p in sorted((out / "videos").iterdir())]
    capsys.readouterr()
    _run(out, "--n", "5", "--frames", "1,5", "--size", "32")
    assert "0 rendered" in capsys.readouterr().out
    assert (out / "manifest.jsonl").read_bytes() == manifest
    assert [p.stat().st_mtime_ns for p in sorted((out / "videos").iterdir())] == mtimes
    # Another size re-renders every clip; the same seed keeps the same attributes.
    _run(out, "--n", "5", "--frames", "1,5", "--size", "48")
    assert "5 rendered" in capsys.readouterr().out
    assert read_clip(out / "videos" / "syn-000001.mp4", num_frames=5, size=None).shape == (5, 48, 48, 3)
    assert [json.loads(x)["attributes"] for x in (out / "manifest.jsonl").read_text().splitlines()] == \
           [json.loads(x)["attributes"] for x in manifest.decode().splitlines()]
    # Another still share draws other motions: every clip is rendered again, none kept from before.
    _run(out, "--n", "5", "--frames", "1,5", "--size", "48", "synthetic.still_share=1.0")
    assert "5 rendered" in capsys.readouterr().out
    assert {json.loads(x)["attributes"]["motion"] for x in (out / "manifest.jsonl").read_text().splitlines()} == \
           {"still"}
    # A start grid moves the objects: rendered again, each start on the grid.
    _run(out, "--n", "5", "--frames", "1,5", "--size", "48", "synthetic.still_share=1.0", "synthetic.start_grid=16")
    assert "5 rendered" in capsys.readouterr().out
    starts = [json.loads(x)["attributes"] for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(a[k] * 16 == int(a[k] * 16) for a in starts for k in ("x", "y")), starts
    _run(out, "--n", "5", "--frames", "1,5", "--size", "48", "synthetic.still_share=1.0", "synthetic.start_grid=16",
         "synthetic.start_inside=true")
    assert "5 rendered" in capsys.readouterr().out


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to start a process pool")
def test_process_pool_writes_the_same_clips(tmp_path, monkeypatch, capsys):
    # Pixels, not bytes: on tiny frames x264 reads uninitialised memory (valgrind, 16x16; CI once at
    # 32x32), so the same frames can encode to other bytes in another process's heap.
    args = ["--n", "12", "--frames", "1,5", "--size", "32"]
    monkeypatch.setattr(job, "CLIPS_PER_WORKER", 6)  # 12 clips -> 2 processes
    _run(tmp_path / "pool", *args)
    assert "on 2 process(es)" in capsys.readouterr().out
    monkeypatch.setattr(job, "CLIPS_PER_WORKER", 10**9)
    _run(tmp_path / "serial", *args)
    assert "on 1 process(es)" in capsys.readouterr().out
    manifest = (tmp_path / "pool" / "manifest.jsonl").read_bytes()
    assert manifest == (tmp_path / "serial" / "manifest.jsonl").read_bytes()
    lines = [json.loads(x) for x in manifest.decode().splitlines()]
    renders = [render_clip(x["attributes"], x["frames"], 32).astype(np.float32) for x in lines]
    for i, line in enumerate(lines):
        decoded = [read_clip(tmp_path / run / line["video"], num_frames=line["frames"], size=None).astype(np.float32)
                   for run in ("pool", "serial")]
        for clip in decoded:  # the file holds its own clip, the nearest of all the renders of its length
            errors = [np.abs(clip - r).mean() if r.shape == clip.shape else np.inf for r in renders]
            assert int(np.argmin(errors)) == i and errors[i] < 4.0, (line["video"], errors)
        assert np.abs(decoded[0] - decoded[1]).mean() < 2.0, line["video"]


def test_held_out_share_follows_config(tmp_path):
    out = tmp_path / "syn"
    _run(out, "--n", "40", "--frames", "1,5", "--size", "16", "synthetic.held_out=0.5")
    splits = [json.loads(x)["split"] for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert 10 <= splits.count("held_out") <= 30
    assert np.all([s in ("train", "held_out") for s in splits])


@pytest.mark.parametrize("flags, key", [(["--frames", "1,16"], "synthetic.frames"),
                                        (["--frames", "1,17,0"], "synthetic.frames"),
                                        (["--size", "60"], "synthetic.size"),
                                        (["--n", "many"], "synthetic.n")])
def test_bad_flag_is_a_one_line_error(tmp_path, flags, key):
    proc = subprocess.run([sys.executable, "-m", "data_prep.synthetic", "--out", str(tmp_path / "o"), *flags],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()

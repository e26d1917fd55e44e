"""The manifest format every job reads: JSON Lines, one clip source per line.

    {"video": "clips/a.mp4" | "/abs/a.mp4" | "s3://bucket/a.mp4", "caption": "a red ball ...",
     "start": 12.5, "end": 22.5, ...}

- `video` (required): a path or s3:// URI; a relative path is relative to the manifest's folder.
- `caption` (required): the text condition (may be empty: an unconditional sample).
- `start`, `end` (optional): seconds; the window of the video that clips are cut from.
- Any other key (`split`, `attributes`, `source`, ...) is kept as it is, in `extra`.

Blank lines are skipped. A bad line is reported with its line number: `read_manifest` raises on
the first one (strict), or collects them as `BadLine`s for jobs that skip bad input and record it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from loong_dist.errors import ManifestError
from loong_dist.io.storage import Storage, is_s3, parent, resolve_relative

REQUIRED = ("video", "caption")
KNOWN = ("video", "caption", "start", "end")


@dataclass(frozen=True)
class ManifestEntry:
    video: str
    """Path or s3:// URI of the video, resolved against the manifest's folder."""
    caption: str
    """Caption text."""
    start: float | None = None
    """Start of the usable window (seconds); None: the start of the video."""
    end: float | None = None
    """End of the usable window (seconds); None: the end of the video."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Every other key of the line, kept as it was."""
    line: int = 0
    """1-based line number in the manifest it came from (0 when made in code)."""

    def to_json(self, relative_to: str | None = None) -> dict[str, Any]:
        video = self.video
        if relative_to is not None and not is_s3(video) and not is_s3(relative_to):
            video = os.path.relpath(video, relative_to)
        out: dict[str, Any] = {"video": video, "caption": self.caption}
        if self.start is not None:
            out["start"] = self.start
        if self.end is not None:
            out["end"] = self.end
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class BadLine:
    line: int
    """1-based line number."""
    reason: str
    """What is wrong with it."""
    text: str
    """The line as it was (cut to 200 characters)."""


def _number(obj: dict, key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"'{key}' must be a number of seconds, got {value!r}")
    if value < 0:
        raise ValueError(f"'{key}' must be >= 0, got {value!r}")
    return float(value)


def parse_line(text: str, line: int, base_dir: str) -> ManifestEntry:
    """One manifest line -> ManifestEntry, or ValueError saying what is wrong."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for key in REQUIRED:
        if key not in obj:
            raise ValueError(f"missing '{key}'")
    if not isinstance(obj["video"], str) or not obj["video"].strip():
        raise ValueError(f"'video' must be a non-empty string, got {obj['video']!r}")
    if not isinstance(obj["caption"], str):
        raise ValueError(f"'caption' must be a string, got {obj['caption']!r}")
    start, end = _number(obj, "start"), _number(obj, "end")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"'end' ({end}) must be after 'start' ({start})")
    extra = {k: v for k, v in obj.items() if k not in KNOWN}
    return ManifestEntry(resolve_relative(obj["video"], base_dir), obj["caption"], start, end, extra, line)


def parse_manifest(text: str, name: str, base_dir: str) -> tuple[list[ManifestEntry], list[BadLine]]:
    entries, bad = [], []
    for i, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entries.append(parse_line(raw, i, base_dir))
        except ValueError as e:
            bad.append(BadLine(i, str(e), raw[:200]))
    return entries, bad


def read_manifest(uri: str, storage: Storage | None = None, strict: bool = True
                  ) -> tuple[list[ManifestEntry], list[BadLine]]:
    """Read a manifest from a path or s3:// URI.

    strict: raise ManifestError on the first bad line ("manifest.jsonl:12: missing 'caption'");
    otherwise return the good entries and the bad lines.
    """
    storage = storage or Storage()
    text = storage.read_text(uri)
    entries, bad = parse_manifest(text, str(uri), parent(str(uri)))
    if strict and bad:
        first = bad[0]
        more = f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""
        raise ManifestError(f"{uri}:{first.line}: {first.reason}{more}")
    if not entries and not bad:
        raise ManifestError(f"{uri}: manifest has no entries")
    return entries, bad


def write_manifest(uri: str, entries: Iterable[ManifestEntry], storage: Storage | None = None,
                   relative: bool = True) -> str:
    """Write entries as JSON Lines (atomically); local video paths relative to the manifest's folder."""
    storage = storage or Storage()
    base = parent(str(uri)) if relative else None
    lines = [json.dumps(e.to_json(relative_to=base), ensure_ascii=False) for e in entries]
    storage.write_text(str(uri), "\n".join(lines) + "\n")
    return str(uri)


def concat_manifests(uris: Iterable[str], out_uri: str, storage: Storage | None = None) -> str:
    """One manifest holding every entry of several (video paths re-based on the new folder)."""
    storage = storage or Storage()
    entries = [e for uri in uris for e in read_manifest(uri, storage)[0]]
    return write_manifest(out_uri, entries, storage)


__all__ = ["ManifestEntry", "BadLine", "parse_line", "parse_manifest", "read_manifest", "write_manifest",
           "concat_manifests"]

"""Token shards: webdataset tar files plus one index, on a local folder or S3.

A shard is a plain tar that `webdataset.WebDataset` reads; each sample is the members
`<key>.video.npy` (video ids, uint16 when the codebook fits, else int32, shape (F, h, w)),
`<key>.text.npy` (text ids, int32, BOS first), `<key>.caption.txt` and `<key>.json` (source,
start, fps, frames, latent shape, token count). `index.json`, written last and atomically, lists
per shard its samples with their latent-frame and token counts and the byte range of each member
inside the tar, so a reader can fetch one sample with a ranged GET instead of the whole shard.
`code_counts.json`, written just before it, counts how often each video code occurs over all
shards (sparse: the codes that occur and their counts), for a model that keeps the used codes only.

    with ShardWriter(storage, "s3://b/shards/shard-000000.tar") as w: w.add(sample)
    write_index(storage, "s3://b/shards", [w.summary, ...], meta)
    index = ShardIndex.load("s3://b/shards", storage)
    sample = ShardReader(index, storage).read(index.samples[3])
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loong_dist.errors import StorageError, UserError
from loong_dist.io.storage import Storage, join

INDEX_NAME = "index.json"
CODE_COUNTS_NAME = "code_counts.json"
INDEX_VERSION = 1
MEMBERS = ("video.npy", "text.npy", "caption.txt", "json")


class ShardError(UserError):
    """A shard or index is missing, malformed or holds a sample of the wrong type."""


@dataclass
class Sample:
    key: str
    """Unique sample key (no dots: webdataset splits member names at the first dot)."""
    video: np.ndarray
    """Video ids (F, h, w), integer."""
    text: np.ndarray
    """Text ids (L,), integer, BOS first."""
    caption: str
    """The caption the text ids encode."""
    meta: dict[str, Any] = field(default_factory=dict)
    """source, start, fps, frames, ... (latent_shape and tokens are filled in by the writer)."""


@dataclass(frozen=True)
class SampleRef:
    shard: str
    """Shard file name, relative to the index's folder."""
    key: str
    latent_frames: int
    """F: latent frames (1 for an image)."""
    video_tokens: int
    """F * h * w."""
    text_tokens: int
    """Text ids, BOS included."""
    ranges: dict[str, list[int]]
    """member suffix -> [offset, size] of its bytes inside the tar."""
    folder: str = ""
    """Folder of the shard when an index spans several (`ShardIndex.load_many`); empty: the index's."""


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def video_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.uint16) if codebook_size <= 65536 else np.dtype(np.int32)


class ShardWriter:
    """Writes one shard: a local temporary tar, uploaded (or renamed) whole when closed."""

    def __init__(self, storage: Storage, uri: str, codebook_size: int):
        self.storage, self.uri, self.codebook_size = storage, str(uri), codebook_size
        self._tmp = tempfile.NamedTemporaryFile(suffix=".tar", delete=False)
        self._tar = tarfile.open(fileobj=self._tmp, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples: list[dict[str, Any]] = []
        self._mtime = 0  # fixed: the same samples give the same bytes
        self._counts: dict[int, int] = {}  # video code -> occurrences in this shard

    def add(self, sample: Sample) -> None:
        if "." in sample.key or "/" in sample.key:
            raise ValueError(f"sample key {sample.key!r} must not contain '.' or '/'")
        video = np.asarray(sample.video)
        if video.ndim != 3 or not np.issubdtype(video.dtype, np.integer):
            raise ValueError(f"{sample.key}: video ids must be an integer (F, h, w) array, "
                             f"got {video.dtype} {video.shape}")
        if video.size and (video.min() < 0 or video.max() >= self.codebook_size):
            raise ValueError(f"{sample.key}: video ids outside [0, {self.codebook_size})")
        f, h, w = video.shape
        ids, counts = np.unique(video, return_counts=True)
        for code, n in zip(ids.tolist(), counts.tolist()):
            self._counts[code] = self._counts.get(code, 0) + n
        meta = dict(sample.meta, latent_shape=[f, h, w], video_tokens=int(video.size),
                    text_tokens=int(len(sample.text)))
        payload = {
            "video.npy": _npy_bytes(video.astype(video_dtype(self.codebook_size))),
            "text.npy": _npy_bytes(np.asarray(sample.text, dtype=np.int32)),
            "caption.txt": sample.caption.encode("utf-8"),
            "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
        }
        ranges = {}
        for suffix, data in payload.items():
            info = tarfile.TarInfo(f"{sample.key}.{suffix}")
            info.size, info.mtime, info.mode = len(data), self._mtime, 0o644
            header = info.tobuf(self._tar.format, self._tar.encoding, self._tar.errors)
            data_offset = self._tar.offset + len(header)  # the member's bytes follow its header
            self._tar.addfile(info, io.BytesIO(data))
            ranges[suffix] = [data_offset, len(data)]
        self.samples.append({"key": sample.key, "latent_frames": f, "video_tokens": int(video.size),
                             "text_tokens": int(len(sample.text)), "ranges": ranges})

    def close(self) -> dict[str, Any]:
        """Finish the tar and publish it under its final name; returns its index entry."""
        self._tar.close()
        self._tmp.close()
        try:
            self.storage.upload_file(self._tmp.name, self.uri)
        finally:
            os.unlink(self._tmp.name)
        return self.summary

    def abort(self) -> None:
        self._tar.close()
        self._tmp.close()
        os.unlink(self._tmp.name)

    @property
    def summary(self) -> dict[str, Any]:
        codes = sorted(self._counts)
        return {"name": self.uri.rstrip("/").rsplit("/", 1)[-1], "num_samples": len(self.samples),
                "video_tokens": sum(s["video_tokens"] for s in self.samples), "samples": self.samples,
                "code_counts": {"codes": codes, "counts": [self._counts[c] for c in codes]}}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_index(storage: Storage, folder: str, shards: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Write code_counts.json, then index.json (atomically) for the shards in `folder`; meta holds
    codebook_size etc. A shard summary's `code_counts` goes into the first file only."""
    shards = sorted(shards, key=lambda s: s["name"])
    total: dict[int, int] = {}
    for s in shards:
        cc = s.get("code_counts") or {"codes": [], "counts": []}
        for code, n in zip(cc["codes"], cc["counts"]):
            total[code] = total.get(code, 0) + n
    codes = sorted(total)
    storage.write_text(join(folder, CODE_COUNTS_NAME),
                       json.dumps({"codebook_size": meta.get("codebook_size"), "codes": codes,
                                   "counts": [total[c] for c in codes]}) + "\n")
    shards = [{k: v for k, v in s.items() if k != "code_counts"} for s in shards]
    totals = {"shards": len(shards), "samples": sum(s["num_samples"] for s in shards),
              "video_tokens": sum(s["video_tokens"] for s in shards)}
    by_frames: dict[str, int] = {}
    for s in shards:
        for x in s["samples"]:
            by_frames[str(x["latent_frames"])] = by_frames.get(str(x["latent_frames"]), 0) + 1
    totals["samples_by_latent_frames"] = dict(sorted(by_frames.items(), key=lambda kv: int(kv[0])))
    index = {"version": INDEX_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "meta": meta, "totals": totals, "shards": shards}
    uri = join(folder, INDEX_NAME)
    storage.write_text(uri, json.dumps(index) + "\n")
    return uri


@dataclass
class ShardIndex:
    folder: str
    meta: dict[str, Any]
    totals: dict[str, Any]
    samples: list[SampleRef]

    @classmethod
    def load(cls, folder: str, storage: Storage | None = None) -> "ShardIndex":
        storage = storage or Storage()
        uri = join(folder, INDEX_NAME)
        try:
            raw = json.loads(storage.read_text(uri))
        except StorageError as e:
            raise ShardError(f"{uri}: no shard index ({e}); run data_prep.pretokenize first") from None
        except json.JSONDecodeError as e:
            raise ShardError(f"{uri}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if raw.get("version") != INDEX_VERSION:
            raise ShardError(f"{uri}: index version {raw.get('version')!r}, expected {INDEX_VERSION}")
        try:
            samples = [SampleRef(shard["name"], s["key"], int(s["latent_frames"]), int(s["video_tokens"]),
                                 int(s["text_tokens"]), s["ranges"])
                       for shard in raw["shards"] for s in shard["samples"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ShardError(f"{uri}: malformed index entry ({type(e).__name__}: {e})") from None
        for ref in samples:
            _check_ref(uri, ref)
        return cls(str(folder), raw.get("meta", {}), raw.get("totals", {}), samples)

    @classmethod
    def load_many(cls, folders: list[str], storage: Storage | None = None) -> "ShardIndex":
        """Several shard folders read as one corpus (a stage that mixes an image corpus with a clip
        corpus). Their shards must come from the same tokenizers, frame size and rate."""
        if len(folders) == 1:
            return cls.load(folders[0], storage)
        indexes = [cls.load(f, storage) for f in folders]
        first = indexes[0]
        for other in indexes[1:]:
            for key in ("codebook_size", "text_vocab_size", "tokenizer_sha256", "text_tokenizer_sha256", "size", "fps"):
                if other.meta.get(key) != first.meta.get(key):
                    raise ShardError(f"{other.folder}: index meta {key}={other.meta.get(key)!r} differs from "
                                     f"{first.folder}'s {first.meta.get(key)!r}; shards read together must match")
        samples = [dataclasses.replace(r, folder=i.folder) for i in indexes for r in i.samples]
        keys = [r.key for r in samples]
        if len(set(keys)) != len(keys):
            raise ShardError(f"shard folders {', '.join(folders)} share sample keys (the same clips twice?)")
        totals = {"folders": [{"folder": i.folder, **i.totals} for i in indexes]}
        return cls(",".join(i.folder for i in indexes), dict(first.meta), totals, samples)

    def folders(self) -> list[str]:
        return self.folder.split(",")

    def code_counts(self, storage: Storage | None = None) -> np.ndarray:
        """(codebook_size,) int64: occurrences of each video code over the shards (code_counts.json
        of each folder)."""
        size = self.meta.get("codebook_size")
        counts = np.zeros(int(size), dtype=np.int64)
        for folder in self.folders():
            uri = join(folder, CODE_COUNTS_NAME)
            try:
                raw = json.loads((storage or Storage()).read_text(uri))
                np.add.at(counts, np.asarray(raw["codes"], dtype=np.int64), np.asarray(raw["counts"], dtype=np.int64))
            except StorageError:
                raise ShardError(f"{uri}: missing (shards written before code counts were recorded: run "
                                 f"data_prep.pretokenize again into a new folder)") from None
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise ShardError(f"{uri}: malformed ({type(e).__name__}: {e})") from None
        return counts


def _check_ref(uri: str, ref: SampleRef) -> None:
    """An index is untrusted input: its shard names stay inside its folder, keys are plain names,
    and ranges are pairs of non-negative integers."""
    name = ref.shard
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ShardError(f"{uri}: shard name {name!r} is not a plain file name in the index's folder; refused")
    if not isinstance(ref.key, str) or not ref.key or any(c in ref.key for c in "./\\"):
        raise ShardError(f"{uri}: sample key {ref.key!r} in {name} must be a plain name without '.', '/' or '\\'")
    if not isinstance(ref.ranges, dict) or not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) and x >= 0 for x in r)
            for r in ref.ranges.values()):
        raise ShardError(f"{uri}: sample {ref.key} in {name}: ranges must be [offset, size] pairs of integers >= 0")


BLOCK = tarfile.BLOCKSIZE  # 512: a tar header precedes each member's bytes


def _check_member(uri: str, key: str, suffix: str, size: int, header: bytes) -> None:
    """The tar header in front of a member's bytes must name exactly `<key>.<suffix>`, a regular
    file of `size` bytes: a member with an absolute path or `..` (which an extracting tool would
    write outside its folder), a link, or one the index does not describe is refused."""
    try:
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.HeaderError as e:
        raise ShardError(f"{uri}: sample {key}: no valid tar header before its '{suffix}' member "
                         f"({e or type(e).__name__}); the shard is corrupt or does not match the index") from None
    name = info.name
    if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
        raise ShardError(f"{uri}: sample {key}: tar member {name!r} has an absolute path or '..'; refused")
    if name != f"{key}.{suffix}" or not info.isreg() or info.size != size:
        kind = "a regular file" if info.isreg() else "a link or special file"
        raise ShardError(f"{uri}: sample {key}: tar member {name!r} ({kind}, {info.size} bytes) is not the "
                         f"{key}.{suffix} of {size} bytes the index lists; refused")


class ShardReader:
    """Reads single samples by their byte ranges (ranged GET on S3, seek + read locally)."""

    def __init__(self, index: ShardIndex, storage: Storage | None = None):
        self.index, self.storage = index, storage or Storage()

    def read(self, ref: SampleRef) -> Sample:
        uri = join(ref.folder or self.index.folder, ref.shard)
        for suffix in MEMBERS:
            if suffix not in ref.ranges:
                raise ShardError(f"{uri}: sample {ref.key} has no '{suffix}' member")
        # A sample's members lie back to back in the tar: one read covers them with their headers.
        lo = min(ref.ranges[s][0] for s in MEMBERS) - BLOCK
        hi = max(sum(ref.ranges[s]) for s in MEMBERS)
        if lo < 0 or hi - lo > sum(ref.ranges[s][1] for s in MEMBERS) + 2 * BLOCK * len(MEMBERS):
            raise ShardError(f"{uri}: sample {ref.key}: member ranges in the index are not one sample's members")
        try:
            data = self.storage.read_range(uri, lo, hi - lo)
        except StorageError as e:
            raise ShardError(f"shard listed in the index cannot be read: {e}") from None
        parts = {}
        for suffix in MEMBERS:
            offset, size = ref.ranges[suffix]
            _check_member(uri, ref.key, suffix, size, data[offset - BLOCK - lo:offset - lo])
            parts[suffix] = data[offset - lo:offset - lo + size]
        try:
            video = np.load(io.BytesIO(parts["video.npy"]), allow_pickle=False)
            text = np.load(io.BytesIO(parts["text.npy"]), allow_pickle=False)
            meta = json.loads(parts["json"])
        except (ValueError, OSError, EOFError, UnicodeDecodeError) as e:
            raise ShardError(f"{uri}: sample {ref.key} is corrupt ({type(e).__name__})") from None
        if not np.issubdtype(video.dtype, np.integer) or video.ndim != 3:
            raise ShardError(f"{uri}: sample {ref.key}: video ids must be integer (F, h, w), "
                             f"got {video.dtype} {video.shape}")
        if not np.issubdtype(text.dtype, np.integer) or text.ndim != 1:
            raise ShardError(f"{uri}: sample {ref.key}: text ids must be integer (L,), got {text.dtype} {text.shape}")
        # Ids beyond the vocabularies the index declares would index past the embedding table.
        for what, ids, vocab in (("video", video, self.index.meta.get("codebook_size")),
                                 ("text", text, self.index.meta.get("text_vocab_size"))):
            if ids.size and (ids.min() < 0 or (isinstance(vocab, int) and ids.max() >= vocab)):
                raise ShardError(f"{uri}: sample {ref.key}: {what} ids span [{ids.min()}, {ids.max()}], outside "
                                 f"[0, {vocab}) that the index declares")
        try:
            caption = parts["caption.txt"].decode("utf-8")
        except UnicodeDecodeError:
            raise ShardError(f"{uri}: sample {ref.key}: caption is not UTF-8") from None
        return Sample(ref.key, video.astype(np.int64), text.astype(np.int64), caption, meta)


__all__ = ["Sample", "SampleRef", "ShardWriter", "ShardIndex", "ShardReader", "ShardError", "write_index",
           "video_dtype"]

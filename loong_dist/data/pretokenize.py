"""Pretokenization: manifest -> clips -> token ids -> webdataset shards + index, on Ray core.

Plan (driver, no decoding; the same manifest and config give the same plan):
- Each manifest window [start, end) gives, for each length T in `data.frames`, up to
  `clips_per_window` clips of T frames at `data.fps`, back to back from the window's start.
  Without a known `end` one clip per length is planned; one that does not fit in the video is
  rejected when decoded ("too short: has N frames"). A known window too short for T is rejected
  at planning time. Entries marked split=held_out are left out unless `include_held_out`.
- A clip's key is a hash of (video, start, frames): stable across runs, unique (a duplicate
  clip is rejected as such). Windows are packed in manifest order into shards until their
  estimated token bytes reach `shard_target_mb`, so shard membership is a pure function of the
  manifest and the config; each shard carries a fingerprint of its keys and the tokenizers.

Run (Ray core tasks and actors, not Ray Data: the shard is the unit of retry and resume, and
its membership, name and bytes must not depend on block boundaries or on which task ran when):
    decode task (CPU, per chunk of `encode_batch` windows): read, cut, resize -> uint8 clips
      -> tokenizer actor pool (batches clips of one length; a GPU each when the cluster has one)
      -> write task (per shard): tar published atomically, then `_parts/<shard>.json`
         (fingerprint, index entry, rejects), the mark of a complete shard.
The driver keeps at most `max_in_flight` chunks and `max_shards_in_flight` shards under way:
memory is bounded by that backpressure, not by corpus size. Tasks have `max_retries` and the
actors `max_restarts`/`max_task_retries`, so a killed worker is re-run; since a shard is
rewritten whole from its own plan, every key lands exactly once. A re-run skips shards whose
part file matches their fingerprint (which covers everything the shard's samples hold: keys,
captions, text ids, manifest fields, tokenizers), so an edited manifest redoes exactly the shards
it changes. rejects.jsonl, summary.json, then index.json (last, atomically) are written next to
the shards.

Only the videos are judged: a clip is rejected when its video is missing, undecodable or too
short. A store that is down (`StorageUnavailable`: refused, dropped, 5xx, throttled past botocore's
retries) says nothing about the video, and a reject would be final (the shard's part file makes a
re-run skip it), so the decode or write task fails instead and Ray retries it (`max_retries`);
past those the job stops with one line, no part file written for the shard, and a re-run resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loong_dist.config import Config, StorageConfig
from loong_dist.data.manifest import BadLine, ManifestEntry
from loong_dist.data.shards import Sample, ShardWriter, video_dtype, write_index
from loong_dist.errors import StorageError, StorageUnavailable, UserError
from loong_dist.io.storage import Storage, join

log = logging.getLogger("loong_dist")

PARTS = "_parts"
SUMMARY_NAME = "summary.json"
REJECTS_NAME = "rejects.jsonl"
CRASH_ENV = "LOONG_PRETOKENIZE_CRASH_ONCE"
"""Fault injection for tests: "DIR:point[,point]". A point is a stage (decode, encode, write): the
first worker to reach it exits hard, once (DIR/crashed-<stage> records it); or "hold-<stage>": the
first worker to reach it writes its pid into DIR/held-<stage> and waits there, once, for the test
to kill it from outside - so the kill lands at a known point of the work, not at a moment."""
TASK_RETRIES = 3
"""Retries of a decode or write task (a dead worker, or a store that is down) before the job fails."""
_HOLD_S = 600.0  # how long a held worker waits to be killed before it carries on (a test gone wrong)
_SAMPLE_OVERHEAD = 4 * 512 + 3 * 128 + 512  # tar headers, npy headers, json metadata (bytes)


# ----------------------------------------------------------------------------------------------
# Plan


@dataclass(frozen=True)
class ClipSpec:
    key: str
    frames: int
    """T: frames of the clip (1 + 4k)."""
    start: float
    """Seconds into the video."""
    latent_shape: tuple[int, int, int]
    """(F, h, w) of its token ids."""


@dataclass(frozen=True)
class WindowPlan:
    line: int
    """Manifest line (1-based)."""
    video: str
    caption: str
    text: tuple[int, ...]
    """Caption ids, BOS first."""
    clips: tuple[ClipSpec, ...]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardPlan:
    name: str
    """shard-000000.tar: the position of the shard in the plan."""
    windows: tuple[WindowPlan, ...]
    fingerprint: str
    """Hash of everything that changes the shard's bytes: its keys, each window's line, caption,
    text ids and manifest fields, the tokenizers and clip settings."""

    @property
    def num_clips(self) -> int:
        return sum(len(w.clips) for w in self.windows)


def clip_key(video: str, start: float, frames: int) -> str:
    return "c" + hashlib.sha1(f"{video}|{start:.4f}|{frames}".encode()).hexdigest()[:20]


def reject(reason: str, stage: str, line: int | None = None, video: str | None = None,
           keys: list[str] | None = None, frames: list[int] | None = None) -> dict[str, Any]:
    out = {"stage": stage, "line": line, "video": video, "reason": reason}
    if keys:
        out.update(keys=keys, frames=frames)
    return out


def plan_window(entry: ManifestEntry, frames: list[int], fps: float, clips_per_window: int, latent_shape
                ) -> tuple[list[ClipSpec], list[dict[str, Any]]]:
    """The clips cut from one manifest window, and the planning rejects (window too short)."""
    start = entry.start or 0.0
    clips, rejects = [], []
    for t in frames:
        dur = t / fps
        n = 1
        if entry.end is not None:
            n = min(clips_per_window, int((entry.end - start) / dur + 1e-6))
            if n == 0:
                key = clip_key(entry.video, start, t)
                rejects.append(reject(f"window {start:g}-{entry.end:g} s is shorter than {t} frames at "
                                      f"{fps:g} fps ({dur:g} s)", "plan", entry.line, entry.video, [key], [t]))
        for i in range(n):
            s = round(start + i * dur, 4)
            clips.append(ClipSpec(clip_key(entry.video, s, t), t, s, tuple(latent_shape(t))))
    return clips, rejects


def plan_shards(entries: list[ManifestEntry], bad_lines: list[BadLine], cfg: Config, text_encode, latent_shape,
                codebook_size: int, fingerprint_extra: str) -> tuple[list[ShardPlan], list[dict[str, Any]], int]:
    """Manifest -> shards (deterministic), planning rejects, and the number of windows skipped
    as held out."""
    p, d = cfg.pretokenize, cfg.data
    rejects = [reject(f"bad manifest line: {b.reason}", "manifest", b.line) for b in bad_lines]
    itemsize = video_dtype(codebook_size).itemsize
    target = p.shard_target_mb * 2**20
    seen: dict[str, int] = {}
    shards: list[ShardPlan] = []
    current: list[WindowPlan] = []
    current_bytes, held_out = 0.0, 0

    def close():
        # Everything `write_shard` puts into the samples: keys (video, start, frames), and per window
        # its line, caption, text ids and manifest fields; the tokenizers, size and fps come in
        # `fingerprint_extra`. A re-captioned or edited line changes the fingerprint of its shard.
        content = [[w.line, w.video, w.caption, [int(t) for t in w.text], w.extra, [c.key for c in w.clips]]
                   for w in current]
        fp = hashlib.sha1(json.dumps([content, fingerprint_extra, cfg.text.max_text_tokens],
                                     sort_keys=True).encode()).hexdigest()
        shards.append(ShardPlan(f"shard-{len(shards):06d}.tar", tuple(current), fp))

    for e in entries:
        if e.extra.get("split") == "held_out" and not p.include_held_out:
            held_out += 1
            continue
        clips, rej = plan_window(e, d.frames, d.fps, p.clips_per_window, latent_shape)
        rejects += rej
        kept = []
        for c in clips:
            if c.key in seen:
                rejects.append(reject(f"duplicate clip (same video, start and length as line {seen[c.key]})",
                                      "plan", e.line, e.video, [c.key], [c.frames]))
                continue
            seen[c.key] = e.line
            kept.append(c)
        if not kept:
            continue
        # BOS + at most text.max_text_tokens - 1 pieces: the room the sequence layout reserves.
        text = tuple(text_encode(e.caption))[:cfg.text.max_text_tokens]
        current.append(WindowPlan(e.line, e.video, e.caption, text, tuple(kept), dict(e.extra)))
        current_bytes += sum(math.prod(c.latent_shape) * itemsize + 4 * len(text) + len(e.caption.encode())
                             + _SAMPLE_OVERHEAD for c in kept)
        if current_bytes >= target:
            close()
            current, current_bytes = [], 0.0
    if current:
        close()
    return shards, rejects, held_out


def chunks(shard: ShardPlan, size: int) -> list[tuple[WindowPlan, ...]]:
    return [shard.windows[i:i + size] for i in range(0, len(shard.windows), size)]


# ----------------------------------------------------------------------------------------------
# Stages (plain functions; `run_pretokenize` wraps them as Ray tasks and actors)


def crash_once(stage: str, spec: str | None) -> None:
    """Fault injection (see CRASH_ENV): the first time `stage` runs, exit this worker hard, or
    hold it until the test kills it."""
    if not spec:
        return
    folder, _, points = spec.rpartition(":")
    points = points.split(",")
    if stage in points:
        try:
            os.close(os.open(os.path.join(folder, f"crashed-{stage}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os._exit(1)
    if f"hold-{stage}" in points:
        # The marker appears whole (written aside, then linked in: exclusive), pid included.
        tmp = os.path.join(folder, f".held-{stage}.{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        try:
            os.link(tmp, os.path.join(folder, f"held-{stage}"))
        except FileExistsError:
            return
        finally:
            os.unlink(tmp)
        time.sleep(_HOLD_S)


def decode_chunk(windows: tuple[WindowPlan, ...], fps: float, size: int, storage_cfg: StorageConfig,
                 crash: str | None = None) -> dict[str, Any]:
    """Read and cut the clips of some windows: {"clips": [(window, spec, uint8 (T, S, S, 3))],
    "rejects": [...]}. A video that is missing or cannot be opened rejects its whole window; a
    clip that does not fit rejects that clip. A store that is down raises `StorageUnavailable`
    (the task fails and is retried): that is no verdict on the video."""
    import av

    from loong_dist.io.video import probe_video, read_clip
    crash_once("decode", crash)
    storage = Storage(storage_cfg)
    out: dict[str, Any] = {"clips": [], "rejects": []}
    bad_video = (UserError, av.error.FFmpegError, OSError, ValueError, EOFError)  # of a local file
    for w in windows:
        keys, lengths = [c.key for c in w.clips], [c.frames for c in w.clips]
        with contextlib.ExitStack() as stack:
            try:
                path = stack.enter_context(storage.local_copy(w.video))
            except StorageUnavailable:
                raise
            except StorageError as e:  # missing object or file, no such bucket, access denied
                out["rejects"].append(reject(str(e), "decode", w.line, w.video, keys, lengths))
                continue
            # Other failures of the fetch (the node's own disk, a bug) fail the task as they are.
            try:
                probe_video(path, name=w.video)
            except bad_video as e:
                out["rejects"].append(reject(str(e), "decode", w.line, w.video, keys, lengths))
                continue
            for c in w.clips:
                try:
                    clip = read_clip(path, c.start, c.frames, fps, size, name=w.video)
                    out["clips"].append((w, c, clip))
                except bad_video as e:
                    out["rejects"].append(reject(str(e), "decode", w.line, w.video, [c.key], [c.frames]))
    return out


class ClipEncoder:
    """Holds one video tokenizer; encodes decoded chunks in batches of clips of one length."""

    def __init__(self, tokenizer_bytes: bytes, batch: int, bf16: bool, threads: int, crash: str | None = None):
        import torch

        from loong_dist.models.tokenizer import load_tokenizer
        from loong_dist.precision import resolve_bf16, resolve_device
        self.device = resolve_device("auto")  # this node's GPU where it has one
        if self.device == "cpu":
            torch.set_num_threads(max(1, threads))
        with tempfile.TemporaryDirectory(prefix="loong-tok-") as tmp:
            path = os.path.join(tmp, "tokenizer.safetensors")
            with open(path, "wb") as f:
                f.write(tokenizer_bytes)
            self.model = load_tokenizer(path, device=self.device)
        self.batch, self.bf16, self.crash = batch, resolve_bf16(bf16, self.device), crash  # "auto": this node's device

    def encode(self, *decoded: dict[str, Any]) -> dict[str, Any]:
        """Decoded chunks -> {"samples": [(window, spec, ids (F, h, w))], "rejects": [...]}."""
        crash_once("encode", self.crash)
        items = [x for d in decoded for x in d["clips"]]
        rejects = [r for d in decoded for r in d["rejects"]]
        dtype = video_dtype(self.model.codebook_size)
        by_len: dict[int, list] = {}
        for item in items:
            by_len.setdefault(item[1].frames, []).append(item)
        samples = []
        for group in by_len.values():
            for i in range(0, len(group), self.batch):
                part = group[i:i + self.batch]
                video = np.stack([clip for _, _, clip in part])  # (b, T, S, S, 3) uint8
                ids = self.model.encode(video, bf16=self.bf16).cpu().numpy().astype(dtype)  # (b, F, h, w)
                samples += [(w, c, ids[j]) for j, (w, c, _) in enumerate(part)]
        return {"samples": samples, "rejects": rejects}


def write_shard(shard: ShardPlan, out: str, storage_cfg: StorageConfig, codebook_size: int, fps: float, size: int,
                crash: str | None, *encoded: dict[str, Any]) -> dict[str, Any]:
    """Write one shard (samples in plan order), then its part file; returns the part record."""
    crash_once("write", crash)
    storage = Storage(storage_cfg)
    got = {c.key: (w, c, ids) for e in encoded for (w, c, ids) in e["samples"]}
    rejects = [r for e in encoded for r in e["rejects"]]
    summary = None
    if got:
        with ShardWriter(storage, join(out, shard.name), codebook_size) as writer:
            for w in shard.windows:
                for c in w.clips:
                    if c.key not in got:
                        continue
                    meta = {"source": w.video, "line": w.line, "start": c.start, "fps": fps, "frames": c.frames,
                            "size": size, "manifest": w.extra}  # manifest: the line's other keys
                    writer.add(Sample(c.key, got[c.key][2], np.asarray(w.text), w.caption, meta))
        summary = writer.summary
    part = {"shard": shard.name, "fingerprint": shard.fingerprint, "summary": summary, "rejects": rejects,
            "clips": len(got), "windows": len(shard.windows)}
    storage.write_text(join(out, PARTS, shard.name + ".json"), json.dumps(part) + "\n")
    return part


def load_part(storage: Storage, out: str, shard: ShardPlan) -> dict[str, Any] | None:
    """The part record of a complete shard of this plan, or None (missing, stale or torn)."""
    uri = join(out, PARTS, shard.name + ".json")
    if not storage.exists(uri):
        return None
    try:
        part = json.loads(storage.read_text(uri))
    except (UserError, json.JSONDecodeError):
        return None
    if part.get("fingerprint") != shard.fingerprint:
        return None
    if part.get("summary") and not storage.exists(join(out, shard.name)):
        return None
    return part


# ----------------------------------------------------------------------------------------------
# Driver


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, unit="clip", desc="pretokenize", disable=not enabled, file=sys.stderr,
                mininterval=1.0, dynamic_ncols=True)


def init_ray(cfg: Config) -> bool:
    """Join or start Ray; True when this call started it (so the caller shuts it down)."""
    import ray
    if ray.is_initialized():
        return False
    address = cfg.pretokenize.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=cfg.pretokenize.local_cpus or None, include_dashboard=False,
                 logging_level=logging.WARNING)
    return True


def run_pretokenize(cfg: Config, shards: list[ShardPlan], tokenizer_bytes: bytes, codebook_size: int,
                    storage: Storage) -> dict[str, Any]:
    """Run the shards not yet complete on Ray (joined or started here when there are any);
    returns {"parts": [part record per shard], "skipped": shards already complete, "encoded": clips,
    "pipeline_s": seconds from Ray being up to the last shard written}."""
    import ray
    out = cfg.pretokenize.out
    parts: dict[str, dict[str, Any]] = {}
    todo = []
    for s in shards:
        part = load_part(storage, out, s)
        if part is None:
            todo.append(s)
        else:
            parts[s.name] = part
    skipped = len(parts)
    if skipped:
        log.info("pretokenize: %d of %d shards already complete, skipped", skipped, len(shards))
    if not todo:
        return {"parts": [parts[s.name] for s in shards], "skipped": skipped, "encoded": 0, "pipeline_s": 0.0}
    started = init_ray(cfg)
    t0 = time.time()
    try:
        encoded = _run(cfg, todo, tokenizer_bytes, codebook_size, storage, parts)
    finally:
        if started:
            ray.shutdown()
    return {"parts": [parts[s.name] for s in shards], "skipped": skipped, "encoded": encoded,
            "pipeline_s": time.time() - t0}


def _run(cfg: Config, todo: list[ShardPlan], tokenizer_bytes: bytes, codebook_size: int, storage: Storage,
         parts: dict[str, dict[str, Any]]) -> int:
    """The Ray pipeline over the shards still to do; fills `parts`, returns the clips encoded."""
    import ray
    p, d, out = cfg.pretokenize, cfg.data, cfg.pretokenize.out
    crash = os.environ.get(CRASH_ENV)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    n_enc = min(p.num_encoders, gpus) if gpus else p.num_encoders
    if not gpus and resources.get("CPU", 0) < n_enc * p.encoder_cpus + p.decode_cpus:
        raise UserError(f"pretokenize: the Ray cluster has {resources.get('CPU', 0):g} CPUs; {n_enc} encoder(s) x "
                        f"{p.encoder_cpus:g} + one decode task x {p.decode_cpus:g} need more "
                        "(lower pretokenize.num_encoders or encoder_cpus)")
    # A store that is down fails a task like a dead worker does: Ray re-runs it (StorageUnavailable
    # only; any other exception is a verdict or a bug, and a re-run would give the same).
    retry = {"max_retries": TASK_RETRIES, "retry_exceptions": [StorageUnavailable]}
    decode = ray.remote(num_cpus=p.decode_cpus, **retry)(decode_chunk)
    write = ray.remote(num_cpus=min(1.0, p.decode_cpus), **retry)(write_shard)
    Encoder = ray.remote(num_cpus=0 if gpus else p.encoder_cpus, num_gpus=1 if gpus else 0,
                         max_restarts=p.encoder_restarts, max_task_retries=p.encoder_restarts)(ClipEncoder)
    tok_ref = ray.put(tokenizer_bytes)
    def new_encoder():
        return Encoder.remote(tok_ref, p.encode_batch, p.bf16, int(p.encoder_cpus), crash)

    encoders = [new_encoder() for _ in range(n_enc)]
    busy = [0] * n_enc

    work = deque((s, chunks(s, p.encode_batch)) for s in todo)
    enc_inflight: dict[Any, tuple[int, int]] = {}  # encode ref -> (encoder, clips)
    writes: dict[Any, tuple[ShardPlan, list, list]] = {}  # write ref -> (shard, chunks, [(encode ref, i, actor)])
    attempts: dict[str, int] = {}
    open_shard: tuple[ShardPlan, list, deque, list] | None = None
    encoded = 0
    bar = _progress(sum(s.num_clips for s in todo), p.progress)
    try:
        while work or open_shard or enc_inflight or writes:
            # Submit chunks while under both bounds (chunks decoding/encoding; shards under way).
            while len(enc_inflight) < p.max_in_flight:
                if open_shard is None:
                    if not work or len(writes) >= p.max_shards_in_flight:
                        break
                    shard, cs = work.popleft()
                    open_shard = (shard, cs, deque(cs), [])
                shard, cs, pending, refs = open_shard
                if pending:
                    windows = pending.popleft()
                    dec = decode.remote(windows, d.fps, d.size, storage.cfg, crash)
                    i = min(range(n_enc), key=busy.__getitem__)
                    ref = encoders[i].encode.remote(dec)
                    busy[i] += 1
                    enc_inflight[ref] = (i, sum(len(w.clips) for w in windows))
                    refs.append((ref, i, encoders[i]))
                if not pending:
                    wref = write.remote(shard, out, storage.cfg, codebook_size, d.fps, d.size, crash,
                                        *[r for r, _, _ in refs])
                    writes[wref] = (shard, cs, refs)
                    open_shard = None
            ready, _ = ray.wait(list(enc_inflight) + list(writes), num_returns=1, fetch_local=False)
            for ref in ready:
                if ref in enc_inflight:
                    i, n = enc_inflight.pop(ref)
                    busy[i] -= 1
                    bar.update(n)
                    continue
                shard, cs, refs = writes.pop(ref)
                try:
                    part = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, StorageUnavailable):  # a read of the shard's or its write, past retries
                        raise StorageUnavailable(
                            f"pretokenize: shard {shard.name} not written, the store still failing after "
                            f"{TASK_RETRIES} retries ({cause}); its clips are not rejected and complete shards "
                            "are kept: run the same command again to resume") from None
                    # An input of the write failed: an encoder died past its restarts (or Ray gave up
                    # on it). The shard is the unit of retry: replace the dead encoders, redo it whole.
                    died = _replace_dead_encoders(refs, encoders, new_encoder)
                    if not (died or isinstance(getattr(err, "cause", None), ray.exceptions.RayActorError)) \
                            or attempts.get(shard.name, 0) >= 3:
                        raise
                    attempts[shard.name] = attempts.get(shard.name, 0) + 1
                    log.warning("shard %s: an encoder died (%s); redoing the shard (attempt %d)", shard.name,
                                type(err.cause).__name__ if hasattr(err, "cause") else type(err).__name__,
                                attempts[shard.name] + 1)
                    work.appendleft((shard, cs))
                    continue
                parts[shard.name] = part
                encoded += part["clips"]
    finally:
        bar.close()
        for e in encoders:
            ray.kill(e)
    return encoded


def _replace_dead_encoders(refs: list, encoders: list, new_encoder) -> bool:
    """Put a fresh actor in place of each encoder whose task among `refs` [(encode ref, encoder
    index, actor)] failed because of its actor (unless that actor was replaced already, by an
    earlier shard's failure); True when one of the shard's encoders failed so."""
    import ray

    died = False
    for ref, i, actor in refs:
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError:  # ActorDiedError, or an actor Ray gave up on
            died = True
            if encoders[i] is actor:
                ray.kill(actor)
                encoders[i] = new_encoder()
        except ray.exceptions.RayError:
            continue
    return died


def finish(cfg: Config, storage: Storage, result: dict[str, Any], plan_rejects: list[dict[str, Any]],
           meta: dict[str, Any], windows: int, held_out: int, wall_s: float) -> dict[str, Any]:
    """rejects.jsonl, summary.json, then index.json (last, atomically). Returns the summary."""
    out = cfg.pretokenize.out
    parts = result["parts"]
    rejects = plan_rejects + [r for part in parts for r in part["rejects"]]
    rejects.sort(key=lambda r: (r["line"] or 0, r.get("frames") or []))
    storage.write_text(join(out, REJECTS_NAME), "".join(json.dumps(r) + "\n" for r in rejects))
    summaries = [part["summary"] for part in parts if part["summary"]]
    by_stage: dict[str, int] = {}
    for r in rejects:
        by_stage[r["stage"]] = by_stage.get(r["stage"], 0) + 1
    clips = sum(s["num_samples"] for s in summaries)
    summary = {
        "videos": windows, "held_out_skipped": held_out, "clips": clips, "clips_encoded": result["encoded"],
        "video_tokens": sum(s["video_tokens"] for s in summaries),
        "text_tokens": sum(x["text_tokens"] for s in summaries for x in s["samples"]),
        "shards": len(summaries), "shards_skipped": result["skipped"], "rejects": len(rejects),
        "rejected_clips": sum(len(r.get("keys") or []) for r in rejects), "rejects_by_stage": by_stage,
        "wall_s": round(wall_s, 2), "clips_per_s": round(result["encoded"] / wall_s, 3) if wall_s > 0 else 0.0,
        "pipeline_s": round(result["pipeline_s"], 2),
        "pipeline_clips_per_s": round(result["encoded"] / result["pipeline_s"], 3) if result["pipeline_s"] else 0.0,
    }
    storage.write_text(join(out, SUMMARY_NAME), json.dumps(summary, indent=2) + "\n")
    write_index(storage, out, summaries, meta)
    return summary


__all__ = ["ClipSpec", "WindowPlan", "ShardPlan", "plan_window", "plan_shards", "decode_chunk", "ClipEncoder",
           "write_shard", "load_part", "init_ray", "run_pretokenize", "finish", "clip_key", "CRASH_ENV"]

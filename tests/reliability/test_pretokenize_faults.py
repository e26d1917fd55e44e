"""data_prep.pretokenize under faults, all real.

Every fault at once:
- 10% of the corpus is broken: one video truncated to half its bytes, one whose `moov` box is
  overwritten with random bytes;
- two Ray workers die: the tokenizer actor is SIGKILLed from outside (os.kill of its pid) while it
  holds its first batch (the job's LOONG_PRETOKENIZE_CRASH_ONCE "hold-encode" point: the worker
  writes its pid and waits there, so the kill lands at that point on any machine), and a
  shard-writer task exits hard at its start (the same hook's "write" point);
- manifest, videos and output live on the S3 server, reached through a proxy on 127.0.0.1 that
  answers 10% of requests with 500/503 or closes the connection (before or after forwarding).

The job must exit 0; every clip of a good video is in the shards exactly once, every clip of a bad
one is in rejects.jsonl with its reason, and every tar under the output prefix is complete and
listed in the index (no partial shard, no unfinished multipart upload).

S3 down mid-run (every request refused, counted in requests from the first part file written):
the job fails with one line or rides it out on Ray's retries, a re-run completes it, and no clip of
a good video is ever rejected for it.
"""

import io
import json
import os
import signal
import tarfile
import threading
import time
from pathlib import Path

import boto3
import psutil
import pytest

import data_prep.pretokenize as job
from loong_dist.config import StorageConfig
from loong_dist.data.manifest import ManifestEntry, read_manifest, write_manifest
from loong_dist.data.pretokenize import CRASH_ENV, PARTS, TASK_RETRIES, clip_key
from loong_dist.data.shards import MEMBERS, ShardIndex
from loong_dist.errors import StorageUnavailable
from loong_dist.io.storage import S3Url, Storage, join

FRAMES = (1, 17)


def _truncated(data: bytes) -> bytes:
    return data[:len(data) // 2]


def _bad_moov(data: bytes) -> bytes:
    at = data.find(b"moov")
    assert at > 0
    return data[:at + 4] + os.urandom(len(data) - at - 4)


DAMAGE = {"truncated": _truncated, "moov overwritten": _bad_moov, "missing": lambda data: None}


class KillWhenHeld(threading.Thread):
    """SIGKILLs the worker that the job's "hold-<stage>" point holds (see CRASH_ENV), as soon as its
    marker DIR/held-<stage> names it; only a process of this test (Ray's workers are its children)."""

    def __init__(self, folder: Path, stage: str):
        super().__init__(daemon=True)
        self.marker, self.killed, self.refused = folder / f"held-{stage}", [], []
        self._done = threading.Event()

    def run(self):
        while not self._done.is_set():
            if self.marker.exists():  # written aside and linked in: whole when it appears
                pid = int(self.marker.read_text())
                if pid in {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                else:
                    self.refused.append(pid)
                return
            self._done.wait(0.05)  # waiting for the marker: the kill point is the job's, not a time

    def stop(self):
        self._done.set()
        self.join(5)


def _upload_corpus(assets, direct: Storage, bucket: str, n: int, damage: dict[int, str]) -> tuple[list, dict]:
    """The first `n` synthetic clips as s3 objects, with a manifest; `damage`: entry index ->
    "truncated", "moov overwritten" or "missing" (listed in the manifest, never uploaded). Returns
    (manifest entries, {uri: damage})."""
    entries, _ = read_manifest(str(assets / "syn" / "manifest.jsonl"))
    moved, bad = [], {}
    for i, e in enumerate(entries[:n]):
        uri = join(bucket, "videos", Path(e.video).name)
        data = Path(e.video).read_bytes()
        if i in damage:
            bad[uri] = damage[i]
            data = DAMAGE[damage[i]](data)
        if data is not None:
            direct.write_bytes(uri, data)
        moved.append(ManifestEntry(uri, e.caption, e.start, e.end, e.extra, e.line))
    return moved, bad


def _shard_keys(direct: Storage, out: str) -> list[str]:
    """The sample keys of every tar under `out` (a torn tar fails here)."""
    keys = []
    for uri in direct.list(out + "/"):
        if uri.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(direct.read_bytes(uri))) as tar:
                keys += [m.name.split(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".json")]
    return keys


def test_pretokenize_completes_exactly_once_under_faults(pretok_assets, s3_endpoint, s3_env, s3_bucket, fault_proxy,
                                                         tmp_path, monkeypatch):
    a = pretok_assets
    direct = Storage(StorageConfig(endpoint_url=s3_endpoint))  # setup and checks bypass the proxy
    moved, bad = _upload_corpus(a, direct, s3_bucket, 20, {7: "truncated", 15: "moov overwritten"})  # 2 of 20
    manifest = write_manifest(join(s3_bucket, "manifest.jsonl"), moved, direct)
    out = join(s3_bucket, "shards")

    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
    monkeypatch.setenv(CRASH_ENV, f"{tmp_path}:write,hold-encode")
    # RAY_AUTH_MODE stays as it is: Ray fixes the auth mode of this process at its first ray.init (and
    # writes RAY_AUTH_MODE=token into os.environ); a later in-process session in another mode makes
    # the driver refuse the GCS's calls, so the GCS destroys every actor it owns ("never ran").
    fault_proxy.rate = 0.1
    killer = KillWhenHeld(tmp_path, "encode")
    killer.start()
    t0 = time.time()
    try:
        rc = job.main(["--manifest", manifest, "--tokenizer", str(a / "tok.safetensors"),
                       "--text-tokenizer", str(a / "text.model"), "--out", out, "--frames", "1,17", "--fps", "8",
                       "--size", "32", "pretokenize.local_cpus=2", "pretokenize.encode_batch=4",
                       "pretokenize.shard_target_mb=0.005", "pretokenize.max_in_flight=2",
                       "pretokenize.progress=false", "pretokenize.bf16=false"])
    finally:
        killer.stop()
        fault_proxy.rate = 0.0
    wall = time.time() - t0
    assert rc == 0
    # The faults really happened.
    assert len(killer.killed) == 1 and not killer.refused and (tmp_path / "crashed-write").exists()
    assert fault_proxy.faults_injected >= 5, fault_proxy.counts
    print(f"\npretokenize under faults: {wall:.1f} s, proxy {fault_proxy.counts}, encoder pid killed {killer.killed}")

    # Every clip of a good video exactly once; none of a bad one.
    expected = {clip_key(e.video, 0.0, t) for e in moved if e.video not in bad for t in FRAMES}
    bad_keys = {e.video: {clip_key(e.video, 0.0, t) for t in FRAMES} for e in moved if e.video in bad}
    index = ShardIndex.load(out, direct)
    tar_keys, listed = [], {}
    for uri in direct.list(out + "/"):
        name = uri.rsplit("/", 1)[-1]
        if not name.endswith(".tar"):
            continue
        with tarfile.open(fileobj=io.BytesIO(direct.read_bytes(uri))) as tar:  # a torn tar fails here
            members = [m for m in tar.getmembers()]
        assert all(m.isreg() for m in members)
        keys = [m.name.split(".", 1)[0] for m in members if m.name.endswith(".json")]
        assert sorted(m.name for m in members) == sorted(f"{k}.{s}" for k in keys for s in MEMBERS), uri
        tar_keys += keys
        listed[name] = len(keys)
    assert len(tar_keys) == len(set(tar_keys)) and set(tar_keys) == expected, (len(tar_keys), len(expected))
    by_shard: dict[str, int] = {}
    for ref in index.samples:
        by_shard[ref.shard] = by_shard.get(ref.shard, 0) + 1
    assert by_shard == listed  # every tar is in the index, with all its samples
    assert sorted(r.key for r in index.samples) == sorted(expected)

    # Every bad video in rejects.jsonl, with its reason.
    rejects = [json.loads(x) for x in direct.read_text(join(out, "rejects.jsonl")).splitlines()]
    for video, keys in bad_keys.items():
        mine = [r for r in rejects if r["video"] == video]
        assert {k for r in mine for k in r["keys"]} == keys, (video, mine)
        reasons = ("not a readable video", "no frames", "no video stream")  # what each kind of damage gives
        assert all(r["stage"] == "decode" and r["reason"].startswith(video) and any(x in r["reason"] for x in reasons)
                   for r in mine), mine
    assert {r["video"] for r in rejects} == set(bad)
    summary = json.loads(direct.read_text(join(out, "summary.json")))
    assert summary["clips"] == len(expected) and summary["rejected_clips"] == 2 * len(bad)

    # No unfinished multipart upload left behind.
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    assert client.list_multipart_uploads(Bucket=S3Url.parse(out).bucket).get("Uploads", []) == []


def test_store_down_mid_run_never_rejects_a_good_clip(pretok_assets, s3_endpoint, s3_env, s3_bucket, fault_proxy,
                                                    tmp_path, monkeypatch):
    """S3 refuses every request from the one after the first part file lands (counted in requests,
    whatever the machine's speed). `storage.max_attempts=1`: each refused request fails one try of a
    decode or write task, and Ray gives a task 1 + TASK_RETRIES tries.
    - An outage that outlasts them: the job stops with one line naming the shard, whose part file is
      not written; nothing else is finished (no rejects.jsonl, no index).
    - The same command again, meeting an outage of TASK_RETRIES refused requests (fewer than one
      task's tries): Ray's retries ride it out and the run completes, the complete shard skipped.
    Every good clip ends up in the shards exactly once; the only rejects, in part files and in
    rejects.jsonl, are the damaged and the missing video, with their own reasons."""
    a = pretok_assets
    direct = Storage(StorageConfig(endpoint_url=s3_endpoint))  # setup and checks bypass the proxy
    moved, bad = _upload_corpus(a, direct, s3_bucket, 6, {1: "truncated", 4: "missing"})
    manifest = write_manifest(join(s3_bucket, "manifest.jsonl"), moved, direct)
    out = join(s3_bucket, "shards")
    parts_put = f"PUT /{S3Url.parse(out).bucket}/shards/{PARTS}/"
    args = ["--manifest", manifest, "--tokenizer", str(a / "tok.safetensors"), "--text-tokenizer",
            str(a / "text.model"), "--out", out, "--frames", "1,17", "--fps", "8", "--size", "32",
            "pretokenize.local_cpus=2", "pretokenize.encode_batch=1", "pretokenize.shard_target_mb=0.005",
            "pretokenize.progress=false", "pretokenize.bf16=false", "storage.max_attempts=1"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
    fault_proxy.rate = 0.0

    def parts() -> dict[str, dict]:
        return {uri.rsplit("/", 1)[-1]: json.loads(direct.read_text(uri)) for uri in direct.list(join(out, PARTS))}

    def assert_only_bad_rejected(rejects: list[dict]) -> None:
        assert {r["video"] for r in rejects} <= set(bad), rejects
        for r in rejects:  # what each kind of damage gives
            want = ("no such object",) if bad[r["video"]] == "missing" else ("not a readable video", "no frames")
            assert r["stage"] == "decode" and any(x in r["reason"] for x in want), r

    # 1. Down for longer than every retry.
    fault_proxy.outage(after=parts_put)
    try:
        with pytest.raises(StorageUnavailable) as failed:
            job.main(args)
    finally:
        fault_proxy.end_outage()
    message = str(failed.value)
    assert "\n" not in message and message.startswith("pretokenize: shard shard-"), message
    assert "run the same command again" in message and fault_proxy.refused >= 1 + TASK_RETRIES
    stopped_on = message.split()[2]
    done = parts()
    assert len(done) == 1 and stopped_on + ".json" not in done, (stopped_on, list(done))
    assert_only_bad_rejected([r for part in done.values() for r in part["rejects"]])
    assert not direct.exists(join(out, "rejects.jsonl")) and not direct.exists(join(out, "index.json"))

    # 2. The same command, down for fewer requests than one task's tries.
    refused_before = fault_proxy.refused
    fault_proxy.outage(after=parts_put, requests=TASK_RETRIES)
    try:
        assert job.main(args) == 0
    finally:
        fault_proxy.end_outage()
    assert fault_proxy.refused - refused_before == TASK_RETRIES, fault_proxy.counts
    summary = json.loads(direct.read_text(join(out, "summary.json")))
    expected = {clip_key(e.video, 0.0, t) for e in moved if e.video not in bad for t in FRAMES}
    keys = _shard_keys(direct, out)
    assert len(keys) == len(set(keys)) and set(keys) == expected, (len(keys), len(expected))
    assert sorted(r.key for r in ShardIndex.load(out, direct).samples) == sorted(expected)
    assert summary["shards_skipped"] == 1 and summary["clips"] == len(expected)
    rejects = [json.loads(x) for x in direct.read_text(join(out, "rejects.jsonl")).splitlines()]
    assert {r["video"] for r in rejects} == set(bad)
    assert_only_bad_rejected(rejects)
    assert_only_bad_rejected([r for part in parts().values() for r in part["rejects"]])

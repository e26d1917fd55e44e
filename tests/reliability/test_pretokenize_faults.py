"""data_prep.pretokenize under every fault at once, all real:

- 10% of the corpus is broken: one video truncated to half its bytes, one whose `moov` box is
  overwritten with random bytes;
- two Ray workers die: the tokenizer actor is SIGKILLed from outside (os.kill of its pid, found
  among this test's own child processes) while the job runs, and a shard-writer task exits hard at
  its start (the job's own LOONG_PRETOKENIZE_CRASH_ONCE hook);
- manifest, videos and output live on the S3 server, reached through a proxy on 127.0.0.1 that
  answers 10% of requests with 500/503 or closes the connection (before or after forwarding).

The job must exit 0; every clip of a good video is in the shards exactly once, every clip of a bad
one is in rejects.jsonl with its reason, and every tar under the output prefix is complete and
listed in the index (no partial shard, no unfinished multipart upload).
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

import data_prep.pretokenize as job
from loong_dist.config import StorageConfig
from loong_dist.data.manifest import ManifestEntry, read_manifest, write_manifest
from loong_dist.data.pretokenize import CRASH_ENV, clip_key
from loong_dist.data.shards import MEMBERS, ShardIndex
from loong_dist.io.storage import S3Url, Storage, join

FRAMES = (1, 17)


def _truncated(data: bytes) -> bytes:
    return data[:len(data) // 2]


def _bad_moov(data: bytes) -> bytes:
    at = data.find(b"moov")
    assert at > 0
    return data[:at + 4] + os.urandom(len(data) - at - 4)


class EncoderKiller(threading.Thread):
    """SIGKILLs the tokenizer actor (a child process of this test whose title names ClipEncoder)
    once, after it has lived `after_s` seconds."""

    def __init__(self, after_s: float = 2.0):
        super().__init__(daemon=True)
        self.after_s, self.killed, self._done = after_s, [], threading.Event()

    def run(self):
        seen: dict[int, float] = {}
        me = psutil.Process(os.getpid())
        while not self._done.is_set() and not self.killed:
            for p in me.children(recursive=True):
                try:
                    if "ClipEncoder" in " ".join(p.cmdline()):
                        seen.setdefault(p.pid, time.time())
                        if time.time() - seen[p.pid] >= self.after_s:
                            os.kill(p.pid, signal.SIGKILL)
                            self.killed.append(p.pid)
                            break
                except (psutil.Error, ProcessLookupError):
                    pass
            self._done.wait(0.2)

    def stop(self):
        self._done.set()
        self.join(5)


def test_pretokenize_completes_exactly_once_under_faults(pretok_assets, s3_endpoint, s3_env, s3_bucket, fault_proxy,
                                                         tmp_path, monkeypatch):
    a = pretok_assets
    direct = Storage(StorageConfig(endpoint_url=s3_endpoint))  # setup and checks bypass the proxy
    entries, _ = read_manifest(str(a / "syn" / "manifest.jsonl"))
    entries = entries[:20]
    moved, bad = [], {}
    for i, e in enumerate(entries):
        uri = join(s3_bucket, "videos", Path(e.video).name)
        data = Path(e.video).read_bytes()
        if i in (7, 15):  # 2 of 20 videos broken
            data = (_truncated if i == 7 else _bad_moov)(data)
            bad[uri] = "truncated" if i == 7 else "moov overwritten"
        direct.write_bytes(uri, data)
        moved.append(ManifestEntry(uri, e.caption, e.start, e.end, e.extra, e.line))
    manifest = write_manifest(join(s3_bucket, "manifest.jsonl"), moved, direct)
    out = join(s3_bucket, "shards")

    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
    monkeypatch.setenv(CRASH_ENV, f"{tmp_path}:write")
    # RAY_AUTH_MODE stays as it is: Ray fixes the auth mode of this process at its first ray.init (and
    # writes RAY_AUTH_MODE=token into os.environ); a later in-process session in another mode makes
    # the driver refuse the GCS's calls, so the GCS destroys every actor it owns ("never ran").
    fault_proxy.rate = 0.1
    killer = EncoderKiller()
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
    assert len(killer.killed) == 1 and (tmp_path / "crashed-write").exists()
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

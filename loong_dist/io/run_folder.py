"""A job's output folder that may live on S3: files are made on local disk and published to it.

    run = RunFolder("s3://runs/stage1", storage)      # or a local folder
    path = run.path("metrics.jsonl")                  # where this node writes it
    ... write path ...
    run.publish("metrics.jsonl")                       # -> s3://runs/stage1/metrics.jsonl
    run.fetch("metrics.jsonl")                         # the published copy back onto this node

A local `out` is the folder itself: `path()` is its file and `publish()` does nothing. An s3://
`out` gets a scratch folder on this node's disk, under $LOONG_CACHE_DIR/scratch (default
~/.cache/loong/scratch), named after the URI; every node of a cluster has its own, and nothing
but the published objects is shared. Nothing is ever written to a local folder named `s3:`.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from loong_dist.io.storage import Storage, is_s3, join


def scratch_root() -> Path:
    """This node's scratch space for remote run folders."""
    root = os.environ.get("LOONG_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "loong")
    return Path(root) / "scratch"


def scratch_for(uri: str) -> Path:
    """The scratch folder of a remote URI: readable, and unique per URI."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", uri[len("s3://"):].strip("/"))[-80:]
    return scratch_root() / f"{tail}-{hashlib.sha1(uri.encode()).hexdigest()[:10]}"


class RunFolder:
    def __init__(self, out: str | os.PathLike, storage: Storage | None = None):
        self.uri = str(out).rstrip("/") if is_s3(out) else str(out)
        self.storage = storage or Storage()
        self.remote = is_s3(self.uri)
        self.local = scratch_for(self.uri) if self.remote else Path(self.uri)

    def __str__(self) -> str:
        return self.uri

    def path(self, *parts: str) -> Path:
        """Where this node reads and writes the file (the folder's own, or its scratch copy)."""
        return self.local.joinpath(*parts)

    def uri_of(self, *parts: str) -> str:
        """The file's place in the run folder (s3:// URI or local path)."""
        return join(self.uri, *parts)

    def publish(self, *parts: str) -> None:
        """Upload the local file, or every file under the local folder, at `parts` to the run
        folder (atomically per object); a local run folder has nothing to do."""
        if not self.remote:
            return
        src = self.path(*parts)
        files = [p for p in sorted(src.rglob("*")) if p.is_file()] if src.is_dir() else [src] if src.exists() else []
        for f in files:
            self.storage.upload_file(f, join(self.uri, *f.relative_to(self.local).parts))

    def fetch(self, *parts: str) -> bool:
        """Copy the run folder's file at `parts` onto this node; False if it has none."""
        if not self.remote:
            return self.path(*parts).exists()
        uri = self.uri_of(*parts)
        if not self.storage.exists(uri):
            return False
        self.storage.download_file(uri, self.path(*parts))
        return True

    def write_text(self, name: str, text: str) -> None:
        """Write a small file locally and publish it."""
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.storage.write_text(str(path), text)
        self.publish(name)


def first_on_its_disk() -> bool:
    """Whether this rank is the one of its disk that moves files (downloads, uploads, `latest`
    pointers, pruning): the lowest rank with its (host, scratch folder). Not LOCAL_RANK, which
    follows node IPs: two nodes with one IP (a test cluster on 127.0.0.1, containers sharing a
    host network) would leave the second node's disk to no one. A collective when distributed."""
    import socket

    import torch.distributed as dist

    if not dist.is_initialized():
        return True
    mine = (socket.gethostname(), str(scratch_root().resolve()))
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone.index(mine) == dist.get_rank()


def local_input(uri: str, storage: Storage) -> Path:
    """A file to read that may be on S3: the path itself when local, else a fresh copy in this
    node's scratch (downloaded atomically: ranks sharing a node may ask at once)."""
    if not is_s3(uri):
        return Path(uri)
    path = scratch_for(uri) / uri.rstrip("/").rsplit("/", 1)[-1]
    storage.download_file(uri, path)
    return path


__all__ = ["RunFolder", "first_on_its_disk", "local_input", "scratch_for", "scratch_root"]

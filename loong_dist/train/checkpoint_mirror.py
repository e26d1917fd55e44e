"""A mirror of the local checkpoint folder at a URI (s3:// prefix or another folder),
and the resume decision that every rank shares.

Every rank writes its checkpoint files to its node's disk. With a mirror (`train.checkpoint_uri`, or the
run folder's checkpoints/ when the run folder is on S3), each saved tag folder is uploaded after
the save, and `latest` (the tag name) is written last, so a mirror read at any time names a
complete checkpoint. Which tag a run resumes from is decided once, on rank 0, and broadcast:
ranks on nodes without a shared disk would otherwise each read their own `latest` and disagree.
A node completes the chosen tag from the mirror: the files it lacks (a new node: all of them; a
node of a multi-node run: the other nodes' shares, since a layout-free checkpoint is read whole).

    publish_checkpoint(storage, ckpt_dir, uri, tag, keep, ...)   # after every rank saved `tag`
    tag = resume_tag(storage, ckpt_dir, uri, is_main)             # the same on every rank
    fetch_tag(storage, ckpt_dir, uri, tag, node_main)             # then read ckpt_dir/tag
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch.distributed as dist

from loong_dist.errors import UserError
from loong_dist.io.storage import Storage, join


def upload_tag(storage: Storage, ckpt_dir: Path, uri: str, tag: str) -> int:
    """Upload every file of ckpt_dir/tag (this node's share of a multi-node save); returns the count."""
    files = [p for p in sorted((ckpt_dir / tag).rglob("*")) if p.is_file()]
    for p in files:
        storage.upload_file(p, join(uri, tag, p.relative_to(ckpt_dir / tag).as_posix()))
    return len(files)


def publish_latest(storage: Storage, uri: str, tag: str, keep: int) -> None:
    """Point the mirror at `tag`, then drop its tags older than the newest `keep`."""
    storage.write_text(join(uri, "latest"), tag)
    prefix = uri.rstrip("/") + "/"
    tags = sorted({f[len(prefix):].split("/")[0] for f in storage.list(uri)} - {"latest"})
    for old in tags[:-keep]:
        for f in storage.list(join(uri, old)):
            storage.delete(f)


def download_tag(storage: Storage, uri: str, ckpt_dir: Path, tag: str) -> int:
    """Copy into ckpt_dir/tag the files of the mirror's `tag` that it lacks (every rank's files of
    it: a layout-free checkpoint is read whole by every node); returns the count."""
    prefix = join(uri, tag).rstrip("/") + "/"
    files = storage.list(join(uri, tag))
    if not files:
        raise UserError(f"{join(uri, tag)}: the checkpoint mirror holds no files of {tag}")
    if join(uri, tag, ".metadata") not in files and storage.exists(join(uri, tag, ".metadata")):
        files.append(join(uri, tag, ".metadata"))  # DCP's index: a local folder's listing leaves dot-files out
    missing = [f for f in files if not (ckpt_dir / tag / f[len(prefix):]).is_file()]
    for f in missing:
        storage.download_file(f, ckpt_dir / tag / f[len(prefix):])
    return len(missing)


def download_latest(storage: Storage, uri: str, ckpt_dir: Path) -> str | None:
    """Copy the mirror's latest tag into ckpt_dir (and its `latest` file); None if it has none."""
    if not storage.exists(join(uri, "latest")):
        return None
    tag = storage.read_text(join(uri, "latest")).strip()
    download_tag(storage, uri, ckpt_dir, tag)
    (ckpt_dir / "latest").write_text(tag)
    return tag


def write_latest(ckpt_dir: Path, tag: str) -> None:
    """Point DeepSpeed's `latest` file at `tag` atomically (temporary file, fsync, rename)."""
    tmp = ckpt_dir / ".latest.tmp"
    with open(tmp, "w") as f:
        f.write(tag)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(ckpt_dir / "latest")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def publish_checkpoint(storage: Storage, ckpt_dir: Path, uri: str, tag: str, keep: int, is_main: bool,
                       node_main: bool) -> None:
    """After every rank wrote its files of `tag` (a collective): each node points its `latest` at
    it, uploads its ranks' files to the mirror (if any), then rank 0 publishes the mirror's
    `latest`; every node prunes its own disk to the newest `keep` tags."""
    _barrier()
    if node_main:  # every node's own disk holds its ranks' files: each gets its pointer
        write_latest(ckpt_dir, tag)
    _barrier()
    if uri:  # every node uploads what its ranks wrote; `latest` goes last, once all are up
        if node_main:
            upload_tag(storage, ckpt_dir, uri, tag)
        _barrier()
        if is_main:
            publish_latest(storage, uri, tag, keep)
    if node_main:  # pruned on every node, not on rank 0's disk alone
        tags = sorted(p.name for p in ckpt_dir.glob("step*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)


def resume_tag(storage: Storage, ckpt_dir: Path, uri: str, is_main: bool) -> str | None:
    """The checkpoint to continue from, decided on rank 0 and returned on every rank (a
    collective): the mirror's latest when there is a mirror, else the one rank 0's disk names."""
    tag = None
    if is_main:
        if uri and storage.exists(join(uri, "latest")):
            tag = storage.read_text(join(uri, "latest")).strip()
        elif (ckpt_dir / "latest").exists():
            tag = (ckpt_dir / "latest").read_text().strip()
    if dist.is_initialized():
        box = [tag]
        dist.broadcast_object_list(box, src=0)
        tag = box[0]
    return tag


def fetch_tag(storage: Storage, ckpt_dir: Path, uri: str, tag: str, node_main: bool) -> bool:
    """Make this node's disk hold all of `tag` (the files it lacks come from the mirror: other
    nodes' shares, or the whole tag on a new node) and name it `latest` (a collective). True when
    anything was downloaded."""
    fetched = 0
    if node_main:
        if uri:
            fetched = download_tag(storage, uri, ckpt_dir, tag)
        elif not (ckpt_dir / tag).is_dir():
            raise UserError(f"checkpoint {tag}: rank 0 resumes from it, this node's {ckpt_dir} does not hold it, "
                            f"and there is no mirror (train.checkpoint_uri) to fetch it from")
        write_latest(ckpt_dir, tag)
    _barrier()
    return fetched > 0


__all__ = ["download_latest", "download_tag", "fetch_tag", "publish_checkpoint", "publish_latest", "resume_tag",
           "upload_tag", "write_latest"]

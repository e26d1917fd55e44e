"""A mirror of the local DeepSpeed checkpoint folder at a URI (s3:// prefix or another folder).

DeepSpeed writes checkpoints to local disk only. With `train.checkpoint_uri` set, each saved tag
folder is uploaded after the save, and `latest` (the tag name) is written last, so a mirror read
at any time names a complete checkpoint. A run that finds no checkpoint on its local disk (a new
node, a lost volume) downloads the mirror's latest tag before resuming.

    upload_tag(storage, ckpt_dir, uri, tag)     # on one rank per node: its files of the tag
    publish_latest(storage, uri, tag, keep)     # on global rank 0, after every node uploaded
    download_latest(storage, uri, ckpt_dir)     # on one rank per node, before load_checkpoint
"""

from __future__ import annotations

from pathlib import Path

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


def download_tag(storage: Storage, uri: str, ckpt_dir: Path, tag: str) -> None:
    """Copy the mirror's `tag` folder into ckpt_dir/tag (every rank's files of it)."""
    prefix = join(uri, tag).rstrip("/") + "/"
    files = storage.list(join(uri, tag))
    if not files:
        raise UserError(f"{join(uri, tag)}: the checkpoint mirror holds no files of {tag}")
    for f in files:
        storage.download_file(f, ckpt_dir / tag / f[len(prefix):])


def download_latest(storage: Storage, uri: str, ckpt_dir: Path) -> str | None:
    """Copy the mirror's latest tag into ckpt_dir (and its `latest` file); None if it has none."""
    if not storage.exists(join(uri, "latest")):
        return None
    tag = storage.read_text(join(uri, "latest")).strip()
    download_tag(storage, uri, ckpt_dir, tag)
    (ckpt_dir / "latest").write_text(tag)
    return tag


__all__ = ["download_latest", "download_tag", "publish_latest", "upload_tag"]

"""Copy a run's checkpoint, in its layout-free form, to a run folder that any layout resumes from.

    python -m jobs.convert_checkpoint --from RUN [--to DIR]
    python -m jobs.convert_checkpoint --from s3://bucket/runs/a/checkpoints/step00002000 --to runs/b

RUN is a run folder (its latest checkpoint), a run's checkpoints/ folder, or one checkpoint's
folder (checkpoints/stepN); DIR a run folder: the checkpoint lands in DIR/checkpoints/stepN and
DIR/checkpoints/latest names it, last. Either may be an s3:// prefix. `python -m jobs.train` with
run.out_dir=DIR then resumes it on any TP x DP x ZeRO layout, on any number of ranks, as long as
the global batch stays (train.global_batch_tokens); so do jobs.train_tokenizer and
jobs.train_upscaler their runs' checkpoints (`--out DIR`). The files are checked against the
checkpoint's DCP metadata first: a checkpoint with a rank's file missing is refused, not copied.

A checkpoint written by loong-dist before layout-free checkpoints (DeepSpeed's own files) is
refused with the way forward: resume it once on the layout that wrote it, and its next checkpoint
is layout-free.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from loong_dist.cli import log, run_job
from loong_dist.errors import UserError
from loong_dist.io.storage import Storage, join

META = "meta.json"
DCP_METADATA = ".metadata"


def checkpoint_folder(storage: Storage, src: str) -> str:
    """The checkpoint folder `src` names: itself, or the one `latest` names in it or in its checkpoints/."""
    src = src.rstrip("/")
    if storage.exists(join(src, META)):
        return src
    for folder in (join(src, "checkpoints"), src):
        if storage.exists(join(folder, "latest")):
            return join(folder, storage.read_text(join(folder, "latest")).strip())
    if storage.exists(join(src, "mp_rank_00_model_states.pt")) or storage.list(join(src, "checkpoints")):
        raise UserError(f"{src}: not a layout-free checkpoint (DeepSpeed's own files, written by loong-dist before "
                        f"layout-free checkpoints): resume it once on the layout that wrote it, and its next "
                        f"checkpoint is layout-free")
    raise UserError(f"{src}: no checkpoint there (neither {META} nor checkpoints/latest)")


def checked_files(storage: Storage, folder: str) -> list[str]:
    """Every file of the checkpoint, after checking that the DCP metadata's files are all there."""
    from torch.distributed.checkpoint import FileSystemReader

    files = storage.list(folder)
    if not storage.exists(join(folder, META)):
        raise UserError(f"{folder}: not a layout-free checkpoint ({META} missing)")
    if not storage.exists(join(folder, DCP_METADATA)):
        raise UserError(f"{folder}: its DCP metadata ({DCP_METADATA}) is missing: the save did not finish")
    files = sorted(set(files) | {join(folder, DCP_METADATA)})
    with tempfile.TemporaryDirectory(prefix="loong-convert-") as tmp:
        storage.download_file(join(folder, DCP_METADATA), Path(tmp) / DCP_METADATA)
        meta = FileSystemReader(tmp).read_metadata()
    names = {f[len(folder.rstrip("/")) + 1:] for f in files}
    needed = {info.relative_path for info in meta.storage_data.values()}
    missing = sorted(needed - names)
    if missing:
        raise UserError(f"{folder}: {len(missing)} file(s) of the checkpoint are missing, e.g. {missing[0]} (a rank's "
                        f"share that was never uploaded?)")
    return files


def convert(storage: Storage, src: str, dst: str) -> str:
    folder = checkpoint_folder(storage, src)
    tag = folder.rstrip("/").rsplit("/", 1)[-1]
    files = checked_files(storage, folder)
    meta = json.loads(storage.read_text(join(folder, META)))
    out = join(dst, "checkpoints", tag)
    with tempfile.TemporaryDirectory(prefix="loong-convert-") as tmp:
        for f in files:  # through a local file: any of local and S3 on either side
            rel = f[len(folder.rstrip("/")) + 1:]
            local = storage.download_file(f, Path(tmp) / "file")
            storage.upload_file(local, join(out, rel))
    storage.write_text(join(dst, "checkpoints", "latest"), tag)
    p, gb = meta["parallel"], meta["global_batch"]  # the transformer's batch is in tokens, the others' in samples
    batch = f"{gb['tokens']} tokens" if "tokens" in gb else f"{gb['samples']} samples"
    log.info("%s: step %d, written at TP=%d x DP=%d, ZeRO-%d; %d files -> %s (global batch %s: resume with "
             "run.out_dir=%s%s on any layout)", folder, meta["step"], p.get("tp", 1), p["dp"], p["zero"], len(files),
             out, batch, dst, f" train.global_batch_tokens={gb['tokens']}" if gb.get("fixed") else "")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.convert_checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="src", required=True,
                        help="run folder, checkpoints/ folder or checkpoint folder")
    parser.add_argument("--to", dest="dst", required=True, help="run folder to resume from (local or s3://)")
    args = parser.parse_args(argv)
    convert(Storage(), args.src, args.dst)
    return 0


if __name__ == "__main__":
    run_job(main)

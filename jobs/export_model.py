"""Re-export a trained transformer for shipping: its weights in a smaller float type and the
sampling settings measured to work best recorded in it.

    python -m jobs.export_model --from RUN/model.safetensors --to checkpoints/NAME/model.safetensors \\
        [--dtype bf16] [--config C] [generate.top_k=20 generate.cfg_scale=3 ...]

The recommended sampling settings are the file's own (its stage config's `generate` section),
then those of --config files and key=value items: usually the winners of a sampling sweep made
after training. Everything else the file carries (text tokenizer, video tokenizer hash, clip size
and frame rate, step, run) is kept. Weights are cast to --dtype (bf16 halves an fp32 export);
`jobs.generate` computes in its own `generate.precision` whatever the file holds. Either path may
be s3://.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from loong_dist.cli import job_parser, log, resolve_config, run_job
from loong_dist.errors import UserError
from loong_dist.io.storage import Storage, is_s3

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def export(src: Path, dst: str, dtype: str, generate: dict, storage: Storage) -> dict:
    """Write the model file `src` to `dst` (a path or s3:// URI) with its weights in `dtype` and
    `generate` as its recommended sampling settings; returns what changed."""
    import torch
    from safetensors import safe_open

    from loong_dist.models.ar.checkpoint import read_model_meta, save_model

    cfg, layout, extra = read_model_meta(src)
    with safe_open(str(src), framework="pt", device="cpu") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cast = getattr(torch, DTYPES[dtype])
    tensors = {k: v.to(cast) if v.is_floating_point() else v for k, v in tensors.items()}
    before = extra.get("generate") or {}
    extra = dict(extra, generate=generate, weights_dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="loong-export-") as tmp:
        out = save_model(tensors, cfg, layout, Path(tmp) / "model.safetensors" if is_s3(dst) else dst, extra)
        size = out.stat().st_size
        if is_s3(dst):
            storage.upload_file(out, dst)
    return {"bytes": size, "parameters": sum(t.numel() for t in tensors.values()),
            "generate_changed": {k: (before.get(k), v) for k, v in generate.items() if before.get(k) != v}}


def main(argv: list[str] | None = None) -> int:
    from loong_dist.inference.carried import generation_defaults
    from loong_dist.models.ar.checkpoint import read_model_meta
    from loong_dist.train.trainer import recommended_generation

    parser = job_parser("python -m jobs.export_model", __doc__.splitlines()[0], {}, sections=("generate",))
    parser.add_argument("--from", dest="src", required=True, metavar="MODEL", help="model.safetensors from jobs.train")
    parser.add_argument("--to", dest="dst", required=True, metavar="FILE", help="where the shipped file goes")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="float type of the shipped weights")
    args = parser.parse_intermixed_args(argv)
    if not args.dst.endswith(".safetensors"):
        raise UserError(f"--to {args.dst}: expected a .safetensors file name")
    storage = Storage()
    with tempfile.TemporaryDirectory(prefix="loong-export-") as tmp:
        src = storage.download_file(args.src, Path(tmp) / "model.safetensors") if is_s3(args.src) else Path(args.src)
        cfg = resolve_config(args, {}, under=generation_defaults(read_model_meta(src)[2]))
        result = export(src, args.dst, args.dtype, recommended_generation(cfg.generate), storage)
    log.info("%s -> %s: %d parameters in %s, %.1f MB; recommended sampling: %s", args.src, args.dst,
             result["parameters"], args.dtype, result["bytes"] / 1e6,
             ", ".join(f"{k} {a} -> {b}" for k, (a, b) in result["generate_changed"].items()) or "as trained")
    return 0


if __name__ == "__main__":
    run_job(main)

"""Re-export a trained transformer for shipping: its weights in a smaller float type and the
sampling settings measured to work best recorded in it.

    python -m jobs.export_model --from RUN/model.safetensors --to checkpoints/NAME/model.safetensors \\
        [--average OTHER_RUN/model.safetensors ...] [--dtype bf16] [--config C] [generate.top_k=20 ...]

The recommended sampling settings are the file's own (its stage config's `generate` section),
then those of --config files and key=value items: usually the winners of a sampling sweep made
after training. Everything else the file carries (text tokenizer, video tokenizer hash, clip size
and frame rate, step, run) is kept. Weights are cast to --dtype (bf16 halves an fp32 export);
`jobs.generate` computes in its own `generate.precision` whatever the file holds. Any path may
be s3://.

--average: the shipped weights are the uniform mean of --from's and each --average file's (a weight
soup, Wortsman et al. 2022: runs fine-tuned from one start, here on the same batches with different
recipes, averaged in float64). The files must hold the same model config, vocabulary layout and
tensors; what they carry besides the weights is --from's, plus `averaged_with` naming the others.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from loong_dist.cli import job_parser, log, resolve_config, run_job
from loong_dist.errors import UserError
from loong_dist.io.storage import Storage, is_s3

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _tensors(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def average(tensors: dict, cfg, layout, others: dict[str, Path]) -> dict:
    """The uniform mean of `tensors` (--from's, with its model config and layout) and the weights of
    each of `others` (name -> local file), in the dtype of `tensors`; a file that does not match is a
    one-line error naming it."""
    import torch

    from loong_dist.models.ar.checkpoint import read_model_meta

    sums = {k: v.double() for k, v in tensors.items() if v.is_floating_point()}
    for name, path in others.items():
        other_cfg, other_layout, _ = read_model_meta(path)
        if (other_cfg, other_layout) != (cfg, layout):
            raise UserError(f"--average {name}: its model config or vocabulary layout differs from --from's")
        other = _tensors(path)
        if set(other) != set(tensors):
            raise UserError(f"--average {name}: tensors {sorted(set(other) ^ set(tensors))[:3]} are in one "
                            "file only")
        for k, v in tensors.items():
            if other[k].shape != v.shape:
                raise UserError(f"--average {name}: {k} has shape {tuple(other[k].shape)}, --from's "
                                f"{tuple(v.shape)}")
            if k in sums:
                sums[k] += other[k].double()
            elif not torch.equal(other[k], v):
                raise UserError(f"--average {name}: integer tensor {k} differs from --from's")
    n = 1 + len(others)
    return {k: (sums[k] / n).to(v.dtype) if k in sums else v for k, v in tensors.items()}


def export(src: Path, dst: str, dtype: str, generate: dict, storage: Storage,
           others: dict[str, Path] | None = None) -> dict:
    """Write the model file `src` (its weights averaged with `others`', name -> local file, if any)
    to `dst` (a path or s3:// URI) with its weights in `dtype` and `generate` as its recommended
    sampling settings; returns what changed."""
    import torch

    from loong_dist.models.ar.checkpoint import read_model_meta, save_model

    cfg, layout, extra = read_model_meta(src)
    tensors = _tensors(src)
    if others:
        tensors = average(tensors, cfg, layout, others)
        extra = dict(extra, averaged_with=list(others))
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
    parser.add_argument("--average", action="append", default=[], metavar="MODEL",
                        help="another run's model.safetensors to average with --from (repeatable)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="float type of the shipped weights")
    args = parser.parse_intermixed_args(argv)
    if not args.dst.endswith(".safetensors"):
        raise UserError(f"--to {args.dst}: expected a .safetensors file name")
    storage = Storage()
    with tempfile.TemporaryDirectory(prefix="loong-export-") as tmp:
        def local(uri: str, i: int) -> Path:
            return storage.download_file(uri, Path(tmp) / f"model{i}.safetensors") if is_s3(uri) else Path(uri)

        src = local(args.src, 0)
        others = {uri: local(uri, i + 1) for i, uri in enumerate(args.average)}
        cfg = resolve_config(args, {}, under=generation_defaults(read_model_meta(src)[2]))
        result = export(src, args.dst, args.dtype, recommended_generation(cfg.generate), storage, others)
    log.info("%s%s -> %s: %d parameters in %s, %.1f MB; recommended sampling: %s", args.src,
             "".join(f" + {uri}" for uri in args.average) + (" (mean)" if args.average else ""), args.dst,
             result["parameters"], args.dtype, result["bytes"] / 1e6,
             ", ".join(f"{k} {a} -> {b}" for k, (a, b) in result["generate_changed"].items()) or "as trained")
    return 0


if __name__ == "__main__":
    run_job(main)

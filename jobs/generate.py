"""Generate (minute-long) videos from text with a trained transformer and video tokenizer.

    python -m jobs.generate --checkpoint run/model.safetensors \\
        --prompt "a large red circle moving left quickly on a black background" \\
        --seconds 60 --out video.mp4 [--seed 0] [generate.top_k=100 generate.reencode=false ...]

A model exported by jobs.train carries its text tokenizer, the hash and place of its video
tokenizer, its clips' size and frame rate and its recommended sampling settings
(loong_dist/inference/carried.py): `--tokenizer` and `--text-tokenizer` are needed only for files
that do not, and when given they must be the model's own (checked by hash). Sampling settings in
`--config` files or key=value items win over the carried ones.

`--prompts-file F` takes one prompt per line instead (plain text, or JSON Lines with a "prompt" or
"caption" key - a synthetic manifest works; its "attributes" are kept for jobs.evaluate
generation). Prompts are generated `generate.batch_size` at a time. For one prompt, --out X.mp4
receives X.mp4, X.gif, X.png (a strip of frames) and X.json (settings, timings); for several,
X_000.mp4, X_001.mp4, ... and the one X.json listing them all (with the resolved config).

`--upscaler U` (generate.upscaler) also writes each video 4x larger with the video upscaler
(jobs.train_upscaler): X_x4.mp4 (512x512 from 128x128) and its strip X_x4.png, upscaled
`upscaler.chunk_frames` frames at a time straight into the encoder (loong_dist/inference/upscale.py),
so a 60 s video takes no more memory than a short one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from loong_dist.cli import job_parser, log, resolve_config, run_job
from loong_dist.config import config_to_dict
from loong_dist.errors import ConfigError, UserError

ALIASES = {"--tokenizer": "tokenizer.path", "--text-tokenizer": "text.path", "--seconds": "generate.seconds",
           "--seed": "run.seed", "--upscaler": "generate.upscaler"}


def read_prompts(path: str, storage=None) -> list[dict]:
    """Prompts file (a local path or s3:// URI) -> [{"prompt": str, "attributes": dict | None}],
    one per non-empty line."""
    from loong_dist.io.storage import Storage, is_s3
    storage = storage or Storage()
    if not (storage.exists(path) if is_s3(path) else os.path.isfile(path)):
        raise UserError(f"{path}: prompts file not found")
    prompts = []
    for n, line in enumerate(storage.read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                row = json.loads(line)
                text = row.get("prompt", row.get("caption"))
            except (ValueError, AttributeError):
                raise UserError(f"{path}:{n}: not a JSON object") from None
            if not isinstance(text, str):
                raise UserError(f"{path}:{n}: JSON line without a \"prompt\" or \"caption\" string")
            prompts.append({"prompt": text, "attributes": row.get("attributes")})
        else:
            prompts.append({"prompt": line.strip(), "attributes": None})
    if not prompts:
        raise UserError(f"{path}: no prompts in the file")
    return prompts


def output_paths(out: str, index: int, count: int, upscaled: bool = False) -> dict[str, str]:
    stem = out[:-4] if out.endswith(".mp4") else out
    if count > 1:
        stem = f"{stem}_{index:03d}"
    paths = {ext: f"{stem}.{ext}" for ext in ("mp4", "gif", "png")}
    if upscaled:  # the 4x video and its strip, beside the generated ones
        paths.update(mp4_x4=f"{stem}_x4.mp4", png_x4=f"{stem}_x4.png")
    return paths


def main(argv: list[str] | None = None) -> int:
    import torch
    from PIL import Image

    from loong_dist.inference.carried import generation_defaults, video_tokenizer_path
    from loong_dist.io.run_folder import RunFolder, local_input
    from loong_dist.io.storage import Storage, is_s3, parent
    from loong_dist.inference.carried import text_tokenizer as carried_text_tokenizer
    from loong_dist.inference.generate import VideoGenerator, check_prompt
    from loong_dist.inference.upscale import write_upscaled
    from loong_dist.io.video import frame_strip, write_gif, write_mp4
    from loong_dist.models.ar.checkpoint import check_vocab, load_model, read_model_meta
    from loong_dist.models.tokenizer import load_tokenizer
    from loong_dist.models.upscaler import load_upscaler
    from loong_dist.precision import resolve_device, resolve_precision

    parser = job_parser("python -m jobs.generate", __doc__.splitlines()[0], ALIASES,
                        sections=("generate", "data", "text", "run"))
    parser.add_argument("--checkpoint", required=True, help="transformer file (model.safetensors, from jobs.train)")
    parser.add_argument("--prompt", default=None, help="the text of one video")
    parser.add_argument("--prompts-file", default=None, help="one prompt per line (text or JSON Lines)")
    parser.add_argument("--out", default="video.mp4", help="output video path (see above)")
    args = parser.parse_intermixed_args(argv)  # key=value items may come between flags
    storage = Storage()
    checkpoint = args.checkpoint
    args.checkpoint = str(local_input(checkpoint, storage)) if is_s3(checkpoint) else checkpoint  # s3:// too
    # What the model file carries (models trained by jobs.train): its clips' size and frame rate and
    # its recommended sampling settings are defaults here, the tokenizers are found or checked.
    trained = read_model_meta(args.checkpoint)[2]
    carried = [f"data.{k}={trained[k]}" for k in ("size", "fps") if k in trained] + generation_defaults(trained)
    cfg = resolve_config(args, ALIASES, under=carried)
    gen_cfg = cfg.generate
    if (args.prompt is None) == (args.prompts_file is None):
        raise ConfigError("pass exactly one of --prompt TEXT or --prompts-file F")
    for key, value in (("size", cfg.data.size), ("fps", cfg.data.fps)):
        if key in trained and float(trained[key]) != float(value):
            raise UserError(f"{args.checkpoint}: model was trained on clips with data.{key}={trained[key]}, "
                            f"data.{key} is {value} (leave it out, or pass data.{key}={trained[key]})")
    storage = Storage(cfg.storage)
    prompts = ([{"prompt": args.prompt, "attributes": None}] if args.prompt is not None
               else read_prompts(args.prompts_file, storage))
    # Outputs are written on this machine, then published beside --out (an s3:// URI too).
    folder = RunFolder(parent(args.out) if ("/" in args.out) else ".", storage)

    device = resolve_device(gen_cfg.device)
    dtype = torch.bfloat16 if resolve_precision(gen_cfg.precision, device) == "bf16" else torch.float32
    text_tok = carried_text_tokenizer(trained, cfg.text.path, args.checkpoint)
    video_tok_path = video_tokenizer_path(trained, cfg.tokenizer.path, args.checkpoint)
    video_tok = load_tokenizer(video_tok_path, device=device)
    upscaler = load_upscaler(local_input(gen_cfg.upscaler, storage), device=device) if gen_cfg.upscaler else None
    model, layout = load_model(args.checkpoint, device=device, dtype=dtype)
    check_vocab(layout, video_tok.codebook_size, text_tok.vocab_size, args.checkpoint)
    if (text_tok.bos_id, text_tok.bov_id) != (layout.bos_id, layout.bov_id):
        raise UserError(f"{args.checkpoint}: <s>/<bov> ids {layout.bos_id}/{layout.bov_id} of the model differ from "
                        f"the text tokenizer's {text_tok.bos_id}/{text_tok.bov_id}")
    texts = []
    for i, p in enumerate(prompts):
        texts.append(text_tok.encode(p["prompt"], add_bos=True))
        check_prompt(p["prompt"], texts[-1], cfg.text.max_text_tokens,
                     f"prompt {i + 1}" if len(prompts) > 1 else "prompt")
    generator = VideoGenerator(model, layout, video_tok, gen_cfg, fps=cfg.data.fps, size=cfg.data.size)
    generator.check_context(max(len(t) for t in texts))

    videos, t0 = [], time.perf_counter()
    for start in range(0, len(prompts), gen_cfg.batch_size):
        batch = list(range(start, min(start + gen_cfg.batch_size, len(prompts))))
        name = f"prompt {batch[0] + 1}" + (f"-{batch[-1] + 1}" if len(batch) > 1 else "")
        result = generator.generate([texts[i] for i in batch], gen_cfg.seconds, cfg.run.seed + start,
                                    progress=lambda s: log.info("%s: %.1f / %.1f s of video generated (%.0f s)",
                                                                name, s, gen_cfg.seconds, time.perf_counter() - t0))
        for row, i in enumerate(batch):
            upscale = upscaler is not None and (gen_cfg.upscale_videos == 0 or i < gen_cfg.upscale_videos)
            frames, paths = result.frames[row], output_paths(args.out, i, len(prompts), upscale)
            local = {k: folder.path(v.rstrip("/").rsplit("/", 1)[-1]) for k, v in paths.items()}
            local["mp4"].parent.mkdir(parents=True, exist_ok=True)
            write_mp4(local["mp4"], frames, fps=cfg.data.fps)
            write_gif(local["gif"], frames, fps=cfg.data.fps)
            Image.fromarray(frame_strip(frames, gen_cfg.strip_frames)).save(local["png"])
            upscaled = {}
            if upscale:
                upscaled = write_upscaled(upscaler, frames, local["mp4_x4"], cfg.data.fps, cfg.upscaler.chunk_frames,
                                          strip=local["png_x4"], strip_frames=gen_cfg.strip_frames)
                log.info("%s: upscaled to %dx%d in %.1f s -> %s", name, *upscaled["size"], upscaled["upscale_s"],
                         paths["mp4_x4"])
            for path in local.values():
                folder.publish(path.name)
            videos.append({**prompts[i], **paths, "frames": int(frames.shape[0]),
                           "seconds": frames.shape[0] / cfg.data.fps, "seed": cfg.run.seed + start, "row": row,
                           "timings": {k: round(float(v), 4) for k, v in result.timings.items()},
                           **({"upscaled": upscaled} if upscaled else {})})
        log.info("%s: %d frames in %.1f s (%.0f tokens/s, %d windows) -> %s", name, result.frames.shape[1],
                 result.timings["total_s"], result.timings["tokens_per_s"], result.windows,
                 ", ".join(output_paths(args.out, i, len(prompts))["mp4"] for i in batch))
    report = {"checkpoint": checkpoint, "tokenizer": video_tok_path, "text_tokenizer": cfg.text.path or "carried",
              "device": device, "fps": cfg.data.fps, "size": cfg.data.size, "seed": cfg.run.seed,
              "max_text_tokens": cfg.text.max_text_tokens, "generate": dataclasses.asdict(gen_cfg),
              "wall_s": round(time.perf_counter() - t0, 3), "videos": videos, "config": config_to_dict(cfg)}
    json_path = (args.out[:-4] if args.out.endswith(".mp4") else args.out) + ".json"
    folder.write_text(json_path.rstrip("/").rsplit("/", 1)[-1], json.dumps(report, indent=2) + "\n")
    log.info("%d video(s), %.1f s each, in %.1f s -> %s", len(videos), gen_cfg.seconds, report["wall_s"], json_path)
    return 0


if __name__ == "__main__":
    run_job(main)

"""Evaluate loong-dist models.

    python -m jobs.evaluate tokenizer --checkpoint C --manifest M --out DIR [--clips N] [key=value ...]

tokenizer: one 17-frame 128x128 clip from each manifest entry (up to --clips, seeded starts),
encoded and decoded with the uint8 API; per-clip and mean PSNR and SSIM, the bilinear 8x reference
on the same clips, codebook use (share of codes seen, perplexity); DIR/tokenizer_eval.json, one
side-by-side GIF (original | reconstruction) per clip in DIR/tokenizer_eval/, and
DIR/reconstructions.png: the first and last frame of one clip per video, original beside
reconstruction.

    python -m jobs.evaluate upscaler --checkpoint C --manifest M --out DIR [--tokenizer T] [--clips N]
        [--frames 17] [--size 512]

upscaler: one clip per manifest entry (up to --clips, taking the sources in turn), its real frames
at --size px (or the largest multiple of 32 its source holds, so a target is never upsampled),
shrunk 4x: (a) clean, and (b) through the video tokenizer (the upscaler's own, recorded in its
file, unless --tokenizer). Each input is upscaled by the upscaler and by bicubic, both scored
against the real frames in this run: PSNR, SSIM and flicker (how far frame-to-frame changes are
from the real ones, in 8-bit levels); DIR/upscaler_eval.json, a side-by-side GIF per clip and
input (bicubic | ours | original) in DIR/upscaler_eval/, and DIR/side_by_side.png (middle frames,
one row per clip, tokenizer input; side_by_side_clean.png for clean input).

    python -m jobs.evaluate generation --videos video.json --out DIR [--tokenizer T] [--window-s 10]

generation: the videos listed in a jobs.generate JSON, cut into windows of --window-s seconds;
per window the drift from the first clip (colour histogram and tokenizer-code histogram distances,
code entropy, motion) and, for prompts that carry synthetic attributes, prompt alignment
(attributes detected in the pixels against the prompt's); means per window index over the
videos; DIR/generation_eval.json.

    python -m jobs.evaluate frames --checkpoint M --manifest SYNTHETIC_MANIFEST --out DIR [--clips 48] [--frames 17]
        [--split held_out|train]

frames: a trained transformer's teacher-forced loss per latent frame on held-out synthetic clips
(split=held_out: never trained on), half of them still where the manifest has enough, each clip
encoded by the model's own video tokenizer and captioned by its own text tokenizer (both carried
by the model file unless --tokenizer / --text-tokenizer). Tokens are grouped by the clip's motion
and by whether their cell shows the object (from the clip's attributes); for frames >= 1 also the
tokens that repeat their cell one latent frame back. copy_gain: on still clips' object cells,
frame 0's loss minus the later frames' (near 0: the model redraws each frame instead of carrying
it). --split train reads clips of the training split instead: the gap to held-out clips is what the
model learnt by heart. DIR/frames_eval.json and DIR/frame_loss.png.

    python -m jobs.evaluate compare --out DIR --run LABEL=generation_eval.json [--run ...]
        [--frames LABEL=frames_eval.json ...] [--first N] [--title T] [--verdict V]

compare: the same prompts (or clips) evaluated under several models or settings, side by side -
prompt alignment per window and drift for generation evaluations (the first N videos of each; runs
on other prompts are refused), loss per latent frame of object cells and the copy gain for frame
evaluations, with the verdict a person drew from them; DIR/comparison.json and DIR/comparison.png.
How Loong's claims are shown on the shipped model (checkpoints/t2v_cpu/claims/, in its card and in
the demo report).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from loong_dist.cli import job_parser, log, resolve_config, run_job
from loong_dist.data.clip_bank import build_clip_bank
from loong_dist.data.manifest import read_manifest
from loong_dist.errors import ConfigError, UserError
from loong_dist.io.run_folder import RunFolder, local_input
from loong_dist.io.storage import Storage
from loong_dist.io.video import write_gif

ALIASES = {"--checkpoint": "tokenizer.path", "--manifest": "data.manifest", "--out": "run.out_dir"}


def evaluate_tokenizer(argv: list[str]) -> int:
    import numpy as np

    from loong_dist.models.tokenizer import load_tokenizer
    from loong_dist.evaluation.tokenizer_quality import evaluate_clips

    parser = job_parser("python -m jobs.evaluate tokenizer", "Tokenizer PSNR/SSIM and codebook use.", ALIASES,
                        sections=("tokenizer", "data", "run"))
    parser.add_argument("--clips", type=int, default=32, help="clips at most (one per entry, in order)")
    parser.add_argument("--frames", type=int, default=17, help="frames per clip (1 + 4k)")
    args = parser.parse_intermixed_args(argv)  # key=value items may come between flags
    cfg = resolve_config(args, ALIASES)
    for key, value, flag in (("tokenizer.path", cfg.tokenizer.path, "--checkpoint"),
                             ("data.manifest", cfg.data.manifest, "--manifest")):
        if not value:
            raise ConfigError(f"config: {key} is empty: pass {flag}")
    storage = Storage(cfg.storage)
    tok = load_tokenizer(local_input(cfg.tokenizer.path, storage))
    tok.latent_shape(args.frames, cfg.data.size, cfg.data.size)
    entries, _ = read_manifest(cfg.data.manifest, storage)
    entries = entries[:args.clips]
    clips, plan = build_clip_bank(entries, len(entries), args.frames, cfg.data.fps, cfg.data.size, cfg.run.seed,
                                  storage, return_plan=True)
    result = evaluate_clips(tok, clips)
    recon = result.pop("recon")
    out = RunFolder(cfg.run.out_dir, storage)  # written here, published when it is an s3:// prefix
    for i, (clip, rec) in enumerate(zip(clips, recon)):
        name = f"tokenizer_eval/clip_{i:03d}.gif"
        write_gif(out.path(name), np.concatenate([clip, rec], axis=2), fps=cfg.data.fps)
        entry, start = plan[i]
        result["per_clip"][i].update(video=entry.video, start=round(start, 3), caption=entry.caption,
                                     gif=str(out.path(name)) if not out.remote else out.uri_of(name))
    report = {"checkpoint": cfg.tokenizer.path, "manifest": cfg.data.manifest, "clips": len(clips),
              "frames": args.frames, "size": cfg.data.size, "fps": cfg.data.fps, "codebook_size": tok.codebook_size,
              **result}
    write_reconstructions(out.path("reconstructions.png"), clips, recon, [entry.video for entry, _ in plan])
    out.publish("tokenizer_eval")
    out.publish("reconstructions.png")
    out.write_text("tokenizer_eval.json", json.dumps(report, indent=2) + "\n")
    log.info("tokenizer: PSNR %.2f dB (bilinear 8x reference %.2f dB), SSIM %.3f, %d clips; codes used %.2f%%, "
             "perplexity %.0f -> %s", report["psnr"], report["ref_psnr"], report["ssim"], len(clips),
             100 * report["used"], report["perplexity"], out.uri_of("tokenizer_eval.json"))
    return 0


def write_reconstructions(path: Path, clips, recon, videos: list[str], rows: int = 6) -> None:
    """One row per video (its first clip, up to `rows`): first frame original | reconstruction,
    then last frame original | reconstruction, with a 4-pixel white gutter between pairs."""
    import numpy as np
    from PIL import Image

    first = list({video: i for i, video in reversed(list(enumerate(videos)))}.values())[::-1][:rows]
    gutter = np.full((clips.shape[2], 4, 3), 255, np.uint8)
    lines = [np.concatenate([clips[i, 0], recon[i, 0], gutter, clips[i, -1], recon[i, -1]], axis=1) for i in first]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(lines, axis=0)).save(path)


def evaluate_upscaler(argv: list[str]) -> int:
    import numpy as np
    from PIL import Image

    from loong_dist.data.upscaler_pairs import held_out_pairs
    from loong_dist.evaluation.upscaler_quality import evaluate_pairs, side_by_side, stack_rows
    from loong_dist.models.tokenizer import load_tokenizer
    from loong_dist.models.upscaler import load_upscaler, upscaler_extra

    aliases = {"--checkpoint": "upscaler.path", "--manifest": "data.manifest", "--out": "run.out_dir",
               "--tokenizer": "tokenizer.path"}
    parser = job_parser("python -m jobs.evaluate upscaler", "Upscaler PSNR/SSIM/flicker against bicubic.", aliases,
                        sections=("upscaler", "tokenizer", "data", "run"))
    parser.add_argument("--clips", type=int, default=15, help="clips at most (one per entry, sources in turn)")
    parser.add_argument("--frames", type=int, default=17, help="frames per clip (1 + 4k, for the tokenizer)")
    parser.add_argument("--size", type=int, default=512, help="side of the real frames (px, a multiple of 32)")
    args = parser.parse_intermixed_args(argv)
    cfg = resolve_config(args, aliases)
    for key, value, flag in (("upscaler.path", cfg.upscaler.path, "--checkpoint"),
                             ("data.manifest", cfg.data.manifest, "--manifest")):
        if not value:
            raise ConfigError(f"config: {key} is empty: pass {flag}")
    if args.size < 32 or args.size % 32:
        raise ConfigError(f"--size {args.size}: must be a positive multiple of 32 (inputs of size / 4, multiples of 8)")
    storage = Storage(cfg.storage)
    up_path = local_input(cfg.upscaler.path, storage)
    upscaler = load_upscaler(up_path)
    tok_path = cfg.tokenizer.path or upscaler_extra(up_path).get("tokenizer", "")
    if not tok_path:
        raise ConfigError(f"{cfg.upscaler.path}: names no video tokenizer: pass --tokenizer T")
    tok = load_tokenizer(local_input(tok_path, storage))
    tok.latent_shape(args.frames, 8, 8)  # a clip length the tokenizer takes, or one line naming it
    entries, _ = read_manifest(cfg.data.manifest, storage)
    pairs = held_out_pairs(entries, args.clips, args.frames, cfg.data.fps, args.size, cfg.run.seed, tok, storage)
    result = evaluate_pairs(upscaler, pairs, cfg.upscaler.chunk_frames)
    outputs = result.pop("outputs")
    out = RunFolder(cfg.run.out_dir, storage)  # written here, published when it is an s3:// prefix
    for kind, suffix in (("tokenizer", ""), ("clean", "_clean")):
        rows = []
        for i, pair in enumerate(pairs):
            video = side_by_side(outputs["bicubic"][kind][i], outputs["ours"][kind][i], pair["hr"])
            name = f"upscaler_eval/clip_{i:03d}{suffix}.gif"
            write_gif(out.path(name), video, fps=cfg.data.fps)
            result["per_clip"][i][kind]["gif"] = str(out.path(name)) if not out.remote else out.uri_of(name)
            rows.append(video[len(video) // 2])
        Image.fromarray(stack_rows(rows)).save(out.path(f"side_by_side{suffix}.png"))
        out.publish(f"side_by_side{suffix}.png")
    out.publish("upscaler_eval")
    report = {"checkpoint": cfg.upscaler.path, "video_tokenizer": tok_path, "manifest": cfg.data.manifest,
              "clips": len(pairs), "frames": args.frames, "size": args.size, "fps": cfg.data.fps,
              "scale": upscaler.scale, "parameters": sum(p.numel() for p in upscaler.parameters()), **result}
    out.write_text("upscaler_eval.json", json.dumps(report, indent=2) + "\n")
    for kind in ("clean", "tokenizer"):
        r = report[kind]
        log.info("upscaler, %s input: PSNR %.2f dB (bicubic %.2f, %+.2f), SSIM %.3f (%.3f), flicker %.2f (%.2f)",
                 kind, r["psnr"], r["bicubic_psnr"], r["psnr_gain"], r["ssim"], r["bicubic_ssim"], r["flicker"],
                 r["bicubic_flicker"])
    r = report["tokenizer"]
    log.info("  the tokenizer's output is %.2f dB from the clean frames; the model's correction from clean input, "
             "added to its bicubic, would gain %+.2f dB", r["input_psnr"], r["clean_correction_gain"])
    for size, r in report["by_size"].items():
        log.info("  %s px targets (%d clips): PSNR gain over bicubic %+.2f dB from clean input, %+.2f dB from "
                 "tokenizer output", size, r["clips"], r["clean"]["psnr_gain"], r["tokenizer"]["psnr_gain"])
    log.info("%d clips -> %s", len(pairs), out.uri_of("upscaler_eval.json"))
    return 0


def evaluate_generation(argv: list[str]) -> int:
    from loong_dist.evaluation.generation_quality import alignment, drift, summarise
    from loong_dist.inference.generate import pixel_frames
    from loong_dist.io.video import probe_video, read_clip
    from loong_dist.models.tokenizer import load_tokenizer
    from loong_dist.precision import resolve_bf16

    aliases = {"--tokenizer": "tokenizer.path", "--out": "run.out_dir"}
    parser = job_parser("python -m jobs.evaluate generation", "Drift and prompt alignment of generated videos.",
                        aliases, sections=("tokenizer", "run"))
    parser.add_argument("--videos", required=True, help="JSON written by jobs.generate")
    parser.add_argument("--window-s", type=float, default=10.0, help="window length (seconds)")
    args = parser.parse_intermixed_args(argv)
    cfg = resolve_config(args, aliases)
    storage = Storage(cfg.storage)
    try:
        run = json.loads(storage.read_text(args.videos))
        videos, fps, settings = run["videos"], float(run["fps"]), run["generate"]
    except (OSError, ValueError, KeyError, TypeError, UserError) as e:
        raise ConfigError(f"{args.videos}: not a jobs.generate JSON ({type(e).__name__}: {e})") from None
    tok_path = cfg.tokenizer.path or run.get("tokenizer", "")
    tok = load_tokenizer(tok_path) if tok_path else None
    bf16 = resolve_bf16(settings.get("tokenizer_bf16", False), "cpu")
    first_clip = pixel_frames(settings["window_latent_frames"])
    rows = []
    for v in videos:
        mp4 = str(local_input(v["mp4"], storage))  # a video on S3 is read from a scratch copy
        frames = read_clip(mp4, 0.0, probe_video(mp4).num_frames, fps=None, size=None)
        row = {"mp4": v["mp4"], "prompt": v.get("prompt"), "frames": len(frames),
               "drift": drift(frames, fps, first_clip, args.window_s, tok, bf16)}
        if v.get("attributes"):
            row["alignment"] = alignment(frames, v["attributes"], fps, args.window_s)
        rows.append(row)
    report = {"videos_json": args.videos, "tokenizer": tok_path or None, "window_s": args.window_s, "fps": fps,
              "first_clip_frames": first_clip, "generate": settings, **summarise(rows), "per_video": rows}
    out = RunFolder(cfg.run.out_dir, storage)
    out.write_text("generation_eval.json", json.dumps(report, indent=2) + "\n")
    for w in report["drift"]:
        log.info("window %d (from %.0f s): colour TV %.3f, code TV %s, code entropy %s bits, motion %.2f",
                 w["window"], w["start_s"], w["colour_tv"], f"{w['code_tv']:.3f}" if "code_tv" in w else "-",
                 f"{w['code_entropy_bits']:.2f}" if "code_entropy_bits" in w else "-", w["motion"])
    if report["alignment"]:
        log.info("prompt alignment, first window (%d videos): %s", report["alignment"]["videos"],
                 ", ".join(f"{k} {v:.0%}" for k, v in report["alignment"]["first_window"].items()))
    log.info("-> %s", out.uri_of("generation_eval.json"))
    return 0


def evaluate_frames(argv: list[str]) -> int:
    import numpy as np

    from loong_dist.evaluation.frame_loss import GROUPS, clip_token_loss, object_cells, summarise
    from loong_dist.evaluation.plots import line_chart
    from loong_dist.inference.carried import text_tokenizer, video_tokenizer_path
    from loong_dist.io.video import read_clip
    from loong_dist.models.ar.checkpoint import load_model, read_model_meta
    from loong_dist.models.tokenizer import load_tokenizer
    from loong_dist.precision import resolve_bf16

    aliases = {"--manifest": "data.manifest", "--out": "run.out_dir", "--tokenizer": "tokenizer.path",
               "--text-tokenizer": "text.path"}
    parser = job_parser("python -m jobs.evaluate frames", "Teacher-forced loss per latent frame on held-out clips.",
                        aliases, sections=("tokenizer", "text", "data", "run"))
    parser.add_argument("--checkpoint", required=True, help="transformer file (model.safetensors, from jobs.train)")
    parser.add_argument("--clips", type=int, default=48, help="clips at most (half still where there are)")
    parser.add_argument("--frames", type=int, default=17, help="frames per clip (1 + 4k), from each clip's start")
    parser.add_argument("--split", choices=("held_out", "train"), default="held_out",
                        help="the manifest's clips to read: held out (default), or those the model may have trained "
                             "on (the gap between the two is what it learnt by heart)")
    args = parser.parse_intermixed_args(argv)
    cfg = resolve_config(args, aliases)
    if not cfg.data.manifest:
        raise ConfigError("config: data.manifest is empty: pass --manifest (written by data_prep.synthetic)")
    storage = Storage(cfg.storage)
    checkpoint = str(local_input(args.checkpoint, storage))
    _, _, extra = read_model_meta(checkpoint)
    model, layout = load_model(checkpoint)
    text_tok = text_tokenizer(extra, cfg.text.path, args.checkpoint, storage)
    tok_path = video_tokenizer_path(extra, cfg.tokenizer.path, args.checkpoint, storage)
    video_tok = load_tokenizer(local_input(tok_path, storage))
    _, rows_, cols_ = video_tok.latent_shape(args.frames, cfg.data.size, cfg.data.size)
    pool = [e for e in read_manifest(cfg.data.manifest, storage)[0]
            if e.extra.get("split") == args.split and e.extra.get("attributes")
            and int(e.extra.get("frames", 0)) >= args.frames]
    still = [e for e in pool if e.extra["attributes"]["motion"] == "still"]
    moving = [e for e in pool if e.extra["attributes"]["motion"] != "still"]
    n_still = min(len(still), max(args.clips // 2, args.clips - len(moving)))  # half, or what moving ones lack
    picked = still[:n_still] + moving[:args.clips - n_still]
    if not picked:
        raise UserError(f"{cfg.data.manifest}: no {args.split} synthetic clip of {args.frames}+ frames with attributes")
    bf16 = resolve_bf16(cfg.generate.tokenizer_bf16, "cpu")
    rows = []
    for e in picked:
        with storage.local_copy(e.video) as path:
            clip = read_clip(path, 0.0, args.frames, fps=cfg.data.fps, size=cfg.data.size, name=e.video)
        codes = video_tok.encode(clip[None], bf16=bf16)[0].cpu().numpy()  # (F, h, w)
        text = text_tok.encode(e.caption, add_bos=True)[:cfg.text.max_text_tokens]
        attrs = e.extra["attributes"]
        rows.append({"still": attrs["motion"] == "still", "loss": clip_token_loss(model, layout, text, codes),
                     "object": object_cells(attrs, args.frames, cfg.data.size, (rows_, cols_)),
                     "tokens": layout.video_to_tokens(codes.reshape(-1)).reshape(codes.shape)})
    result = summarise(rows)
    out = RunFolder(cfg.run.out_dir, storage)
    report = {"checkpoint": args.checkpoint, "video_tokenizer": tok_path, "manifest": cfg.data.manifest,
              "split": args.split, "frames": args.frames, **result,
              "per_clip": [{"video": e.video, "caption": e.caption,
                            "loss_per_frame": r["loss"].mean(axis=(1, 2)).tolist()} for e, r in zip(picked, rows)]}
    out.write_text("frames_eval.json", json.dumps(report, indent=2) + "\n")
    series = {g.replace("_", ", "): ([t["latent_frame"] for t in result["frames"] if t[g]["tokens"]],
                                     [t[g]["loss"] for t in result["frames"] if t[g]["tokens"]]) for g in GROUPS}
    split_name = args.split.replace("_", "-")
    line_chart(series, out.path("frame_loss.png"), title=f"teacher-forced loss, {result['clips']} {split_name} clips",
               xlabel="latent frame", ylabel="loss (nats)")
    out.publish("frame_loss.png")
    for t in result["frames"]:
        log.info("latent frame %d: %s%s", t["latent_frame"],
                 ", ".join(f"{g} {t[g]['loss']:.3f}" for g in GROUPS if t[g]["tokens"]),
                 f"; repeats {t['repeat_share']:.0%} at {t['repeat_loss']:.3f}" if "repeat_share" in t else "")
    if result["copy_gain"] is not None:
        log.info("copy gain (still clips, object cells, frame 0 minus later frames): %.3f nats", result["copy_gain"])
    log.info("%d clips (%d still) -> %s", result["clips"], result["still_clips"], out.uri_of("frames_eval.json"))
    return 0


def _labelled(items: list[str], flag: str, storage: Storage) -> dict[str, dict]:
    """["label=path", ...] -> {label: the JSON at path (a file or an s3:// URI)}, in order."""
    out = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ConfigError(f"{flag} {item!r}: expected LABEL=PATH")
        if label in out:
            raise ConfigError(f"{flag} {item!r}: label {label!r} given twice")
        text = storage.read_text(path)  # StorageError names the file
        try:
            out[label] = json.loads(text)
        except ValueError as e:
            raise UserError(f"{path}: not an evaluation JSON ({e})") from None
    return out


def compare_runs(argv: list[str]) -> int:
    import argparse

    from loong_dist.evaluation.comparison import compare, plot_comparison

    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate compare",
                                     description="Evaluations of the same prompts or clips, side by side.")
    parser.add_argument("--out", required=True, help="folder for comparison.json and comparison.png")
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=PATH",
                        help="a generation_eval.json (jobs.evaluate generation), in the order to show")
    parser.add_argument("--frames", action="append", default=[], metavar="LABEL=PATH",
                        help="a frames_eval.json (jobs.evaluate frames), in the order to show")
    parser.add_argument("--first", type=int, default=None, help="compare the first N videos of each run")
    parser.add_argument("--title", default="", help="what is compared")
    parser.add_argument("--verdict", default="", help="what the numbers show, in words")
    args = parser.parse_args(argv)
    if args.first is not None and args.first < 1:
        raise ConfigError(f"--first {args.first}: must be >= 1")
    storage = Storage()
    comparison = compare(_labelled(args.run, "--run", storage), _labelled(args.frames, "--frames", storage),
                         args.first, args.title, args.verdict)
    out = RunFolder(args.out, storage)
    out.write_text("comparison.json", json.dumps(comparison, indent=2) + "\n")
    plot_comparison(comparison, out.path("comparison.png"))
    out.publish("comparison.png")
    for label, r in comparison["generation"].items():
        first = r["per_window"][0]
        log.info("%s: %d videos, first window %s", label, r["videos"],
                 ", ".join(f"{a} {first[a]:.0%}" for a in comparison["attributes"]))
    for label, r in comparison["frames"].items():
        log.info("%s: %s clips, copy gain %s", label, r["clips"], r["copy_gain"])
    log.info("-> %s", out.uri_of("comparison.json"))
    return 0


TARGETS = {"tokenizer": evaluate_tokenizer, "upscaler": evaluate_upscaler, "generation": evaluate_generation,
           "frames": evaluate_frames, "compare": compare_runs}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in TARGETS:
        raise ConfigError(f"usage: python -m jobs.evaluate {{{'|'.join(TARGETS)}}} ... (got {argv[:1] or 'nothing'})")
    return TARGETS[argv[0]](argv[1:])


if __name__ == "__main__":
    run_job(main)

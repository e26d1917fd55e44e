"""The main job: the Loong pipeline end to end on one machine, on the embedded defaults.

    python -m jobs.quickstart --out runs/demo [--size tiny|small] [--train-tokenizer] [--s3 s3://bucket/prefix]
        [--force] [section.key=value ...]

Each step is the job a cluster user submits (`python -m data_prep.samples ...`), run as its own
process with a demo-sized config: configs/demo/<size>.yaml for the data steps (or --config),
<size>_tokenizer.yaml for the video tokenizer, <size>_stage{1,2,3}.yaml for the transformer's
stages; key=value overrides on this command line go to every step. A step that finished before
(its `.done` file is in the run folder) is skipped unless --force is given, so the job can be
re-run after an interruption.

Steps: real sample videos -> synthetic clips -> text tokenizer -> video tokenizer (the shipped
checkpoint, checkpoints/tokenizer_cpu/; --train-tokenizer trains one instead) -> Ray
pre-tokenization into shards -> Loong stages 1-3 (images, 17-frame clips, 65-frame clips; 2 ranks,
DeepSpeed ZeRO-1, each stage from the previous one's weights) -> the stage-2 recipe again with the
plain token mean (the re-weighting ablation) -> 60 s videos for held-out synthetic prompts ->
tokenizer and generation evaluation -> 60 s videos from the shipped transformer
(checkpoints/t2v_cpu/, --shipped-seconds; prompts held out of its own training corpus), also
the first of them written at 512 px by the shipped 4x upscaler (checkpoints/upscaler_cpu/,
--upscaler; the demo's own instead when there is no shipped transformer), and their evaluation ->
report.html. The demo's own tiny transformer exercises the pipeline; the shipped one,
trained for hours by the same jobs (configs/cpu/), is what shows the prompts followed. Overrides
of data.*, generate.*, model.* and text.* are the demo model's and do not reach the shipped one.

With --s3 the token shards are written to and trained from that S3 prefix instead of the run folder
(AWS_ENDPOINT_URL and credentials from the environment, as on a cluster).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loong_dist.cli import job_parser, log, resolve_config, run_job
from loong_dist.config import PROJECT_ROOT, save_config
from loong_dist.errors import UserError

ALIASES = {"--out": "run.out_dir"}
CONFIGS = PROJECT_ROOT / "configs" / "demo"
SHIPPED_TOKENIZER = PROJECT_ROOT / "checkpoints" / "tokenizer_cpu" / "tokenizer.safetensors"
"""The video tokenizer the project ships (its model card is beside it)."""
STAGES = ["stage1", "stage2", "stage3"]
"""Loong's progressive stages: configs/demo/<size>_<stage>.yaml, each from the previous one's weights."""
ABLATION = "stage2_plain"
"""Stage 2 again with the plain token mean, from the same stage-1 weights: the re-weighting ablation."""
PROMPTS = 3
"""Held-out synthetic captions the demo generates videos for."""
SHIPPED_MODEL = PROJECT_ROOT / "checkpoints" / "t2v_cpu" / "model.safetensors"
"""The transformer the project ships (trained by configs/cpu/, model card beside it): the demo
also generates with it, for prompts held out from its training data."""
SHIPPED_UPSCALER = PROJECT_ROOT / "checkpoints" / "upscaler_cpu" / "upscaler.safetensors"
"""The 4x video upscaler the project ships (jobs.train_upscaler, model card beside it): the demo's
own generated videos are also written at 512 px with it."""
SHIPPED_RECIPE = PROJECT_ROOT / "configs" / "cpu" / "loong.yaml"
"""Its recipe; its `synthetic` section names the appearances held out of its training corpus."""


@dataclass
class Step:
    name: str
    """Folder under the run folder, and the name shown in progress lines."""
    module: str
    """The entry point, run as `python -m module args`."""
    config: str
    """Its demo config file (configs/demo/<size><suffix>.yaml)."""
    args: list[str]
    """Its flags, less --config."""
    overrides: tuple[str, ...] = ()
    """Its own key=value items (the user's come after them)."""


def plan(out: Path, size: str, data_config: str, train_tokenizer: bool, shards: str,
         shipped_seconds: float = 60.0, upscaler: str = "") -> list[Step]:
    def cfg(suffix: str = "") -> str:
        return data_config if not suffix else str(CONFIGS / f"{size}{suffix}.yaml")

    train_manifests = f"{out / 'samples' / 'train.jsonl'},{out / 'synthetic' / 'manifest.jsonl'}"
    tokenizer = str(out / "tokenizer" / "tokenizer.safetensors") if train_tokenizer else str(SHIPPED_TOKENIZER)
    text_model = str(out / "text_tokenizer" / "text.model")
    steps = [
        Step("samples", "data_prep.samples", cfg(), ["--out", str(out / "samples")]),
        Step("synthetic", "data_prep.synthetic", cfg(), ["--out", str(out / "synthetic")]),
        Step("text_tokenizer", "data_prep.text_tokenizer", cfg(),
             ["--manifest", str(out / "train_manifest.jsonl"), "--out", text_model]),
    ]
    if train_tokenizer:
        steps.append(Step("tokenizer", "jobs.train_tokenizer", cfg("_tokenizer"),
                          ["--out", str(out / "tokenizer"), "--manifest", train_manifests,
                           "--eval-manifest", str(out / "samples" / "held_out.jsonl")]))
    steps.append(Step("shards", "data_prep.pretokenize", cfg(),
                      ["--manifest", str(out / "train_manifest.jsonl"), "--tokenizer", tokenizer,
                       "--text-tokenizer", text_model, "--out", shards], ("pretokenize.progress=false",)))
    previous = None
    for stage in STAGES:
        init = (f"train.init_from={out / previous}",) if previous else ()
        steps.append(Step(stage, "jobs.train", cfg(f"_{stage}"),
                          ["--shards", shards, "--out", str(out / stage), "--nproc", "2"], init))
        previous = stage
    steps.append(Step(ABLATION, "jobs.train", cfg("_stage2"),
                      ["--shards", shards, "--out", str(out / ABLATION), "--nproc", "2"],
                      (f"train.init_from={out / 'stage1'}", "loss.mode=token_mean")))
    shipped = SHIPPED_MODEL.is_file() and shipped_seconds > 0
    # the shipped model's videos (they show the prompt), the first one only: a minute of upscaling per minute here
    upscale = ["--upscaler", upscaler] if upscaler else []
    upscale_first = ("generate.upscale_videos=1",) if upscaler else ()
    steps += [
        Step("generate", "jobs.generate", cfg("_stage3"),
             ["--checkpoint", str(out / STAGES[-1] / "model.safetensors"), "--tokenizer", tokenizer,
              "--text-tokenizer", text_model, "--prompts-file", str(out / "prompts.jsonl"),
              "--out", str(out / "generate" / "videos.mp4"), *([] if shipped else upscale)],
             () if shipped else upscale_first),
        Step("generate_eval", "jobs.evaluate", cfg("_stage3"),
             ["generation", "--videos", str(out / "generate" / "videos.json"), "--tokenizer", tokenizer,
              "--out", str(out / "generate_eval")]),
        Step("tokenizer_eval", "jobs.evaluate", cfg(),
             ["tokenizer", "--checkpoint", tokenizer, "--manifest", str(out / "samples" / "held_out.jsonl"),
              "--out", str(out / "tokenizer_eval"), "--clips", "15"]),
    ]
    if shipped:  # it carries its tokenizers and sampling settings
        steps += [
            Step("generate_shipped", "jobs.generate", cfg(),
                 ["--checkpoint", str(SHIPPED_MODEL), "--prompts-file", str(out / "prompts_shipped.jsonl"),
                  "--seconds", f"{shipped_seconds:g}", "--out", str(out / "generate_shipped" / "videos.mp4"),
                  *upscale], upscale_first),
            Step("generate_shipped_eval", "jobs.evaluate", cfg(),
                 ["generation", "--videos", str(out / "generate_shipped" / "videos.json"),
                  "--out", str(out / "generate_shipped_eval")]),
        ]
    return steps


def _before(step: Step, out: Path) -> None:
    """Inputs that a step reads and earlier steps' outputs make."""
    if step.name == "text_tokenizer":
        from loong_dist.data.manifest import concat_manifests
        concat_manifests([str(out / "samples" / "train.jsonl"), str(out / "synthetic" / "manifest.jsonl")],
                         str(out / "train_manifest.jsonl"))
    if step.name == "generate":  # captions of held-out synthetic clips (never trained on), moving ones first
        from loong_dist.data.manifest import read_manifest
        held = [e for e in read_manifest(str(out / "synthetic" / "manifest.jsonl"))[0]
                if e.extra.get("split") == "held_out" and e.extra.get("attributes")]
        held.sort(key=lambda e: e.extra["attributes"].get("motion") == "still")
        if not held:
            raise UserError(f"{out / 'synthetic' / 'manifest.jsonl'}: no held-out synthetic clip to take prompts "
                            f"from (synthetic.held_out is 0?)")
        with open(out / "prompts.jsonl", "w") as f:
            for e in held[:PROMPTS]:
                f.write(json.dumps({"prompt": e.caption, "attributes": e.extra["attributes"]}) + "\n")
    if step.name == "generate_shipped":  # held out of the shipped model's corpus, moving ones first
        from loong_dist.config import load_config
        from loong_dist.data.synthetic import held_out_appearances, held_out_prompts
        syn = load_config(SHIPPED_RECIPE).synthetic
        prompts = held_out_prompts(4 * PROMPTS, seed=7, held=held_out_appearances(syn.held_out, syn.split_seed))
        prompts.sort(key=lambda p: p["attributes"]["motion"] == "still")
        (out / "prompts_shipped.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts[:PROMPTS]))


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("python -m jobs.quickstart", __doc__.splitlines()[0], ALIASES, sections=("run",))
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny", help="demo size (configs/demo/SIZE.yaml)")
    parser.add_argument("--train-tokenizer", action="store_true",
                        help=f"train a video tokenizer (configs/demo/SIZE_tokenizer.yaml) instead of the shipped "
                             f"{SHIPPED_TOKENIZER.relative_to(PROJECT_ROOT)}")
    parser.add_argument("--s3", default=None, metavar="URI", help="write and read the token shards under this "
                                                                  "s3://bucket/prefix instead of the run folder")
    parser.add_argument("--force", action="store_true", help="re-run steps that finished before")
    parser.add_argument("--shipped-seconds", type=float, default=60.0, metavar="S",
                        help=f"length of the videos generated with the shipped transformer "
                             f"{SHIPPED_MODEL.relative_to(PROJECT_ROOT)} (0: skip those steps)")
    parser.add_argument("--upscaler", default=str(SHIPPED_UPSCALER) if SHIPPED_UPSCALER.is_file() else "",
                        metavar="U", help=f"also write the shipped transformer's first video (the demo's own "
                                          f"without it) 4x larger with this upscaler "
                                          f"(default: the shipped {SHIPPED_UPSCALER.relative_to(PROJECT_ROOT)} "
                                          f"where present; '' for none)")
    command = "python -m jobs.quickstart " + " ".join(sys.argv[1:] if argv is None else argv)
    args = parser.parse_intermixed_args(argv)  # key=value items may come between flags
    if args.config is None:
        args.config = str(CONFIGS / f"{args.size}.yaml")
    if args.s3 is not None and not args.s3.startswith("s3://"):
        raise UserError(f"--s3 {args.s3!r}: expected an s3://bucket/prefix URI")
    cfg = resolve_config(args, ALIASES)
    out = Path(cfg.run.out_dir).resolve()
    if not args.train_tokenizer and not SHIPPED_TOKENIZER.is_file():
        raise UserError(f"{SHIPPED_TOKENIZER}: shipped video tokenizer not found; pass --train-tokenizer to train one")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    shards = f"{args.s3.rstrip('/')}/shards" if args.s3 else str(out / "shards")
    steps = plan(out, args.size, args.config, args.train_tokenizer, shards, args.shipped_seconds, args.upscaler)
    started = time.time()
    for i, step in enumerate(steps, start=1):
        done = out / step.name / ".done"
        if done.exists() and not args.force:
            log.info("[%d/%d] %s: done before, skipped (--force re-runs it)", i, len(steps), step.name)
            continue
        mine = args.overrides
        if step.name.startswith("generate_shipped"):  # the shipped model brings its own data and sampling settings
            mine = [o for o in mine if not o.startswith(("data.", "generate.", "model.", "text."))]
        argv = [*step.args, "--config", step.config, *step.overrides, *mine]
        if step.module == "jobs.evaluate":  # its target comes first
            argv = [step.args[0], "--config", step.config, *step.args[1:], *step.overrides, *mine]
        log.info("[%d/%d] %s: python -m %s %s", i, len(steps), step.name, step.module, " ".join(argv))
        _before(step, out)
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", step.module, *argv], cwd=PROJECT_ROOT)
        if proc.returncode != 0:
            raise UserError(f"step {step.name} failed (exit code {proc.returncode}); "
                            f"finished steps are kept in {out}, re-run to continue")
        wall = round(time.time() - start, 1)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"module": step.module, "args": argv, "wall_s": wall}))
        log.info("[%d/%d] %s: done in %.0f s (%.1f min since the start)", i, len(steps), step.name, wall,
                 (time.time() - started) / 60)

    from loong_dist.evaluation.report import write_report
    page, summary = write_report(out, f"loong-dist demo ({args.size})", command,
                                 stages=[*STAGES, ABLATION])
    log.info("done: %s", ", ".join(f"{k} {v.get('wall_s')} s" for k, v in summary["steps"].items()))
    log.info("report: %s (numbers in %s)", page, out / "summary.json")
    return 0


if __name__ == "__main__":
    run_job(main)

"""The main job: the Loong pipeline end to end on one machine, on the embedded defaults.

    python -m jobs.quickstart --out runs/demo [--size tiny|small] [--force] [section.key=value ...]

Each step is the job a cluster user submits (`python -m data_prep.samples ...`), run as its own
process with a demo-sized config: configs/demo/<size>.yaml for the data steps (or --config),
<size>_tokenizer.yaml for the video tokenizer, <size>_lm.yaml for the transformer; key=value
overrides on this command line go to every step. A step that finished before (its `.done` file is
in the run folder) is skipped unless --force is given, so the job can be re-run after an
interruption. Steps whose issue has not landed yet are listed as such at the end.

Steps: real sample videos -> synthetic clips -> text tokenizer -> video tokenizer (a short run; no
shipped checkpoint yet) -> Ray pre-tokenization into shards -> transformer training (2 ranks,
DeepSpeed ZeRO-1) -> tokenizer evaluation on the held-out clips.
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
# The rest of the pipeline (DESIGN.md "Data flow"), until each lands.
NOT_YET_BUILT = ["Loong stage recipe (stages 1-3, loss re-weighting)", "jobs.generate (60 s videos)",
                 "report.html"]


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


def plan(out: Path, size: str, data_config: str) -> list[Step]:
    def cfg(suffix: str = "") -> str:
        return data_config if not suffix else str(CONFIGS / f"{size}{suffix}.yaml")

    train_manifests = f"{out / 'samples' / 'train.jsonl'},{out / 'synthetic' / 'manifest.jsonl'}"
    tokenizer = str(out / "tokenizer" / "tokenizer.safetensors")
    text_model = str(out / "text_tokenizer" / "text.model")
    return [
        Step("samples", "data_prep.samples", cfg(), ["--out", str(out / "samples")]),
        Step("synthetic", "data_prep.synthetic", cfg(), ["--out", str(out / "synthetic")]),
        Step("text_tokenizer", "data_prep.text_tokenizer", cfg(),
             ["--manifest", str(out / "train_manifest.jsonl"), "--out", text_model]),
        Step("tokenizer", "jobs.train_tokenizer", cfg("_tokenizer"),
             ["--out", str(out / "tokenizer"), "--manifest", train_manifests,
              "--eval-manifest", str(out / "samples" / "held_out.jsonl")]),
        Step("shards", "data_prep.pretokenize", cfg(),
             ["--manifest", str(out / "train_manifest.jsonl"), "--tokenizer", tokenizer, "--text-tokenizer", text_model,
              "--out", str(out / "shards")], ("pretokenize.progress=false",)),
        Step("lm", "jobs.train", cfg("_lm"), ["--shards", str(out / "shards"), "--out", str(out / "lm"), "--nproc", "2"]),
        Step("tokenizer_eval", "jobs.evaluate", cfg(),
             ["tokenizer", "--checkpoint", tokenizer, "--manifest", str(out / "samples" / "held_out.jsonl"),
              "--out", str(out / "tokenizer_eval"), "--clips", "15"]),
    ]


def _before(step: Step, out: Path) -> None:
    """Inputs that a step reads and earlier steps' outputs make."""
    if step.name == "text_tokenizer":
        from loong_dist.data.manifest import concat_manifests
        concat_manifests([str(out / "samples" / "train.jsonl"), str(out / "synthetic" / "manifest.jsonl")],
                         str(out / "train_manifest.jsonl"))


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("python -m jobs.quickstart", __doc__.splitlines()[0], ALIASES, sections=("run",))
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny", help="demo size (configs/demo/SIZE.yaml)")
    parser.add_argument("--force", action="store_true", help="re-run steps that finished before")
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = str(CONFIGS / f"{args.size}.yaml")
    cfg = resolve_config(args, ALIASES)
    out = Path(cfg.run.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    steps = plan(out, args.size, args.config)
    timings = {}
    for i, step in enumerate(steps, start=1):
        done = out / step.name / ".done"
        if done.exists() and not args.force:
            log.info("[%d/%d] %s: done before, skipped (--force re-runs it)", i, len(steps), step.name)
            timings[step.name] = json.loads(done.read_text()).get("wall_s")
            continue
        argv = [*step.args, "--config", step.config, *step.overrides, *args.overrides]
        if step.module == "jobs.evaluate":  # its target comes first
            argv = [step.args[0], "--config", step.config, *step.args[1:], *step.overrides, *args.overrides]
        log.info("[%d/%d] %s: python -m %s %s", i, len(steps), step.name, step.module, " ".join(argv))
        _before(step, out)
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", step.module, *argv], cwd=PROJECT_ROOT)
        if proc.returncode != 0:
            raise UserError(f"step {step.name} failed (exit code {proc.returncode}); "
                            f"finished steps are kept in {out}, re-run to continue")
        timings[step.name] = round(time.time() - start, 1)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"module": step.module, "args": argv, "wall_s": timings[step.name]}))

    summary = {"out": str(out), "steps": timings, "not_yet_built": NOT_YET_BUILT}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("done: %s", ", ".join(f"{k} {v} s" for k, v in timings.items()))
    log.info("outputs in %s (summary.json); not built yet, so not run: %s", out, "; ".join(NOT_YET_BUILT))
    return 0


if __name__ == "__main__":
    run_job(main)

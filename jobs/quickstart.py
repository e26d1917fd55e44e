"""The main job: the Loong pipeline end to end on one machine, on the embedded defaults.

    python -m jobs.quickstart --out runs/demo [--size tiny|small] [--force] [section.key=value ...]

Each step is the job a cluster user submits (`python -m data_prep.samples ...`), run as its own
process with the demo-sized config (configs/demo/<size>.yaml). A step that finished before (its
`.done` file is in the run folder) is skipped unless --force is given, so the job can be re-run
after an interruption. Steps whose issue has not landed yet are listed as such at the end.
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
# The rest of the pipeline (DESIGN.md "Data flow"), in order, until each lands.
NOT_YET_BUILT = ["jobs.train_tokenizer (video tokenizer)", "data_prep.pretokenize (Ray shards)",
                 "jobs.train stages 1-3 (the engine exists; it needs the shards above)",
                 "jobs.generate (60 s videos)", "jobs.evaluate + report.html"]


@dataclass
class Step:
    name: str
    """Folder under the run folder, and the name shown in progress lines."""
    module: str
    """The entry point, run as `python -m module args`."""
    args: list[str]
    """Its command line."""


def plan(out: Path, config: str) -> list[Step]:
    text_manifest = out / "captions.jsonl"
    return [
        Step("samples", "data_prep.samples", ["--config", config, "--out", str(out / "samples")]),
        Step("synthetic", "data_prep.synthetic", ["--config", config, "--out", str(out / "synthetic")]),
        Step("text_tokenizer", "data_prep.text_tokenizer",
             ["--config", config, "--manifest", str(text_manifest), "--out", str(out / "text_tokenizer" / "text.model")]),
    ]


def _before(step: Step, out: Path) -> None:
    """Inputs that a step reads and an earlier step's outputs make."""
    if step.name == "text_tokenizer":
        from loong_dist.data.manifest import concat_manifests
        concat_manifests([str(out / "samples" / "manifest.jsonl"), str(out / "synthetic" / "manifest.jsonl")],
                         str(out / "captions.jsonl"))


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("python -m jobs.quickstart", __doc__.splitlines()[0], ALIASES, sections=("run",))
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny", help="demo size (configs/demo/SIZE.yaml)")
    parser.add_argument("--force", action="store_true", help="re-run steps that finished before")
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = str(PROJECT_ROOT / "configs" / "demo" / f"{args.size}.yaml")
    cfg = resolve_config(args, ALIASES)
    out = Path(cfg.run.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    resolved = str(out / "config.yaml")  # every step gets the same resolved config

    steps = plan(out, resolved)
    timings = {}
    for i, step in enumerate(steps, start=1):
        done = out / step.name / ".done"
        if done.exists() and not args.force:
            log.info("[%d/%d] %s: done before, skipped (--force re-runs it)", i, len(steps), step.name)
            timings[step.name] = json.loads(done.read_text()).get("wall_s")
            continue
        log.info("[%d/%d] %s: python -m %s %s", i, len(steps), step.name, step.module, " ".join(step.args))
        _before(step, out)
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", step.module, *step.args], cwd=PROJECT_ROOT)
        if proc.returncode != 0:
            raise UserError(f"step {step.name} failed (exit code {proc.returncode}); "
                            f"finished steps are kept in {out}, re-run to continue")
        timings[step.name] = round(time.time() - start, 1)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"module": step.module, "args": step.args, "wall_s": timings[step.name]}))

    summary = {"out": str(out), "steps": timings, "not_yet_built": NOT_YET_BUILT}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("done: %s", ", ".join(f"{k} {v} s" for k, v in timings.items()))
    log.info("outputs in %s (summary.json); not built yet, so not run: %s", out, "; ".join(NOT_YET_BUILT))
    return 0


if __name__ == "__main__":
    run_job(main)

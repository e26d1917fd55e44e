"""Write report.html and summary.json for a run folder made by jobs.quickstart (or by the same
jobs run one by one into one folder).

    python -m jobs.report --run runs/demo [--title "..."]

The page opens from disk (no server, no network): configs, step timings and throughput, the
tokenizer's reconstructions with PSNR/SSIM, loss curves and per-latent-frame loss per training
stage, the generated videos with frame strips, drift and prompt-alignment numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loong_dist.cli import log, run_job
from loong_dist.errors import UserError


def main(argv: list[str] | None = None) -> int:
    from loong_dist.evaluation.report import write_report

    parser = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder (jobs.quickstart --out)")
    parser.add_argument("--title", default="loong-dist run", help="page title")
    parser.add_argument("--stages", default=None, help="comma-separated training run folders to show, in order "
                                                       "(default: every sub-folder with a metrics.jsonl)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    root = Path(args.run)
    if not root.is_dir():
        raise UserError(f"{root}: run folder not found")
    page, summary = write_report(root, args.title, stages=args.stages.split(",") if args.stages else None)
    log.info("report: %s (summary.json beside it; %d steps)", page, len(summary["steps"]))
    return 0


if __name__ == "__main__":
    run_job(main)

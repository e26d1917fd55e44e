"""Plumbing shared by every entry point: argument parsing onto the config, one-line user errors,
and the `loong` console script.

A job's command line is `--config FILE`, a few short flags that are aliases of config keys
(`--out DIR` is `run.out_dir=DIR`), and `section.key=value` overrides. The aliases live in one
table per job, so flags never repeat the dataclass fields they set.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from loong_dist.config import DEFAULT_CONFIG, Config, describe, load_config
from loong_dist.errors import UserError

log = logging.getLogger("loong_dist")


def job_parser(prog: str, description: str, aliases: dict[str, str],
               sections: Sequence[str] = ()) -> argparse.ArgumentParser:
    """An argparse parser with --config, alias flags for config keys, and dot-list overrides."""
    epilog = ""
    if sections:
        rows = [f"  {key} = {default!r}\n      {doc}" for key, doc, default in describe(Config)
                if key.split(".")[0] in sections]
        epilog = "config keys (set as key=value):\n" + "\n".join(rows)
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default = DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])
    parser.add_argument("--config", default=None, help=f"YAML config (may name a `base:`); default {default}")
    for flag, key in aliases.items():
        parser.add_argument(flag, dest=_alias_dest(key), default=None, metavar="V", help=f"same as {key}=V")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser


def _alias_dest(key: str) -> str:
    return "cfg__" + key.replace(".", "__")


def resolve_config(args: argparse.Namespace, aliases: dict[str, str], under: list[str] | None = None) -> Config:
    """Defaults -> `under` (see load_config) -> --config chain -> alias flags -> dot-list overrides."""
    overrides = []
    for key in aliases.values():
        value = getattr(args, _alias_dest(key))
        if value is not None:
            overrides.append(f"{key}={value}")
    overrides += list(args.overrides)
    # configs/base.yaml equals the dataclass defaults (a test keeps them so); an installed wheel
    # without the configs/ folder falls back to the defaults themselves.
    default = DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None
    return load_config(args.config or default, overrides, under=under)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def keep_freed_memory() -> bool:
    """glibc: serve large blocks from the heap and keep freed memory instead of unmapping it.

    With the defaults every large activation is mmapped afresh and page-faults on each pass,
    which slowed the tokenizer's decode 1.3-1.9x on CPU (bench/tokenizer.py measures both).
    Same effect as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824 (the Makefile sets those
    for child processes too)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def setup_process() -> None:
    """What every job process does first: logging, and the allocator setting above."""
    setup_logging()
    keep_freed_memory()


def run_job(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run an entry point: a `UserError` becomes one line on stderr and exit code 2."""
    setup_process()
    try:
        rc = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc or 0)


# `loong <command> ...` runs the module's main(); the modules are also `python -m` entry points.
COMMANDS = {
    "samples": "data_prep.samples",
    "synthetic": "data_prep.synthetic",
    "text-tokenizer": "data_prep.text_tokenizer",
    "train": "jobs.train",
    "generate": "jobs.generate",
    "quickstart": "jobs.quickstart",
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        names = "\n".join(f"  {name:16s} python -m {module}" for name, module in COMMANDS.items())
        print(f"usage: loong <command> [args]\n\ncommands:\n{names}", file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    module = importlib.import_module(COMMANDS[argv[0]])
    run_job(module.main, argv[1:])

"""Every tracked text file keeps its lines within 120 characters (data files excepted)."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 120
DATA = (".json", ".jsonl", ".png", ".gif", ".mp4", ".safetensors", ".model", ".npy", ".npz", ".tar")


def _project_files() -> list[str]:
    """Tracked files; outside a git checkout, the tree without its environment, caches and runs."""
    git = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if git.returncode == 0:
        return git.stdout.split()
    skip = {".venv", ".cache", ".git", "runs", "__pycache__", ".pytest_cache"}
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if not skip & set(p.relative_to(ROOT).parts)]


def test_no_line_is_longer_than_the_limit():
    files = _project_files()
    long = []
    for name in files:
        path = ROOT / name
        if name.endswith(DATA) or not path.is_file():
            continue
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:  # binary
            continue
        long += [f"{name}:{i}: {len(line)}" for i, line in enumerate(lines, 1) if len(line) > LIMIT]
    assert not long, "lines over 120 characters:\n" + "\n".join(long)

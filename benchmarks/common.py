"""Shared helpers of the benchmark scripts: data paths, tables."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
AG_NEWS_TEST = SHARED / "ag_news" / "test.csv"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"


def require(path: Path) -> Path:
    """Exit with one line when a shared data file is absent."""
    if not path.exists():
        sys.exit(f"error: this benchmark needs {path} (the shared data folder beside the checkout)")
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    """A Markdown table on stdout."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    sys.stdout.flush()


median = statistics.median


def duration(seconds: int) -> str:
    """``seconds`` as Lightning's ``trainer.max_time`` (DD:HH:MM:SS)."""
    return f"{seconds // 86400:02d}:{seconds % 86400 // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train(overrides: list[str], run_dir: Path) -> dict:
    """Run ``train.py`` with ``overrides`` into ``run_dir`` as a user would (one process; benchmarks
    run them one at a time) and return its ``metrics.json``; exit with the command and the end
    of its stderr if it fails."""
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
    print("running:", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return json.loads((Path(run_dir) / "metrics.json").read_text())


"""Shared helpers of the benchmark scripts: data paths, tables."""

from __future__ import annotations

import contextlib
import json
import os
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
    return train_together([overrides], [run_dir], threads=None)[0]


def train_together(overrides: list[list[str]], run_dirs: list[Path], threads: int | None) -> list[dict]:
    """Run one ``train.py`` per entry of ``overrides`` at the same time, each limited to ``threads``
    CPU threads (``OMP_NUM_THREADS``, which torch reads at start; None: torch's default, one per
    core), and return their ``metrics.json`` in order. Side by side, each run gets the same share
    of the machine for its whole budget, so a comparison between them stays paired."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    procs = []
    for extra, run_dir in zip(overrides, run_dirs):
        cmd = [sys.executable, str(ROOT / "train.py"), *extra, f"hydra.run.dir={run_dir}"]
        print("running:", " ".join(cmd[1:]), file=sys.stderr, flush=True)
        procs.append(
            (
                cmd,
                subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
            )
        )
    for cmd, proc in procs:
        stderr = proc.communicate()[1]
        if proc.returncode != 0:
            sys.exit(f"error: {' '.join(cmd)} failed:\n{stderr[-2000:]}")
    return [json.loads((Path(run_dir) / "metrics.json").read_text()) for run_dir in run_dirs]


@contextlib.contextmanager
def worktrees(commits: list[str]):
    """A git worktree of each commit (commit -> folder), beside the checkout, where each commit's own
    benchmarks find the shared data (../shared); every one made is removed on the way out, also when
    a later one or a measurement fails."""
    trees = {}
    try:
        for commit in commits:
            tree = ROOT.parent / f".charlm-{commit.replace('/', '_')}-{os.getpid()}"
            add = subprocess.run(
                ["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, capture_output=True, text=True
            )
            if add.returncode:
                sys.exit(f"error: no worktree for {commit}: {add.stderr.strip().splitlines()[-1]}")
            trees[commit] = tree
        yield trees
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)

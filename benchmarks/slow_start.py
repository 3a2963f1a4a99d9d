"""A short time budget on a busy machine: what a slow start costs, at several commits.

    python benchmarks/slow_start.py 6899180 HEAD [--rounds 3] [--budget 30] [--busy 20]

Each run trains the default model on AG News (the shared test split) for ``--budget`` seconds while
two busy-looping processes hold both cores for the run's first ``--busy`` seconds (a shared
machine or a laptop: the first steps then take many seconds). Reported per commit (medians of the
alternated rounds): optimizer steps trained, the peak learning rate (configured 6e-3), and the
best val bpc. Each commit runs from a git worktree of its own, with its own charlm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import AG_NEWS_TEST, duration, median, print_table, require, worktrees

HOG = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"


def peak_lr(run: Path) -> float | None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for path in run.glob("events.out.tfevents.*"):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0}).Reload()
        if "lr-AdamW" in events.Tags()["scalars"]:
            values += [p.value for p in events.Scalars("lr-AdamW")]
    return max(values, default=None)


def one_run(tree: Path, budget: int, busy: int, out: Path) -> dict:
    hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(seconds=busy)]) for _ in range(2)]
    try:
        run = subprocess.run(
            [
                sys.executable,
                "train.py",
                f"data.path={AG_NEWS_TEST}",
                f"data.cache_dir={out / 'cache'}",
                f"trainer.max_time={duration(budget)}",
                f"hydra.run.dir={out / 'run'}",
            ],
            cwd=tree,
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    finally:
        for hog in hogs:
            hog.kill()
    if run.returncode:
        sys.exit(f"error: the run failed in {tree}:\n{run.stderr[-2000:]}")
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    return {"steps": metrics["steps"], "peak_lr": peak_lr(out / "run"), "val": metrics["best/val_bpc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commits", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=30, help="trainer.max_time in seconds")
    parser.add_argument("--busy", type=int, default=20, help="seconds both cores are held at the start")
    args = parser.parse_args()
    require(AG_NEWS_TEST)
    results = {c: [] for c in args.commits}
    with worktrees(args.commits) as trees:
        for _ in range(args.rounds):
            for commit, tree in trees.items():
                with tempfile.TemporaryDirectory() as tmp:
                    started = time.monotonic()
                    results[commit].append(one_run(tree, args.budget, args.busy, Path(tmp)))
                print(commit, results[commit][-1], f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print(
        f"\ndefault model on AG News, trainer.max_time={args.budget} s, both cores busy for the first {args.busy} s, "
        f"{args.rounds} alternated rounds (median; each round's figure after the slash)\n"
    )
    rows = []
    for commit, runs in results.items():
        cell = {
            key: " / ".join(fmt.format(r[key]) for r in runs)
            for key, fmt in (("steps", "{}"), ("peak_lr", "{:.2e}"), ("val", "{:.3f}"))
        }
        rows.append(
            [
                commit,
                f"{median(r['steps'] for r in runs):.0f} ({cell['steps']})",
                f"{median(r['peak_lr'] for r in runs):.2e} ({cell['peak_lr']})",
                f"{median(r['val'] for r in runs):.3f} ({cell['val']})",
            ]
        )
    print_table(["commit", "steps trained", "peak learning rate", "best val bpc"], rows)


if __name__ == "__main__":
    main()

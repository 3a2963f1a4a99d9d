"""Training speed of the default model at several commits, runs alternated (so drift in the
machine's speed hits every commit alike): the project loop and the plain PyTorch loop of
``benchmarks/throughput.py`` *as each commit has them*, each commit in a git worktree of its own.

    python benchmarks/commits.py b32578c HEAD [--rounds 3] [--steps 200]

For regression hunts: on this 2-core machine one run's chars/s varies by up to ~15% from the next,
so a slowdown is real only where the alternated rounds separate.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from common import AG_NEWS_TEST, median, print_table, require, worktrees

# run inside the commit's worktree: its own charlm and its own throughput.py
PROBE = """
import sys; sys.path[:0] = ['.', 'benchmarks']
import throughput
print(throughput.project_loop([], {steps}), throughput.plain_loop([], {steps}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commits", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    require(AG_NEWS_TEST)
    results: dict[str, list[tuple[float, float]]] = {c: [] for c in args.commits}
    with worktrees(args.commits) as trees:
        for _ in range(args.rounds):
            for commit, tree in trees.items():
                run = subprocess.run(
                    [sys.executable, "-c", PROBE.format(steps=args.steps)], cwd=tree, capture_output=True, text=True
                )
                if run.returncode:
                    sys.exit(f"error: the probe failed at {commit}:\n{run.stderr[-2000:]}")
                out = run.stdout.split()
                results[commit].append((float(out[-2]), float(out[-1])))
                print(commit, results[commit][-1], file=sys.stderr, flush=True)
    rows = [
        [
            c,
            " / ".join(f"{p:,.0f}" for p, _ in r),
            f"{median(p for p, _ in r):,.0f}",
            " / ".join(f"{q:,.0f}" for _, q in r),
            f"{median(q for _, q in r):,.0f}",
        ]
        for c, r in results.items()
    ]
    print(f"\ndefault model, {args.steps} steps a measurement, {args.rounds} alternated rounds\n")
    print_table(["commit", "project loop chars/s (rounds)", "median", "plain loop chars/s (rounds)", "median"], rows)


if __name__ == "__main__":
    main()

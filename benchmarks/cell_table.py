"""Each cell's best configuration in one or more summarized sweeps, in nats/char: the table of
docs/results.md's "LSTM, GRU, or a minimal parallel RNN?".

Reads the ``summary.csv`` that ``python -m charlm.summary SWEEP`` wrote (one row per job). For each cell,
the configuration with the lowest mean validation bpc among those run with at least ``--seeds``
seeds (a sweep's seed-1 grid, then more seeds of each cell's winner); its test loss as the median
over seeds with their range, in nats/char (bpc x ln 2), and its median speed and characters.

    python benchmarks/cell_table.py outputs/sweeps/cells-120/shakespeare [more sweeps] [--seeds 3]
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

from common import print_table

CELL_ORDER = ("lstm", "gru", "mingru", "minlstm", "rnn")


def rows_of(sweep: Path) -> list[dict]:
    path = sweep / "summary.csv"
    if not path.exists():
        sys.exit(f"error: {path} not found; run python -m charlm.summary {sweep} first")
    return [r for r in csv.DictReader(path.open()) if r["status"] == "ok" and r["test_bpc"]]


def best_per_cell(rows: list[dict], seeds: int) -> dict[str, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["cell"], r["configuration"]), []).append(r)
    candidates: dict[str, list[list[dict]]] = {}
    for (cell, _), runs in groups.items():
        if len(runs) >= seeds:
            candidates.setdefault(cell, []).append(runs)
    val = lambda runs: statistics.mean(float(r["best_val_bpc"]) for r in runs)  # noqa: E731
    return {cell: min(configurations, key=val) for cell, configurations in candidates.items()}


def nats(runs: list[dict]) -> list[float]:
    """The runs' test losses in nats/char, sorted."""
    return sorted(float(r["test_bpc"]) * math.log(2) for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", type=Path, nargs="+")
    parser.add_argument("--seeds", type=int, default=3, help="the fewest seeds a configuration needs")
    args = parser.parse_args()
    table = []
    for sweep in args.sweeps:
        best = best_per_cell(rows_of(sweep), args.seeds)
        lowest = min((statistics.median(nats(runs)) for runs in best.values()), default=None)
        for cell in sorted(best, key=lambda c: CELL_ORDER.index(c) if c in CELL_ORDER else 99):
            runs = best[cell]
            losses = nats(runs)
            bpc = [float(r["test_bpc"]) for r in runs]
            median_nats = statistics.median(losses)
            table.append(
                [
                    f"{sweep.parent.name}/{sweep.name}",
                    runs[0]["configuration"],
                    f"{len(runs)} ({', '.join(sorted(r['seed'] for r in runs))})",
                    f"**{median_nats:.4f}**" if median_nats == lowest else f"{median_nats:.4f}",
                    f"{losses[0]:.4f}–{losses[-1]:.4f}",
                    f"{statistics.mean(bpc):.4f} ± {statistics.stdev(bpc) if len(bpc) > 1 else 0:.4f}",
                    f"{statistics.median(float(r['best_val_bpc']) for r in runs):.4f}",
                    f"{statistics.median(float(r['chars_per_sec']) for r in runs):,.0f}",
                    f"{statistics.median(float(r['characters']) for r in runs) / 1e6:.1f} M",
                    f"{int(runs[0]['parameters']):,}",
                ]
            )
    print_table(
        [
            "sweep",
            "cell and its best configuration",
            "seeds",
            "test nats/char (median)",
            "range",
            "test bpc (mean ± std)",
            "best val bpc (median)",
            "chars/s (median)",
            "characters trained",
            "parameters",
        ],
        table,
    )


if __name__ == "__main__":
    main()

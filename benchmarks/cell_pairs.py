"""LSTM against GRU at equal training characters, pair by pair, from a finished sweep's curves.csv.

For each configuration of a sweep that exists as both ``lstm L×H ...`` and ``gru L×H ...``: each
seed's val/bpc read off its curve (straight lines between validations) at the characters that every
run of the pair reached, then mean ± std over the seeds. At equal time on this CPU the LSTM sees
~2.5× more characters (oneDNN runs it, not the GRU); this table takes that away.

    python benchmarks/cell_pairs.py outputs/sweeps/<sweep>
    python benchmarks/cell_pairs.py outputs/sweeps/<sweep> --at 1000000   # every configuration at 1 M characters
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from common import print_table

from charlm.summary import interpolate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--at", type=float, nargs="+", help="also: every configuration's val bpc at these characters")
    args = parser.parse_args()
    runs: dict[str, dict[str, tuple[list[float], list[float]]]] = {}  # configuration -> run -> (chars, bpc)
    with open(args.sweep / "curves.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["characters"]:
                chars, bpc = runs.setdefault(row["configuration"], {}).setdefault(row["run"], ([], []))
                chars.append(float(row["characters"]))
                bpc.append(float(row["val_bpc"]))
    rows = []
    for config in sorted(c for c in runs if c.startswith("lstm ")):
        other = "gru " + config[len("lstm "):]
        if other not in runs:
            continue
        pair = {config: runs[config], other: runs[other]}
        reached = min(chars[-1] for seeds in pair.values() for chars, _ in seeds.values())
        cells = []
        for seeds in pair.values():
            values = [interpolate(chars, bpc, reached) for chars, bpc in seeds.values()]
            values = [v for v in values if v is not None]
            std = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append((statistics.fmean(values), f"{statistics.fmean(values):.4f}{std} (n={len(values)})"))
        rows.append([config[len("lstm "):], f"{reached:,.0f}", cells[0][1], cells[1][1], f"{cells[1][0] - cells[0][0]:+.4f}"])
    print_table(["layers × hidden", "characters (every run of the pair)", "LSTM val bpc", "GRU val bpc",
                 "GRU − LSTM"], rows)
    for at in args.at or []:
        print()
        table = []
        for config, seeds in sorted(runs.items()):
            values = [v for v in (interpolate(chars, bpc, at) for chars, bpc in seeds.values()) if v is not None]
            if values:
                table.append([config, f"{statistics.fmean(values):.4f}", len(values)])
        print_table([f"configuration (runs that reached {at:,.0f} characters)", "mean val bpc", "seeds"], table)


if __name__ == "__main__":
    main()

"""LSTM against GRU at equal training characters, pair by pair, from a finished sweep's job folders.

For each configuration of a sweep that exists as both ``lstm L×H ...`` and ``gru L×H ...``: each
seed's val/bpc read off its curve (straight lines between validations) at the characters that every
run of the pair reached, then mean ± std over the seeds. At equal time on this CPU the LSTM sees
more characters (oneDNN runs it, not the GRU); this table takes that away. The configurations and
their curves are ``charlm.summary``'s (``collect``), as in the sweep's summary.md.

    python benchmarks/cell_pairs.py outputs/sweeps/<sweep>
    python benchmarks/cell_pairs.py outputs/sweeps/<sweep> --at 1000000   # every configuration at 1 M characters
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import print_table

from charlm.summary import collect, drawn_on, interpolate


def values_at(curves: list[dict], characters: float) -> list[float]:
    """Each curve's val/bpc at ``characters``, for the curves that reach it."""
    values = (interpolate(c["characters"], c["value"], characters) for c in curves)
    return [v for v in values if v is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--at", type=float, nargs="+", help="also: every configuration's val bpc at these characters")
    args = parser.parse_args()
    _, configs = collect(args.sweep)
    curves = {
        c["configuration"]: [
            r["curves"]["val/bpc"] for r in c["members"] if drawn_on(r["curves"]["val/bpc"], "characters")
        ]
        for c in configs
    }
    rows = []
    for config in sorted(c for c in curves if c.startswith("lstm ") and curves[c]):
        other = "gru " + config[len("lstm ") :]
        if not curves.get(other):
            continue
        reached = min(c["characters"][-1] for name in (config, other) for c in curves[name])
        cells = []
        for name in (config, other):
            values = values_at(curves[name], reached)
            std = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append((statistics.fmean(values), f"{statistics.fmean(values):.4f}{std} (n={len(values)})"))
        rows.append(
            [config[len("lstm ") :], f"{reached:,.0f}", cells[0][1], cells[1][1], f"{cells[1][0] - cells[0][0]:+.4f}"]
        )
    print_table(
        ["layers × hidden", "characters (every run of the pair)", "LSTM val bpc", "GRU val bpc", "GRU − LSTM"], rows
    )
    for at in args.at or []:
        print()
        table = [
            [name, f"{statistics.fmean(values):.4f}", len(values)]
            for name, values in sorted((name, values_at(c, at)) for name, c in curves.items())
            if values
        ]
        print_table([f"configuration (runs that reached {at:,.0f} characters)", "mean val bpc", "seeds"], table)


if __name__ == "__main__":
    main()

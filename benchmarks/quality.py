"""Held-out loss per wall-clock budget: train.py on the shared AG News file for a fixed time.

Each run trains with ``trainer.max_time`` on ../shared/data/ag_news/test.csv with its last
600 articles held out as the test split (200 before them as validation), then scores every
held-out character with its full left context in its article (the test split's carried-state
evaluation) using the best checkpoint.

    python benchmarks/quality.py --budgets 120                     # the project's defaults
    python benchmarks/quality.py --budgets 60 120 300 --config "model.hidden_size=256" ...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import AG_NEWS_TEST, duration, median, print_table, require, train


def held_out_loss(overrides: list[str], seconds: int, run_dir: Path) -> dict:
    return train(
        [
            f"data.path={AG_NEWS_TEST}",
            "data.val_size=200",
            "data.test_size=600",
            f"trainer.max_time={duration(seconds)}",
            *overrides,
        ],
        run_dir,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[120], help="seconds of training")
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        help="space-separated train.py overrides; repeat to compare (default: the defaults)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell (the median is shown)")
    args = parser.parse_args()
    require(AG_NEWS_TEST)
    configs = args.config or [""]
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for config in configs:
            for seconds in args.budgets:
                runs = [
                    held_out_loss(config.split(), seconds, Path(out) / f"{len(rows)}-{r}") for r in range(args.repeats)
                ]
                loss = median(r["test/loss"] for r in runs)
                rows.append(
                    [
                        config or "(defaults)",
                        seconds,
                        f"{loss:.4f}",
                        f"{median(r['test/bpc'] for r in runs):.4f}",
                        f"{median(r['train/chars_per_sec'] for r in runs):,.0f}",
                        runs[0]["parameters"],
                    ]
                )
                print(f"{rows[-1]}", file=sys.stderr, flush=True)
    print()
    print_table(
        ["config (train.py overrides)", "budget s", "held-out loss (nats/char)", "bpc", "train chars/s", "parameters"],
        rows,
    )


if __name__ == "__main__":
    main()

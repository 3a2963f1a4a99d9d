"""Training data orders compared at the same model and wall-clock budget: held-out loss per seed.

``--orders streams`` (the default): ``data.order=windows`` (shuffled windows, today's default)
against ``data.order=streams`` (contiguous rows, the state carried across batches), with the
project's default model, on two corpora:

- ``ag_news``: the shared AG News file (../shared/data/ag_news/test.csv) split by the defaults
  (its last 5% of articles test, the 5% before them validation);
- ``shakespeare``: tiny Shakespeare with nanoGPT's held-out part as the test split (the last
  ``len - int(0.9 * len)`` characters) and ``--shakespeare-val-size`` of the file before it as
  validation (used to pick the best checkpoint only).

``--orders lesson``: ``experiment=lesson`` (the lesson's model and order, ``data.order=articles``)
against the defaults on AG News (the issue's figures: 2.06 against 1.48 nats/char after 120 s).

Runs are train.py processes, one at a time (never together: they would share the CPUs and each
get a part of its budget) -- or, with ``--side-by-side``, the two orders of one seed at the same
time with one core each (half the wall-clock time of the benchmark; each run gets a steady half of
the machine, so the pair stays fair, but its numbers are those of a 1-core budget). A table row is one seed, the orders side by side with their
difference (paired: the same seed, so the same initial weights); the last row of each corpus
and budget is the median.

    python benchmarks/orders.py                                  # 2 corpora x 2 budgets x 3 seeds x 2 orders
    python benchmarks/orders.py --corpora ag_news --budgets 120 --seeds 1
    python benchmarks/orders.py --orders lesson
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import AG_NEWS_TEST, SHAKESPEARE, duration, median, print_table, require, train_together

ORDERS = {
    "streams": {"windows": ["data.order=windows"], "streams": ["data.order=streams"]},
    "lesson": {"defaults": [], "lesson": ["experiment=lesson"]},
}


def corpus_overrides(corpus: str, val_size: float) -> list[str]:
    if corpus == "ag_news":
        return [f"data.path={require(AG_NEWS_TEST)}"]
    text = require(SHAKESPEARE).read_text(encoding="utf-8")
    held_out = len(text) - int(0.9 * len(text))  # nanoGPT's val split: the characters after the first 90%
    return ["data=text", f"data.path={SHAKESPEARE}", f"data.test_size={held_out}", f"data.val_size={val_size}"]


def run(
    overrides: list[list[str]], seconds: int, seed: int, run_dirs: list[Path], extra: list[str], threads: int | None
) -> list[dict]:
    return train_together(
        [[*o, f"seed={seed}", f"trainer.max_time={duration(seconds)}", *extra] for o in overrides], run_dirs, threads
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--orders",
        choices=sorted(ORDERS),
        default="streams",
        help="streams: windows vs streams; lesson: experiment=lesson vs the defaults (AG News, 120 s)",
    )
    parser.add_argument(
        "--corpora",
        nargs="+",
        choices=["ag_news", "shakespeare"],
        default=None,
        help="default: both (streams), ag_news (lesson)",
    )
    parser.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        default=None,
        help="seconds of training per run; default 120 600 (streams), 120 (lesson)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. n-1, each run with every order")
    parser.add_argument(
        "--shakespeare-val-size",
        type=float,
        default=0.01,
        help="validation share of tiny Shakespeare, cut before its held-out last 10%%",
    )
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="run the two orders of a seed at once, one CPU thread each (half the wall time)",
    )
    parser.add_argument("--extra", default="", help="space-separated train.py overrides added to every run")
    args = parser.parse_args()
    configs = ORDERS[args.orders]
    corpora = args.corpora or (["ag_news", "shakespeare"] if args.orders == "streams" else ["ag_news"])
    budgets = args.budgets or ([120, 600] if args.orders == "streams" else [120])
    names = list(configs)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for corpus in corpora:
            base = corpus_overrides(corpus, args.shakespeare_val_size)
            for seconds in budgets:
                losses = {name: [] for name in names}
                bpcs = {name: [] for name in names}
                for seed in range(args.seeds):
                    # side by side: both orders at once, one core each; else one at a time, all cores each
                    batches = [names] if args.side_by_side else [[name] for name in names]
                    results = [
                        metrics
                        for batch in batches
                        for metrics in run(
                            [base + configs[n] for n in batch],
                            seconds,
                            seed,
                            [Path(out) / f"{corpus}-{seconds}-{seed}-{n}" for n in batch],
                            args.extra.split(),
                            threads=1 if args.side_by_side else None,
                        )
                    ]
                    for name, metrics in zip(names, results):
                        losses[name].append(metrics["test/loss"])
                        bpcs[name].append(metrics["test/bpc"])
                    a, b = names
                    rows.append(
                        [
                            corpus,
                            seconds,
                            seed,
                            *(f"{bpcs[n][-1]:.4f}" for n in names),
                            *(f"{losses[n][-1]:.4f}" for n in names),
                            f"{losses[b][-1] - losses[a][-1]:+.4f}",
                        ]
                    )
                    print(rows[-1], file=sys.stderr, flush=True)
                a, b = names
                rows.append(
                    [
                        corpus,
                        seconds,
                        "median",
                        *(f"{median(bpcs[n]):.4f}" for n in names),
                        *(f"{median(losses[n]):.4f}" for n in names),
                        f"{median(x - y for x, y in zip(losses[b], losses[a])):+.4f}",
                    ]
                )
    print()
    a, b = names
    print_table(
        [
            "corpus",
            "budget s",
            "seed",
            f"{a} test bpc",
            f"{b} test bpc",
            f"{a} nats/char",
            f"{b} nats/char",
            f"{b} - {a} nats/char (paired)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()

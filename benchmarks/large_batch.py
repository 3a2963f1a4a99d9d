"""Held-out bpc at equal characters for several batch sizes, with the learning rate scaled by the
square root of the batch (the rule of ``experiment=gpu``, ``charlm.config.sqrt_scaled_lr``) or not.

Every run trains on the same number of characters (``--chars``: steps = chars / (batch x nchars))
with train.py's defaults otherwise, and is scored on the test split with its best checkpoint. If the
rule holds, the scaled rows keep about the bpc of batch 16 while the unscaled ones fall behind; where
the scaled rows too fall behind, the batch is past the critical batch size for this budget.

    python benchmarks/large_batch.py                           # batch 16, 64, 256 (runs of minutes on a CPU)
    python benchmarks/large_batch.py --chars 20000000 --batch 16 256 1024 -- experiment=gpu  # on a GPU
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import AG_NEWS_TEST, print_table, require, train

from charlm.config import sqrt_scaled_lr

BASE_LR, BASE_BATCH, NCHARS = 0.006, 16, 100


def run(batch: int, lr: float, steps: int, extra: list[str], out: Path) -> dict:
    started = time.perf_counter()
    metrics = train(
        [
            f"data.path={AG_NEWS_TEST}",
            "data.val_size=200",
            "data.test_size=600",
            f"data.batch_size={batch}",
            f"optimizer.lr={lr}",
            f"trainer.max_steps={steps}",
            "trainer.max_epochs=-1",
            f"data.nchars={NCHARS}",
            "~callbacks.progress_bar",
            "+trainer.enable_progress_bar=false",
            *extra,
        ],
        out,
    )
    return {**metrics, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=3_000_000, help="training characters per run")
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("overrides", nargs="*", help="more train.py overrides (after --)")
    args = parser.parse_args()
    require(AG_NEWS_TEST)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for batch in args.batch:
            steps = max(1, args.chars // (batch * NCHARS))
            rules = [("sqrt", sqrt_scaled_lr(BASE_LR, BASE_BATCH, batch))]
            if batch != BASE_BATCH:
                rules.append(("none", BASE_LR))
            for rule, lr in rules:
                metrics = run(batch, lr, steps, args.overrides, Path(out) / f"{batch}-{rule}")
                rows.append(
                    [
                        batch,
                        rule,
                        f"{lr:g}",
                        steps,
                        f"{metrics['test/bpc']:.4f}",
                        f"{metrics['best/val_bpc']:.4f}",
                        f"{metrics['seconds']:.0f}",
                    ]
                )
                print(rows[-1], file=sys.stderr, flush=True)
    print()
    print_table(["batch", "lr rule", "lr", "steps", "test bpc", "best val bpc", "seconds"], rows)


if __name__ == "__main__":
    main()

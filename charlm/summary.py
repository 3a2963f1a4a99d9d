"""The summary of a sweep folder: a table of its jobs (summary.md, summary.csv) and two plots.

    python -m charlm.summary outputs/sweeps/<sweep>

(re)builds it from a finished, failed or interrupted sweep; every multirun also writes it when
it ends (``charlm.sweep.SweepCallback``)."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shlex
from pathlib import Path

import torch
from omegaconf import OmegaConf

from charlm.errors import UserError, exit_on_user_error

ERROR_FILE = "error.txt"  # a failed job's one-line error, written by charlm.sweep.SweepCallback
CONFIG_KEYS = ("model.cell", "model.layers", "model.hidden_size", "model.dropout", "optimizer.lr")
METRICS = {"parameters": "parameters", "best_val_bpc": "best/val_bpc", "test_bpc": "test/bpc",
           "chars_per_sec": "train/chars_per_sec", "fit_seconds": "fit_seconds", "steps": "steps"}
CSV_COLUMNS = ["run", *(key.split(".")[-1] for key in CONFIG_KEYS), *METRICS, "best_epoch", "best_step", "status",
               "error"]
# Markdown: (column, header, format)
TABLE = [("run", "config", "{}"), ("parameters", "parameters", "{:,}"), ("best_val_bpc", "best val/bpc", "{:.4f}"),
         ("test_bpc", "test/bpc", "{:.4f}"), ("best_epoch", "epoch of best val", "{}"),
         ("chars_per_sec", "characters/s", "{:,.0f}"), ("fit_seconds", "wall time (s)", "{:,.1f}"),
         ("status", "status", "{}")]
PLOTS = ("best_val_bpc.png", "learning_curves.png")


def find_runs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep: those with the job's config.yaml or a failed job's error.txt."""
    found = {path.parent for name in ("config.yaml", ERROR_FILE) for path in sweep_dir.rglob(name)}
    return sorted(run for run in found if ".hydra" not in run.relative_to(sweep_dir).parts)


def read_run(run: Path, sweep_dir: Path) -> dict:
    """One row of the table: the job's config, final metrics, epoch and step of its best
    checkpoint, and status (``ok``, ``failed`` or ``incomplete``: killed, interrupted or running)."""
    cfg = OmegaConf.load(run / "config.yaml") if (run / "config.yaml").exists() else OmegaConf.create()
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    error = (run / ERROR_FILE).read_text().strip() if (run / ERROR_FILE).exists() else ""
    row = {"run": run.relative_to(sweep_dir).as_posix()}
    row.update({key.split(".")[-1]: OmegaConf.select(cfg, key) for key in CONFIG_KEYS})
    row.update({column: metrics.get(key) for column, key in METRICS.items()})
    best = run / "checkpoints" / "best.ckpt"
    if best.exists():
        checkpoint = torch.load(best, map_location="cpu", weights_only=True)
        row.update(best_epoch=checkpoint["epoch"], best_step=checkpoint["global_step"])
    row["status"] = "ok" if metrics else "failed" if error else "incomplete"
    row["error"] = "" if metrics else error
    return row


def val_curve(run: Path) -> tuple[list[int], list[float]]:
    """``val/bpc`` against the training step, from the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # it logs every event file it opens
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    points = events.Scalars("val/bpc") if "val/bpc" in events.Tags()["scalars"] else []
    return [p.step for p in points], [p.value for p in points]


def plot(rows: list[dict], sweep_dir: Path) -> bool:
    """Draw best_val_bpc.png (best val/bpc against hidden size, one line per cell and depth) and
    learning_curves.png (val/bpc of every run) into ``sweep_dir``; False without matplotlib."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError:
        return False
    best: dict[tuple, dict[int, float]] = {}  # (cell, layers) -> hidden size -> best val/bpc over other settings
    for row in rows:
        if row["best_val_bpc"] is not None:
            points = best.setdefault((str(row["cell"]), row["layers"] or 0), {})
            points[row["hidden_size"]] = min(points.get(row["hidden_size"], math.inf), row["best_val_bpc"])
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for (cell, layers), points in sorted(best.items()):
        sizes = sorted(points)
        label = f"{cell}, {layers} layer{'s' * (layers > 1)}"
        ax.plot(sizes, [points[size] for size in sizes], marker="o", label=label)
    sizes = sorted({size for points in best.values() for size in points})
    if sizes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.legend()
    ax.set(xlabel="hidden size", ylabel="best val/bpc", title=f"{sweep_dir.name}: best validation bits per character")
    ax.grid(alpha=0.3)
    fig.savefig(sweep_dir / PLOTS[0], dpi=120)

    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for row in rows:
        steps, values = val_curve(sweep_dir / row["run"])
        if steps:
            ax.plot(steps, values, marker=".", label=row["run"])
    if ax.lines:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="x-small")  # outside: the figure grows
    ax.set(xlabel="training step", ylabel="val/bpc", title=f"{sweep_dir.name}: learning curves")
    ax.grid(alpha=0.3)
    fig.savefig(sweep_dir / PLOTS[1], dpi=120, bbox_inches="tight")
    return True


def _cell(row: dict, column: str, fmt: str) -> str:
    value = row.get(column)
    if column == "status" and row["error"]:
        value = f"{value}: {row['error']}"
    return "" if value is None else fmt.format(value).replace("|", "\\|")


def resume_command(sweep_dir: Path) -> tuple[str, str] | None:
    """The folder the sweep ran in, and its command with ``resume=true``, which runs again only
    the jobs that did not finish."""
    multirun = sweep_dir / "multirun.yaml"
    if not multirun.exists():
        return None
    hydra = OmegaConf.load(multirun).hydra
    overrides = [o for o in [*hydra.overrides.hydra, *hydra.overrides.task]
                 if not o.startswith(("hydra.sweep.dir=", "hydra.mode=", "resume=",
                                      "hydra.job.config.override_dirname.exclude_keys="))]  # SweptKeys adds it again
    return hydra.runtime.cwd, " ".join(["python train.py -m", shlex.quote(f"hydra.sweep.dir={sweep_dir.resolve()}"),
                                        *map(shlex.quote, overrides), "resume=true"])


def summarize(sweep_dir: Path) -> str:
    """Write summary.md, summary.csv and the plots into ``sweep_dir``; return the Markdown."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a folder; pass a sweep folder, e.g. outputs/sweeps/<sweep>")
    runs = find_runs(sweep_dir)
    if not runs:
        raise UserError(f"{sweep_dir} has no jobs (no <job>/config.yaml or <job>/{ERROR_FILE}); pass a sweep folder")
    rows = sorted((read_run(run, sweep_dir) for run in runs),
                  key=lambda r: (r["best_val_bpc"] is None, r["best_val_bpc"] or 0.0, r["run"]))
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

    lines = [f"# Sweep {sweep_dir.name}", "",
             f"{sum(r['status'] == 'ok' for r in rows)} of {len(rows)} jobs finished; sorted by best val/bpc "
             "(validation bits per character of the best checkpoint, which test/bpc evaluates).", "",
             "| " + " | ".join(header for _, header, _ in TABLE) + " |", "|" + "---|" * len(TABLE)]
    lines += ["| " + " | ".join(_cell(row, column, fmt) for column, _, fmt in TABLE) + " |" for row in rows]
    lines.append("")
    if plot(rows, sweep_dir):
        lines += [f"![{name}]({name})" for name in PLOTS]
    else:
        lines.append("plots skipped: matplotlib is not installed (pip install 'charlm[plots]')")
    unfinished = [row for row in rows if row["status"] != "ok"]
    resume = resume_command(sweep_dir)
    if unfinished and resume:
        lines += ["", f"Jobs that did not finish: {len(unfinished)}. To run them again into this folder, with any job "
                  f"the sweep never reached, from {resume[0]}:", "", f"    {resume[1]}"]
    markdown = "\n".join(lines) + "\n"
    (sweep_dir / "summary.md").write_text(markdown)
    return markdown


def main(argv: list[str] | None = None) -> None:
    """Command line: rebuild and print the summary of a sweep folder."""
    parser = argparse.ArgumentParser(prog="python -m charlm.summary", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder, e.g. outputs/sweeps/<time>_<pid>")
    with exit_on_user_error():
        print_summary(parser.parse_args(argv).sweep_dir)


def print_summary(sweep_dir: Path) -> None:
    """Write the summary of ``sweep_dir`` and print it."""
    print(summarize(sweep_dir), end="")
    print(f"(summary.md, summary.csv and plots written into {sweep_dir})")

if __name__ == "__main__":
    main()

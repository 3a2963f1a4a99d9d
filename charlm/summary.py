"""The summary of a sweep folder: its configurations (jobs that differ only in their seed) with
the mean and spread of their scores, at equal characters and equal time, with their overfitting gap,
parameters, FLOPs and throughput; its jobs; their learning curves (summary.md, summary.csv,
configurations.csv, curves.csv, three plots).

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
import statistics
from pathlib import Path

import torch
from omegaconf import OmegaConf

from charlm.cells import CELLS
from charlm.errors import UserError, exit_on_user_error
from charlm.loggers import METRICS_FILE, read_metrics
from charlm.model import matmul_flops_per_char
from charlm.orders import ORDERS

UNDERTRAINED_STEPS = 100  # fewer optimizer steps than this: the run measured its start, not the model
UNIFORM_SHARE = 0.95  # best val bpc above this share of log2(vocabulary): it never left the uniform guess
ERROR_FILE = "error.txt"  # a failed job's one-line error, written by charlm.sweep.SweepCallback
CONFIG_KEYS = ("model.cell", "model.layers", "model.hidden_size", "model.dropout", "optimizer.lr", "seed")
SEED_KEYS = ("seed", "data.seed")  # what differs between the repeats of one configuration
METRICS = {
    "parameters": "parameters",
    "best_val_bpc": "best/val_bpc",
    "test_bpc": "test/bpc",
    "chars_per_sec": "chars_per_sec",
    "fit_seconds": "fit_seconds",
    "steps": "steps",
}
CURVE_TAGS = ("val/bpc", "train_eval/bpc")  # train_eval: training text scored as val is (TrainSampleScore)
CSV_COLUMNS = [
    "run",
    "configuration",
    *(key.split(".")[-1] for key in CONFIG_KEYS),
    *METRICS,
    "best_epoch",
    "best_step",
    "flops_per_char",
    "chars_per_step",
    "characters",
    "final_val_bpc",
    "final_train_eval_bpc",
    "gap",
    "status",
    "undertrained",
    "error",
]
CONFIG_COLUMNS = [
    "configuration",
    "n",
    "runs",
    "parameters",
    "flops_per_char",
    "best_val_bpc_mean",
    "best_val_bpc_std",
    "test_bpc_mean",
    "test_bpc_std",
    "delta_vs_best",
    "within_spread",
    "val_bpc_at_equal_chars",
    "equal_chars",
    "val_bpc_at_equal_seconds",
    "equal_seconds",
    "final_train_eval_bpc",
    "gap",
    "chars_per_sec",
    "fit_seconds",
]
CURVE_COLUMNS = ["configuration", "run", "seed", "step", "characters", "seconds", "val_bpc", "train_eval_bpc"]
# Markdown, one row per job: (column, header, format)
TABLE = [
    ("run", "job", "{}"),
    ("parameters", "parameters", "{:,}"),
    ("best_val_bpc", "best val/bpc", "{:.4f}"),
    ("test_bpc", "test/bpc", "{:.4f}"),
    ("gap", "gap (val − train)", "{:+.4f}"),
    ("best_epoch", "epoch of best val", "{}"),
    ("chars_per_sec", "characters/s", "{:,.0f}"),
    ("steps", "steps", "{:,}"),
    ("fit_seconds", "wall time (s)", "{:,.1f}"),
    ("status", "status", "{}"),
]
PLOTS = ("best_val_bpc.png", "learning_curves.png", "overfitting.png")
SHORT_NAMES = {
    "model.dropout": "d",
    "optimizer.lr": "lr",
    "model.embedding_dim": "emb",
    "data.batch_size": "batch",
    "data.nchars": "nchars",
}  # in legend labels


def undertrained(steps: int | None, best_val_bpc: float | None, vocab_size: int | None) -> str:
    """Why a finished run says little about its model ("" when it does): it trained fewer than
    ``UNDERTRAINED_STEPS`` steps, or its best val bpc never left the uniform guess over its
    vocabulary (log2 of its size). Such a run is flagged, and never crowned best in a sweep."""
    if steps is not None and steps < UNDERTRAINED_STEPS:
        return f"undertrained: {steps} step{'' if steps == 1 else 's'} (< {UNDERTRAINED_STEPS})"
    if best_val_bpc is not None and vocab_size and best_val_bpc > UNIFORM_SHARE * math.log2(vocab_size):
        return f"undertrained: val {best_val_bpc:.2f} bpc, the uniform guess is {math.log2(vocab_size):.2f}"
    return ""


def find_runs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep: those with the job's config.yaml or a failed job's error.txt."""
    found = {path.parent for name in ("config.yaml", ERROR_FILE) for path in sweep_dir.rglob(name)}
    return sorted(run for run in found if ".hydra" not in run.relative_to(sweep_dir).parts)


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: json.dumps(value) if isinstance(value, list) else value}


def chars_per_step(cfg) -> int | None:
    """Training characters per optimizer step: ``data.batch_size × data.nchars`` on every device
    (``trainer.devices × trainer.num_nodes``; a ``devices`` that is not a number counts as 1). None
    for an order whose batches differ in size (``Order.equal_batches``, e.g. ``data.order=articles``):
    such a run has no curve against characters."""
    batch, nchars = OmegaConf.select(cfg, "data.batch_size"), OmegaConf.select(cfg, "data.nchars")
    order = ORDERS.get(OmegaConf.select(cfg, "data.order", default="windows"))
    if order is None or not order.equal_batches or not isinstance(batch, int) or not isinstance(nchars, int):
        return None
    world = 1
    for key in ("trainer.devices", "trainer.num_nodes"):
        value = OmegaConf.select(cfg, key)
        world *= value if isinstance(value, int) and value > 0 else 1
    return batch * nchars * world


def read_run(run: Path, sweep_dir: Path) -> dict:
    """One row of the table: the job's config, final metrics, epoch and step of its best
    checkpoint, status (``ok``, ``failed`` or ``incomplete``: killed, interrupted or running),
    its learning curves (``curves``) and what they end at (val/bpc, the training sample's bpc,
    their gap), its matmul FLOPs per character, and the settings that make its configuration."""
    cfg = OmegaConf.load(run / "config.yaml") if (run / "config.yaml").exists() else OmegaConf.create()
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    error = (run / ERROR_FILE).read_text().strip() if (run / ERROR_FILE).exists() else ""
    row = {"run": run.relative_to(sweep_dir).as_posix()}
    row.update({key.split(".")[-1]: OmegaConf.select(cfg, key) for key in CONFIG_KEYS})
    row.update({column: metrics.get(key) for column, key in METRICS.items()})
    if row["chars_per_sec"] is None:  # runs of charlm before the run's mean was kept: the last logged figure
        row["chars_per_sec"] = metrics.get("train/chars_per_sec")
    best = run / "checkpoints" / "best.ckpt"
    vocab_size = metrics.get("vocab_size")  # so a job copied without its checkpoints keeps its FLOPs
    if best.exists():
        checkpoint = torch.load(best, map_location="cpu", weights_only=True)
        row.update(best_epoch=checkpoint["epoch"], best_step=checkpoint["global_step"])
        vocab_size = vocab_size or len(checkpoint["hyper_parameters"]["vocab"])  # runs of an older charlm
    if vocab_size and "model" in cfg:
        row["flops_per_char"] = matmul_flops_per_char(**OmegaConf.to_container(cfg.model), vocab_size=vocab_size)
    row["status"] = "ok" if metrics else "failed" if error else "incomplete"
    row["undertrained"] = undertrained(row["steps"], row["best_val_bpc"], vocab_size) if metrics else ""
    row["error"] = "" if metrics else error
    # The configuration: every setting but the seeds and the paths into this job's own folder, where
    # it is now or where it ran (Hydra's record: a job folder copied or moved into another sweep
    # folder keeps the old paths, which would otherwise make each job a configuration of its own).
    hydra_cfg = OmegaConf.load(run / ".hydra" / "hydra.yaml") if (run / ".hydra" / "hydra.yaml").exists() else None
    ran_in = OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir") if hydra_cfg is not None else None
    own = ["/" + row["run"], *([str(ran_in)] if ran_in else [])]
    row["settings"] = {
        k: v
        for k, v in _flat(OmegaConf.to_container(cfg)).items()
        if k not in SEED_KEYS and not (isinstance(v, str) and any(p in v for p in own))
    } or {"run": row["run"]}
    # The experiment preset the job composed (experiment=lesson), from Hydra's record of the run
    experiment = OmegaConf.select(hydra_cfg, "hydra.runtime.choices.experiment") if hydra_cfg is not None else None
    if experiment and experiment != "null" and "run" not in row["settings"]:
        row["settings"]["experiment"] = experiment
    row["chars_per_step"] = chars_per_step(cfg)
    row["curves"] = curves(run, row["chars_per_step"])
    val, train = (row["curves"][tag] for tag in CURVE_TAGS)
    row["characters"] = val["characters"][-1] if val["step"] else None
    row["final_val_bpc"] = val["value"][-1] if val["step"] else None
    row["final_train_eval_bpc"] = train["value"][-1] if train["step"] else None
    row["gap"] = None if row["final_train_eval_bpc"] is None else row["final_val_bpc"] - row["final_train_eval_bpc"]
    return row


def curves(run: Path, chars_per_step: int | None) -> dict[str, dict[str, list]]:
    """``val/bpc`` and ``train_eval/bpc`` of a run, each as lists ``step``, ``characters``,
    ``seconds`` and ``value``, from its metrics.csv (``charlm.loggers.MetricsFile``, written whatever
    the run's loggers), or from the TensorBoard event files of a run of a charlm before it.

    ``characters``: training characters up to that step (``step × chars_per_step``; None each
    without ``chars_per_step``).
    ``seconds``: wall-clock seconds since the fit started, validation included, since that is what
    the run spent and what ``trainer.max_time`` counts; a resumed run's continue from where the
    checkpoint it resumed was saved (the pause left out)."""
    path = run / METRICS_FILE
    found = read_metrics(path, CURVE_TAGS) if path.exists() else event_points(run)
    result = {}
    for tag, by_step in found.items():
        steps = sorted(by_step)
        result[tag] = {
            "step": steps,
            "characters": [step * chars_per_step if chars_per_step else None for step in steps],
            "seconds": [by_step[step][0] for step in steps],
            "value": [by_step[step][1] for step in steps],
        }
    return result


def event_points(run: Path) -> dict[str, dict[int, tuple[float, float]]]:
    """``CURVE_TAGS``' points (tag -> step -> (seconds, value)) in the TensorBoard event files of a
    run without metrics.csv. Seconds count from its event file's first event; a resumed run's later
    event files continue from where the earlier ones ended (the pause between them left out), and
    their points replace the earlier ones from the step they restart at."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # it logs every event file it opens
    segments = []
    for path in run.glob("events.out.tfevents.*"):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0}).Reload()
        points = {tag: events.Scalars(tag) for tag in CURVE_TAGS if tag in events.Tags()["scalars"]}
        if points.get("val/bpc"):
            segments.append((events.FirstEventTimestamp(), points))
    found: dict[str, dict[int, tuple[float, float]]] = {tag: {} for tag in CURVE_TAGS}  # step -> (seconds, value)
    offset = 0.0
    for start, points in sorted(segments, key=lambda segment: segment[0]):
        restart = min(p.step for p in points["val/bpc"])
        for tag, by_step in found.items():
            found[tag] = {step: point for step, point in by_step.items() if step < restart}
        for tag, scalars in points.items():
            found[tag].update({p.step: (offset + p.wall_time - start, p.value) for p in scalars})
        offset += max(p.wall_time for scalars in points.values() for p in scalars) - start
    return found


def interpolate(xs: list[float], ys: list[float], x: float) -> float | None:
    """``ys`` at ``x`` along the straight lines between the points; None outside them."""
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1] if xs and math.isclose(x, xs[-1]) else None


def drawn_on(curve: dict, x: str) -> bool:
    """Whether ``curve`` has points along ``x`` (``characters`` or ``seconds``): a run in
    ``data.order=articles`` has none along characters (``chars_per_step``)."""
    return bool(curve["step"]) and curve[x][-1] is not None


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _std(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) >= 2 else None


def label(settings: dict, differing: list[str]) -> str:
    """A configuration's legend label: ``lstm 2×256``, then the other settings that differ
    between the sweep's configurations, e.g. ``gru 1×128 d=0.2 lr=0.003``."""
    if "run" in settings:  # a job that never wrote its config
        return settings["run"]
    parts = [f"{settings.get('model.cell')} {settings.get('model.layers')}×{settings.get('model.hidden_size')}"]
    if settings.get("experiment"):  # a preset's configuration: its name says what it changes
        return f"{settings['experiment']} ({parts[0]})"
    for key in differing:
        if key not in ("model.cell", "model.layers", "model.hidden_size"):
            value = settings.get(key)
            parts.append(
                f"{SHORT_NAMES.get(key, key.split('.')[-1])}={value:.3g}"
                if isinstance(value, float)
                else f"{SHORT_NAMES.get(key, key.split('.')[-1])}={value}"
            )
    return " ".join(parts)


def group(rows: list[dict]) -> list[dict]:
    """The sweep's configurations: jobs with the same settings but their seeds, each with the mean
    and standard deviation (over its finished jobs, n of them) of best val/bpc and test/bpc, its
    difference to the best configuration and whether that is within the seeds' spread, val/bpc at
    the characters and at the seconds every run reached, the final gap between val/bpc and the
    training sample's bpc, parameters, FLOPs per character and throughput. Sorted best first.

    Within the spread: ``|Δ mean| <= sqrt(std_a² + std_best²)``, the two configurations' seed
    standard deviations combined; it needs n >= 2 on both sides (else the column says ``n=1``)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(json.dumps(row["settings"], sort_keys=True, default=str), []).append(row)
    # the settings that tell configurations apart, among those of no experiment preset (a preset's
    # are named by the preset: experiment=lesson differs from the others in a dozen keys)
    settings = [runs[0]["settings"] for runs in groups.values() if "experiment" not in runs[0]["settings"]]
    keys = sorted({key for s in settings for key in s})
    differing = [key for key in keys if len({json.dumps(s.get(key), default=str) for s in settings}) > 1]
    differing.sort(key=lambda key: (key not in SHORT_NAMES, key))
    finished = [row for row in rows if row["best_val_bpc"] is not None and row["curves"]["val/bpc"]["step"]]
    equal_chars = min((row["characters"] for row in finished if row["characters"] is not None), default=None)
    equal_seconds = min((row["curves"]["val/bpc"]["seconds"][-1] for row in finished), default=None)
    configs = []
    for runs in groups.values():
        ok = [row for row in runs if row["best_val_bpc"] is not None]
        val_curves = [row["curves"]["val/bpc"] for row in ok]
        configs.append(
            {
                "configuration": label(runs[0]["settings"], differing),
                "n": len(ok),
                "runs": [r["run"] for r in runs],
                "cell": runs[0]["cell"],
                "layers": runs[0]["layers"],
                "hidden_size": runs[0]["hidden_size"],
                "parameters": runs[0]["parameters"],
                "flops_per_char": runs[0].get("flops_per_char"),
                "best_val_bpc_mean": _mean([r["best_val_bpc"] for r in ok]),
                "best_val_bpc_std": _std([r["best_val_bpc"] for r in ok]),
                "test_bpc_mean": _mean([r["test_bpc"] for r in ok]),
                "test_bpc_std": _std([r["test_bpc"] for r in ok]),
                "val_bpc_at_equal_chars": _mean(
                    [
                        interpolate(c["characters"], c["value"], equal_chars)
                        for c in val_curves
                        if drawn_on(c, "characters")
                    ]
                )
                if equal_chars
                else None,
                "equal_chars": equal_chars,
                "val_bpc_at_equal_seconds": _mean(
                    [interpolate(c["seconds"], c["value"], equal_seconds) for c in val_curves]
                )
                if equal_seconds
                else None,
                "equal_seconds": equal_seconds,
                "final_train_eval_bpc": _mean([r["final_train_eval_bpc"] for r in ok]),
                "gap": _mean([r["gap"] for r in ok]),
                "chars_per_sec": _mean([r["chars_per_sec"] for r in ok]),
                "fit_seconds": _mean([r["fit_seconds"] for r in ok]),
                "undertrained": next((r.get("undertrained") for r in ok if r.get("undertrained")), ""),
                "members": runs,
            }
        )
    # A configuration with an undertrained seed is sorted after the others and not ranked against them;
    # where all are undertrained, they are compared with the first, which is not called the best.
    configs.sort(
        key=lambda c: (
            c["best_val_bpc_mean"] is None,
            bool(c["undertrained"]),
            c["best_val_bpc_mean"] or 0.0,
            c["configuration"],
        )
    )
    best = configs[0] if configs and configs[0]["n"] else None
    for config in configs:
        config["delta_vs_best"] = config["within_spread"] = None
        if (
            best is not None
            and config["n"]
            and config is not best
            and (best["undertrained"] or not config["undertrained"])
        ):
            config["delta_vs_best"] = delta = config["best_val_bpc_mean"] - best["best_val_bpc_mean"]
            if config["best_val_bpc_std"] is not None and best["best_val_bpc_std"] is not None:
                config["within_spread"] = abs(delta) <= math.hypot(config["best_val_bpc_std"], best["best_val_bpc_std"])
    return configs


def line_style(cell) -> str | tuple:
    """The cell's line style (``charlm.cells``: configurations stay apart beyond 10 colours)."""
    kind = CELLS.get(str(cell))
    return kind.line_style if kind else (0, (1, 3))


def styles(configs: list[dict]) -> list[tuple]:
    """One (colour, line style) per configuration, in order: tab10's colours up to 10
    configurations, tab20's up to 20, else evenly spaced along viridis; the line style by cell."""
    from matplotlib import colormaps

    n = len(configs)
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"]
    colours = [cmap(i) for i in range(n)] if n <= 20 else [cmap(i / max(n - 1, 1)) for i in range(n)]
    return [(colour, line_style(config["cell"])) for colour, config in zip(colours, configs)]


def _mean_curve(curves: list[dict], x: str) -> tuple[list[float], list[float]]:
    """The seeds' mean curve: x and value averaged point by point (runs of one configuration
    validate at the same steps; time budgets may give some fewer points: the common ones)."""
    n = min(len(c["step"]) for c in curves)
    return (
        [statistics.fmean(c[x][i] for c in curves) for i in range(n)],
        [statistics.fmean(c["value"][i] for c in curves) for i in range(n)],
    )


def plot(configs: list[dict], sweep_dir: Path) -> dict | None:
    """Draw into ``sweep_dir`` and return (name -> matplotlib Figure), or None without matplotlib:

    - best_val_bpc.png: mean best val/bpc against hidden size (bars: the seeds' standard deviation),
      one line per configuration without its size;
    - learning_curves.png: val/bpc against training characters and against wall-clock seconds, one
      colour per configuration, its seeds as thin lines and their mean as the labelled thick line;
    - overfitting.png: val/bpc (solid) and the training sample's bpc (dashed) against characters,
      the mean of each configuration's seeds."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError:
        return None
    style = styles(configs)
    figures = {}
    lines: dict[str, dict] = {}  # configuration without its size -> hidden size -> (mean, std)
    for config in configs:
        if config["n"]:
            layers = config["layers"]
            name = config["configuration"].replace(
                f"{layers}×{config['hidden_size']}", f"{layers} layer{'' if layers == 1 else 's'}", 1
            )
            lines.setdefault(name, {})[config["hidden_size"]] = (
                config["best_val_bpc_mean"],
                config["best_val_bpc_std"] or 0.0,
            )
    fig = figures[PLOTS[0]] = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, points in lines.items():
        sizes = sorted(size for size in points if isinstance(size, int))
        ax.errorbar(
            sizes, [points[s][0] for s in sizes], yerr=[points[s][1] for s in sizes], marker="o", capsize=3, label=name
        )
    sizes = sorted({size for points in lines.values() for size in points if isinstance(size, int)})
    if sizes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.legend(fontsize="small")
    ax.set(
        xlabel="hidden size",
        ylabel="best val/bpc (mean ± std over seeds)",
        title=f"{sweep_dir.name}: best validation bits per character",
    )
    ax.grid(alpha=0.3)

    fig = figures[PLOTS[1]] = Figure(figsize=(13, 5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, x, xlabel in zip(axes, ("characters", "seconds"), ("training characters", "wall-clock seconds of the fit")):
        for config, (colour, linestyle) in zip(configs, style):
            runs = [r["curves"]["val/bpc"] for r in config["members"] if drawn_on(r["curves"]["val/bpc"], x)]
            if not runs:
                continue
            for run in runs if len(runs) > 1 else []:
                ax.plot(run[x], run["value"], color=colour, linestyle=linestyle, linewidth=0.7, alpha=0.45)
            xs, ys = _mean_curve(runs, x)
            ax.plot(xs, ys, color=colour, linestyle=linestyle, linewidth=2, marker=".", label=config["configuration"])
        ax.set(xlabel=xlabel, ylabel="val/bpc")
        ax.grid(alpha=0.3)
    axes[0].set_title("against what was trained on")
    axes[1].set_title("against the time spent (validation included)")
    if axes[1].lines:
        fig.legend(*axes[1].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    fig.suptitle(f"{sweep_dir.name}: learning curves (thin: single seeds, thick: their mean)")

    fig = figures[PLOTS[2]] = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    for config, (colour, _) in zip(configs, style):
        for tag, linestyle in zip(CURVE_TAGS, ("-", "--")):
            runs = [r["curves"][tag] for r in config["members"] if drawn_on(r["curves"][tag], "characters")]
            if runs:
                xs, ys = _mean_curve(runs, "characters")
                ax.plot(
                    xs,
                    ys,
                    color=colour,
                    linestyle=linestyle,
                    marker=".",
                    label=config["configuration"] if tag == "val/bpc" else None,
                )
    if ax.lines:  # the two line styles explained first, then one entry per configuration (its colour)
        from matplotlib.lines import Line2D

        handles, labels = ax.get_legend_handles_labels()
        keys = [Line2D([], [], color="grey", linestyle="-"), Line2D([], [], color="grey", linestyle="--")]
        fig.legend(
            [*keys, *handles],
            ["val/bpc", "training sample,\nscored as val", *labels],
            loc="outside right upper",
            fontsize="small",
        )
    ax.set(xlabel="training characters", ylabel="bits per character")
    fig.suptitle(f"{sweep_dir.name}: overfitting, val against a training sample")
    ax.grid(alpha=0.3)
    for name, fig in figures.items():
        fig.savefig(sweep_dir / name, dpi=120)
    return figures


def _cell(row: dict, column: str, fmt: str) -> str:
    value = row.get(column)
    if column == "status" and (row["error"] or row["undertrained"]):
        value = f"{value}: {row['error'] or row['undertrained']}"
    return "" if value is None else fmt.format(value).replace("|", "\\|")


def resume_command(sweep_dir: Path) -> tuple[str, str] | None:
    """The folder the sweep ran in, and its command with ``resume=true``, which runs again only
    the jobs that did not finish."""
    multirun = sweep_dir / "multirun.yaml"
    if not multirun.exists():
        return None
    hydra = OmegaConf.load(multirun).hydra
    given = OmegaConf.to_container(hydra.overrides, resolve=False)  # as typed, ${hydra:...} included
    overrides = [
        o
        for o in [*given["hydra"], *given["task"]]
        if not o.startswith(
            ("hydra.sweep.dir=", "hydra.mode=", "resume=", "hydra.job.config.override_dirname.exclude_keys=")
        )
    ]  # SweptKeys adds it again
    return hydra.runtime.cwd, " ".join(
        [
            "python train.py -m",
            shlex.quote(f"hydra.sweep.dir={sweep_dir.resolve()}"),
            *map(shlex.quote, overrides),
            "resume=true",
        ]
    )


def _pm(mean: float | None, std: float | None) -> str:
    return "" if mean is None else f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")


def _config_cells(config: dict) -> list[str]:
    """One Markdown row of the configurations table (``CONFIG_TABLE``)."""

    def fmt(value, spec):
        return "" if value is None else spec.format(value)

    first = config["n"] and config is config.get("_best")
    if first and config["undertrained"]:
        versus = "first, not best (all undertrained)"
    elif config["undertrained"] and not config["_best"]["undertrained"]:
        versus = f"not ranked ({config['undertrained']})"
    elif config["delta_vs_best"] is None:
        versus = "best" if first else ""
    else:
        versus = (
            f"{config['delta_vs_best']:+.4f}"
            + {True: " (within seed spread)", False: "", None: " (n=1: no spread)"}[config["within_spread"]]
        )
    return [
        config["configuration"],
        str(config["n"]),
        fmt(config["parameters"], "{:,}"),
        fmt(config["flops_per_char"], "{:,}"),
        _pm(config["best_val_bpc_mean"], config["best_val_bpc_std"]),
        _pm(config["test_bpc_mean"], config["test_bpc_std"]),
        versus,
        fmt(config["val_bpc_at_equal_chars"], "{:.4f}"),
        fmt(config["val_bpc_at_equal_seconds"], "{:.4f}"),
        fmt(config["final_train_eval_bpc"], "{:.4f}"),
        fmt(config["gap"], "{:+.4f}"),
        fmt(config["chars_per_sec"], "{:,.0f}"),
        fmt(config["fit_seconds"], "{:,.1f}"),
    ]


def collect(sweep_dir: Path) -> tuple[list[dict], list[dict]]:
    """The sweep's jobs (``read_run``, best val/bpc first) and configurations (``group``)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a folder; pass a sweep folder, e.g. outputs/sweeps/<sweep>")
    runs = find_runs(sweep_dir)
    if not runs:
        raise UserError(f"{sweep_dir} has no jobs (no <job>/config.yaml or <job>/{ERROR_FILE}); pass a sweep folder")
    rows = sorted(
        (read_run(run, sweep_dir) for run in runs),
        key=lambda r: (r["best_val_bpc"] is None, r["best_val_bpc"] or 0.0, r["run"]),
    )
    configs = group(rows)
    for config in configs:
        config["_best"] = configs[0]
        for row in config["members"]:
            row["configuration"] = config["configuration"]
    return rows, configs


def write_csvs(rows: list[dict], configs: list[dict], sweep_dir: Path) -> None:
    """summary.csv (one row per job), configurations.csv (one per configuration) and curves.csv
    (every point of every job's curves: step, characters, seconds, val/bpc, training sample bpc)."""
    for name, columns, records in (("summary.csv", CSV_COLUMNS, rows), ("configurations.csv", CONFIG_COLUMNS, configs)):
        with open(sweep_dir / name, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(
                {**record, "runs": " ".join(record["runs"])} if "runs" in record else record for record in records
            )
    with open(sweep_dir / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CURVE_COLUMNS)
        for row in rows:
            val, train = (row["curves"][tag] for tag in CURVE_TAGS)
            train_at = dict(zip(train["step"], train["value"]))
            for step, characters, seconds, value in zip(val["step"], val["characters"], val["seconds"], val["value"]):
                writer.writerow(
                    [
                        row["configuration"],
                        row["run"],
                        row["seed"],
                        step,
                        characters,
                        seconds,
                        value,
                        train_at.get(step, ""),
                    ]
                )


def summarize(sweep_dir: Path) -> str:
    """Write summary.md, the CSV files (``write_csvs``) and the plots into ``sweep_dir``; return the Markdown."""
    sweep_dir = Path(sweep_dir)
    rows, configs = collect(sweep_dir)
    write_csvs(rows, configs, sweep_dir)
    equal_chars, equal_seconds = configs[0]["equal_chars"], configs[0]["equal_seconds"]
    headers = [
        "configuration",
        "n",
        "parameters",
        "matmul FLOPs/char",
        "best val/bpc",
        "test/bpc",
        "vs best",
        f"val/bpc at {equal_chars or 0:,} chars",
        f"val/bpc at {equal_seconds or 0:,.0f} s",
        "train sample bpc",
        "gap (val − train)",
        "characters/s",
        "wall time (s)",
    ]
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"{sum(r['status'] == 'ok' for r in rows)} of {len(rows)} jobs finished, in {len(configs)} "
        "configurations (jobs that differ only in their seed); sorted by best val/bpc (validation bits per "
        "character of the best checkpoint, which test/bpc evaluates): mean ± standard deviation over the "
        "n finished seeds.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    flagged = [row["run"] for row in rows if row["undertrained"]]
    if flagged:
        lines[-2:-2] = [
            f"**{len(flagged)} of the finished jobs are undertrained** (fewer than {UNDERTRAINED_STEPS} "
            "steps, or a best val/bpc that never left the uniform guess over the vocabulary): "
            f"{', '.join(flagged)}. "
            + (
                "No configuration is the best: the table compares how they started; give them a larger budget."
                if configs[0]["undertrained"]
                else "Their configurations are not ranked; give them a larger budget."
            ),
            "",
        ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in _config_cells(c)) + " |" for c in configs]
    lines += [
        "",
        "vs best: the difference of mean best val/bpc to the best configuration; *within seed spread* when "
        "it is no larger than the two configurations' seed standard deviations combined "
        "(sqrt(std² + std_best²)), i.e. the seeds do not tell them apart. Equal budgets: val/bpc of each "
        "configuration (mean over seeds, read off its curve) at the training characters and at the "
        "wall-clock seconds of the fit (validation included) that every job reached. Train sample bpc: a "
        "sample of the training text scored exactly as val is, at the last validation; gap = val/bpc − that "
        "(grows when a model overfits). matmul FLOPs/char: forward, per character (training ≈ 3×).",
        "",
        "## Jobs",
        "",
        "| " + " | ".join(header for _, header, _ in TABLE) + " |",
        "|" + "---|" * len(TABLE),
    ]
    lines += ["| " + " | ".join(_cell(row, column, fmt) for column, _, fmt in TABLE) + " |" for row in rows]
    lines.append("")
    if plot(configs, sweep_dir) is not None:
        lines += [f"![{name}]({name})" for name in PLOTS]
    else:
        lines.append("plots skipped: matplotlib is not installed (pip install 'charlm[plots]')")
    unfinished = [row for row in rows if row["status"] != "ok"]
    resume = resume_command(sweep_dir)
    if unfinished and resume:
        lines += [
            "",
            f"Jobs that did not finish: {len(unfinished)}. To run them again into this folder, with any job "
            f"the sweep never reached, from {resume[0]}:",
            "",
            f"    {resume[1]}",
        ]
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
    print(f"(summary.md, summary.csv, configurations.csv, curves.csv and plots written into {sweep_dir})")


if __name__ == "__main__":
    main()

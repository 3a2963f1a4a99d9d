"""Building and running one training job from a composed Hydra config (used by train.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shlex
import signal
import time
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from charlm.callbacks import CharThroughput, GracefulStop
from charlm.compat import HYDRA_BASIC_LAUNCHER, relaunches_script, saves_on_train_epoch_end, spawns_ranks
from charlm.config import check_resume_settings, quiet_known_noise
from charlm.data import CharDataModule
from charlm.errors import UserError, exit_on_user_error
from charlm.loggers import (
    METRICS_FILE,
    MetricsFile,
    allow_mlflow_file_store,
    check_loggers,
    check_no_clash,
    write_hparams,
    write_text,
)
from charlm.model import check_model_args
from charlm.module import CharLM, DiskFull, check_checkpoint_fits, read_checkpoint
from charlm.precision import check_model_memory, choose_precision
from charlm.progress import BudgetTimer, BudgetValidation, budget_timer, timer_duration
from charlm.sampling import check_seed
from charlm.summary import undertrained

log = logging.getLogger("charlm")

# TensorBoard's HPARAMS tab: these config entries (groups flattened to group.key) and the parameter count,
# against the last value of each scalar (val/bpc, test/bpc, train/chars_per_sec, ...)
HPARAMS = (
    "model",
    "optimizer",
    "data.corpus",
    "data.order",
    "data.nchars",
    "data.stride",
    "data.batch_size",
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.max_time",
    "seed",
)


# ... and the final numbers shown beside them there (the test's only there: they are single points)
RESULTS = (
    "best/val_bpc",
    "test/bpc",
    "test/loss",
    "test/ppl",
    "test/topic_acc",
    "steps",
    "chars_per_sec",
    "fit_seconds",
)


def build(cfg: DictConfig) -> tuple[CharDataModule, CharLM, L.Trainer]:
    """The data module (set up, so its vocabulary is known), the model and the trainer of ``cfg``.

    The loggers' packages, model and optimizer settings are checked first, so a mistake there costs no
    data preparation."""
    check_loggers(cfg.get("logger"))
    model_args = OmegaConf.to_container(cfg.model, resolve=True)
    check_model_args(**model_args)
    check_model_memory(model_args, cfg.trainer.accelerator, cfg.trainer.precision, cfg.optimizer)
    lr = cfg.optimizer.get("lr", 1)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        raise UserError(f"optimizer.lr={lr!r} must be a number > 0")
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    for name, callback in zip(cfg.callbacks, callbacks):
        check_checkpoint_callback(name, callback)
    if cfg.trainer.get("val_check_interval") is not None or cfg.trainer.get("check_val_every_n_epoch") is not None:
        callbacks = [c for c in callbacks if not isinstance(c, BudgetValidation)]  # the user's schedule wins
    allow_mlflow_file_store(cfg.get("logger"))
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    # whatever the loggers chosen, the run's scalars in its own file: the sweep summary reads them there
    metrics_file = MetricsFile(Path(HydraConfig.get().runtime.output_dir) / METRICS_FILE)
    check_no_clash(loggers, metrics_file.path)
    loggers.append(metrics_file)  # last: Lightning takes trainer.log_dir from the first logger
    callbacks.append(metrics_file)  # its clock and its length at each checkpoint
    precision = choose_precision(cfg.trainer.precision, cfg.trainer.accelerator, model_args)  # tried on the device
    trainer = instantiate_trainer(cfg.trainer, precision=precision, callbacks=callbacks, logger=loggers)
    check_budget(cfg.trainer, trainer)
    check_launch_mode(trainer, multirun=HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN)
    datamodule = instantiate(cfg.data)
    if model_args.get("topics"):
        datamodule.check_order_has_topics()  # before the data is prepared
    datamodule.setup("fit")  # the vocabulary sizes the model
    topics = topic_args(model_args, datamodule)
    model = CharLM(
        vocab=datamodule.vocab.chars,
        model=model_args,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        **({"topics": topics, "topic_counts": datamodule.meta.get("topic_counts")} if topics else {}),
    )
    quiet_known_noise()  # also for jobs built in-process (tests, benchmarks)
    return datamodule, model, trainer


TOPIC_KEYS = ("topics", "topic_dim", "topic_dropout", "topic_mode")


def topic_args(model_args: dict, datamodule: CharDataModule) -> list[str] | None:
    """``model.topics=true``: the number of the data's topics in ``model_args`` (in place), and the
    data module's batches made (x, y, topic); the topics' names. Unconditioned: the topic
    settings are left out of ``model_args``, so its checkpoints are those of a charlm without topics."""
    if not model_args.get("topics"):
        for key in TOPIC_KEYS:
            model_args.pop(key, None)
        return None
    names = datamodule.use_topics()
    model_args["topics"] = len(names)
    return names


def check_checkpoint_callback(name: str, callback) -> None:
    """A ``ModelCheckpoint`` must not save at the end of a training epoch (see
    conf/callbacks/default.yaml): after a stop in the middle of an epoch Lightning still ends
    that epoch, and a checkpoint written then would resume as if the epoch were done."""
    if isinstance(callback, ModelCheckpoint) and saves_on_train_epoch_end(callback) is not False:
        raise UserError(
            f"callbacks.{name}.save_on_train_epoch_end={str(saves_on_train_epoch_end(callback)).lower()} would write "
            "checkpoints that do not resume exactly after a stop in mid-epoch; set it to false "
            "(checkpoints are then written when validation ends)"
        )


# Trainer settings Lightning refuses when the Trainer is built: what a good value looks like.
TRAINER_VALUES = {
    "max_time": "must be a duration DD:HH:MM:SS, e.g. 00:00:30:00, or null for no limit",
    "max_epochs": "must be a whole number >= 1, or -1 for no limit",
    "max_steps": "must be a whole number >= 1, or -1 for no limit",
    "val_check_interval": "must be a fraction of an epoch in (0, 1], a whole number of training batches, or null "
    "(once per epoch)",
    "devices": "must be a whole number >= 1, a list of device ids, or auto",
    "num_nodes": "must be a whole number >= 1",
    "accelerator": "is not usable here ({lightning}); use auto (a GPU when there is one) or cpu",
    "strategy": "must be auto, ddp, ddp_spawn or another Lightning strategy name",
    "gradient_clip_val": "must be a number >= 0, or null",
}
# How Lightning's messages name a setting other than by its key
TRAINER_KEY_HINTS = {
    "Timer(duration": "max_time",
    "total_seconds": "max_time",
    "gpu backend": "accelerator",
    "accelerator": "accelerator",
    "CUDA": "accelerator",
}


def instantiate_trainer(trainer_cfg: DictConfig, **kwargs) -> L.Trainer:
    """The Trainer of ``trainer_cfg``; a setting Lightning refuses gets one line naming it
    (``trainer.max_time=banana``, ``trainer.accelerator=gpu`` without a GPU, ...) instead of
    Hydra's "Error executing job" and Lightning's exception."""
    max_time = trainer_cfg.get("max_time")
    if max_time is not None:  # charlm's Timer in place of the one Lightning would add (BudgetTimer says why)
        try:
            timer = BudgetTimer(duration=max_time)
        except (MisconfigurationException, ValueError, TypeError, AttributeError):
            raise UserError(f"trainer.max_time={max_time!r} {TRAINER_VALUES['max_time']}") from None
        kwargs = {**kwargs, "max_time": None, "callbacks": [*kwargs.get("callbacks", []), timer]}
    try:
        return instantiate(trainer_cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if (
            cause is None
            or isinstance(cause, UserError)
            or not isinstance(cause, (MisconfigurationException, ValueError, TypeError, AttributeError, RuntimeError))
        ):
            raise
        message = " ".join(str(cause).split())
        key = next((k for k in trainer_cfg if f"`{k}`" in message or f"{k}=" in message), None) or next(
            (k for k in trainer_cfg if re.search(rf"\b{k}\b", message)), None
        )
        key = key or next((k for hint, k in TRAINER_KEY_HINTS.items() if hint in message), None)
        if key is None:
            raise UserError(f"a trainer setting is not valid: {message[:300]}; check the trainer.* overrides") from None
        value = OmegaConf.to_container(trainer_cfg, resolve=True)[key]
        fix = TRAINER_VALUES.get(key, "is not valid ({lightning})").format(lightning=message[:200].rstrip("."))
        raise UserError(f"trainer.{key}={value!r} {fix}") from None


def check_budget(trainer_cfg: DictConfig, trainer: L.Trainer) -> None:
    """Refuse a budget of zero (``trainer.max_time=00:00:00:00``, ``max_steps=0``, ``max_epochs=0``):
    nothing would be trained or saved, yet the run would end as "finished" with a test of the
    untrained model and a sample command for a checkpoint that does not exist."""
    timer = budget_timer(trainer)
    seconds = timer_duration(timer) if timer is not None else None
    zero = {
        "max_time": seconds is not None and seconds <= 0,
        "max_steps": trainer.max_steps == 0,
        "max_epochs": trainer.max_epochs == 0,
    }
    key = next((key for key, empty in zero.items() if empty), None)
    if key is None:
        return
    fix = (
        "a duration > 0, e.g. 00:00:30:00, or null for no limit"
        if key == "max_time"
        else f"a number of {key.removeprefix('max_')} >= 1, or -1 for no limit"
    )
    value = OmegaConf.to_container(trainer_cfg, resolve=True)[key]
    raise UserError(f"trainer.{key}={value!r} is a budget of zero: nothing would be trained; give {fix}")


def check_launch_mode(trainer: L.Trainer, multirun: bool) -> None:
    """Refuse a Hydra multirun whose DDP strategy would start the other ranks by re-running the
    command line: each child would run the whole sweep again. Processes started by SLURM,
    torchrun or ``ddp_spawn`` are fine, as is a single run with ``ddp``."""
    if multirun and relaunches_script(trainer):
        raise UserError(
            f"{type(trainer.strategy).__name__} on {trainer.strategy.launcher.num_processes} devices would "
            "re-run the whole sweep in every rank under -m; use trainer.strategy=ddp_spawn for multirun "
            "sweeps, one run per command, or a SLURM launcher (hydra/launcher=slurm)"
        )


class MultirunLaunchCheck(Callback):
    """Hydra callback: ``check_launch_mode`` on the trainer settings of a multirun, before any
    folder is created or job started (each job checks its own settings again)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # Only Hydra's basic launcher runs the jobs in this process; cluster launchers (SLURM)
        # start every rank themselves, on other machines than this one.
        if config.hydra.launcher._target_ == HYDRA_BASIC_LAUNCHER:
            with exit_on_user_error():
                check_multirun_launch_mode(config.trainer)


def check_multirun_launch_mode(trainer_cfg: DictConfig) -> None:
    """``check_launch_mode`` for the trainer settings of a whole multirun."""
    keys = ("accelerator", "strategy", "devices", "num_nodes")
    settings = {key: trainer_cfg[key] for key in keys if key in trainer_cfg}
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # this trainer is only looked at: no "GPU available" lines for it
    rank = rank_zero_only.rank  # a Trainer sets this process's rank from SLURM's or torchrun's variables
    try:
        trainer = instantiate(
            {"_target_": "lightning.pytorch.Trainer", **settings},
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
    except Exception:
        return  # settings Lightning rejects (e.g. more GPUs than here): each job reports them itself
    finally:
        lightning_log.setLevel(level)
        rank_zero_only.rank = rank  # the multirun process itself is no rank of these jobs
    check_launch_mode(trainer, multirun=True)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Fit, test the best checkpoint, and return the final metrics."""
    check_resume_settings(cfg, run_dir)  # before config.yaml is written anew
    if rank_zero_only.rank == 0:  # other DDP ranks run this too, in the same folder
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    check_seed(cfg.seed)  # before numpy's ValueError in seed_everything
    # one line for a missing, truncated, unsafe or foreign file, before any data is prepared
    checkpoint = read_checkpoint(cfg.ckpt_path, key="ckpt_path") if cfg.ckpt_path is not None else None
    L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    if checkpoint is not None:
        check_checkpoint_fits(checkpoint, cfg.ckpt_path, datamodule.vocab.chars, dict(model.hparams.model))
        if not Path(cfg.ckpt_path).resolve().is_relative_to(run_dir.resolve()):
            check_budget_left(checkpoint, cfg.ckpt_path, trainer, datamodule)
        seconds_before = float(checkpoint.get("fit_seconds", 0.0))  # the training time that led to it
        del checkpoint  # Lightning reads the file again in fit
    else:
        seconds_before = 0.0
    parameters = sum(p.numel() for p in model.parameters())
    log_start(cfg, run_dir, trainer, datamodule, parameters)

    graceful_stop = next((c for c in trainer.callbacks if isinstance(c, GracefulStop)), None)
    started = time.perf_counter()
    try:
        with graceful_stop.watch_spawned_ranks(trainer) if graceful_stop else contextlib.nullcontext():
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    except DiskFull as err:
        raise DiskFull(
            f"{err}: free space there, then continue from the last good one with python train.py ... resume={run_dir}"
        ) from None
    metrics = logged_metrics(trainer, model)
    metrics.update(
        parameters=parameters,
        fit_seconds=seconds_before + time.perf_counter() - started,
        vocab_size=len(datamodule.vocab),
        **fit_outcome(trainer),
    )
    throughput = next((c for c in trainer.callbacks if isinstance(c, CharThroughput)), None)
    if throughput is not None and throughput.mean(trainer) is not None:
        metrics["chars_per_sec"] = throughput.mean(trainer)
    stopped_by = graceful_stop.stopped_by(trainer) if graceful_stop else None
    if stopped_by is not None:
        log.warning(
            "stopped by %s at step %d; checkpoints saved. Continue with: python train.py ... resume=%s",
            signal.Signals(stopped_by).name,
            metrics["steps"],
            run_dir,
        )
        raise SystemExit(128 + stopped_by)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best and not Path(best).resolve().is_relative_to(run_dir.resolve()):
        best = ""  # restored from the checkpoint of another run (ckpt_path=): not this run's model
    if cfg.test and not trainer.interrupted:
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
        metrics.update(logged_metrics(trainer, model))
        log.info(
            "test (%s): loss %.4f nats/char, %.4f bpc, perplexity %.3f",
            best or "last weights",
            metrics["test/loss"],
            metrics["test/bpc"],
            metrics["test/ppl"],
        )
    if trainer.is_global_zero:
        log_hparams(trainer, cfg, metrics)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        log.info(
            "%s",
            end_summary(
                run_dir,
                metrics,
                best,
                cfg.callbacks.get("samples", {}).get("prompt"),
                tensorboard=any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers),
            ),
        )
    return metrics


def log_start(cfg: DictConfig, run_dir: Path, trainer: L.Trainer, datamodule: CharDataModule, parameters: int) -> None:
    """Two console lines that fit 80 columns (what trains on what, and where it goes); the full
    model, optimizer and data settings go to train.log only (config.yaml has every setting)."""
    device = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    devices = trainer.num_devices * trainer.num_nodes
    model = cfg.model
    log.info(
        "settings: model %s | optimizer %s | data %s",
        OmegaConf.to_container(model, resolve=True),
        OmegaConf.to_container(cfg.optimizer, resolve=True),
        OmegaConf.to_container(cfg.data, resolve=True),
        extra={"console": False},
    )
    characters = datamodule.meta.get("characters", {}).get("train")
    log.info(
        "%s %d×%d, %s parameters | %s training chars, vocabulary %d | %s%s %s",
        model.cell,
        model.layers,
        model.hidden_size,
        f"{parameters:,}",
        f"{characters / 1e6:.1f}M" if characters else "?",
        len(datamodule.vocab),
        f"{devices}×" if devices > 1 else "",
        device,
        trainer.precision,
    )
    try:
        shown = run_dir.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = run_dir
    log.info("run folder: %s", shown)


def logged_metrics(trainer: L.Trainer, model: CharLM) -> dict:
    """What the fit or test logged (as numbers, without the ``step`` that only sets TensorBoard's x
    axis), and the topic confusion matrices of a topic-conditioned model."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k not in ("step", GracefulStop.RESULT)}
    return {**metrics, **{f"{stage}/topic_confusion": m for stage, m in model.topic_confusion.items()}}


def end_summary(
    run_dir: Path, metrics: dict[str, float], best: str, prompt: str | None, tensorboard: bool = True
) -> str:
    """What a person needs when a run ends: where it is, how good it got, and the commands that
    sample from its best checkpoint and show its curves (quoted for a POSIX shell and for Hydra;
    TensorBoard's only when the run has a TensorBoard logger)."""
    scores = [
        f"best val bpc {metrics['best/val_bpc']:.4f}" if "best/val_bpc" in metrics else "no validation",
        *([f"test bpc {metrics['test/bpc']:.4f}"] if "test/bpc" in metrics else []),
    ]
    ckpt = best or str(run_dir / "checkpoints" / "last.ckpt")
    sample = ["python", "sample.py", override_arg("ckpt", ckpt)]
    if prompt is not None:
        sample.append(override_arg("prompt", prompt, quote=True))
    flag = undertrained(metrics.get("steps"), metrics.get("best/val_bpc"), metrics.get("vocab_size"))
    return "\n".join(
        [
            f"finished: {run_dir} | " + ", ".join(scores),
            *(
                [f"  warning:     {flag}; give it a larger budget (trainer.max_time, trainer.max_steps)"]
                if flag
                else []
            ),
            f"  sample:      {' '.join(sample)}",
            *([f"  tensorboard: tensorboard --logdir {shlex.quote(str(run_dir))}"] if tensorboard else []),
        ]
    )


def override_arg(key: str, value: str, quote: bool = False) -> str:
    """``key=value`` as one shell word that Hydra reads back as the string ``value``. The value is
    put in Hydra's double quotes (with ``\\``, ``"`` and ``${`` escaped) when ``quote`` is set or
    Hydra would read it otherwise (as a number, a list, a sweep, an interpolation, ...)."""

    def parsed(text: str):  # what the job would see: parsed by Hydra, then resolved by OmegaConf
        try:
            value = OverridesParser.create().parse_override(f"{key}={text}").value()
            return OmegaConf.to_container(OmegaConf.create({"v": value}), resolve=True)["v"]
        except Exception:
            return None

    if quote or parsed(value) != value:
        # Hydra's quoted strings: a backslash escapes only a quote, an interpolation or the
        # backslashes right before those; double the backslashes before a quote and at the end.
        escaped = re.sub(r'(\\*)(["]|\$\{|$)', lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), value)
        value = f'"{escaped}"'
    return shlex.quote(f"{key}={value}")


def check_budget_left(checkpoint: dict, path, trainer: L.Trainer, datamodule: CharDataModule) -> None:
    """``ckpt_path=`` in a new run continues that training state (weights, optimizer, step, position
    in the data) within this run's budget. One already at ``trainer.max_steps`` or
    ``trainer.max_epochs`` would train nothing, and the run would then test the other run's
    best checkpoint as if it were its own: refused in one line instead."""
    step = checkpoint.get("global_step", 0)
    if trainer.max_steps is not None and 0 <= trainer.max_steps <= step:
        raise UserError(
            f"ckpt_path={path} is at step {step}, already at trainer.max_steps={trainer.max_steps}: nothing "
            f"to train; raise trainer.max_steps (e.g. trainer.max_steps={2 * step}) to continue it"
        )
    position = checkpoint.get(type(datamodule).__qualname__, {}).get("position")
    per_epoch = datamodule._batches_per_epoch(trainer.world_size)
    if position is not None and trainer.max_epochs is not None and 0 <= trainer.max_epochs <= position // per_epoch:
        raise UserError(
            f"ckpt_path={path} has trained {position // per_epoch} epochs, already "
            f"trainer.max_epochs={trainer.max_epochs}: nothing to train; raise trainer.max_epochs to continue it"
        )


def fit_outcome(trainer: L.Trainer) -> dict[str, float]:
    """The steps trained and the best validation score of a finished fit.

    Under ``ddp_spawn`` the fit ran in worker processes, and Lightning brings back only the
    best checkpoint's path (its launcher has a TODO to pass the score); then both figures
    are read from that folder's ``last.ckpt`` (with ``read_checkpoint``)."""
    callback = trainer.checkpoint_callback
    outcome = {"steps": trainer.global_step}
    if callback is None:
        return outcome
    if callback.best_model_score is not None:
        return {**outcome, "best/val_bpc": float(callback.best_model_score)}
    last = Path(callback.dirpath or "") / "last.ckpt"
    if not spawns_ranks(trainer) or not last.is_file():
        return outcome
    checkpoint = read_checkpoint(last)
    score = checkpoint["callbacks"].get(callback.state_key, {}).get("best_model_score")
    outcome["steps"] = checkpoint["global_step"]
    return outcome if score is None else {**outcome, "best/val_bpc": float(score)}


def log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """Write the run's ``HPARAMS`` settings, parameter count and ``RESULTS`` to its loggers
    (``charlm.loggers.write_hparams``: TensorBoard's HPARAMS tab, the CSV logger's hparams.yaml, ...),
    and the same as the run's text summary (TEXT tab, ``summary``). The HPARAMS table's metric columns
    are the runs' scalars (their last values: the final val/bpc, ...); the test's numbers are single
    points, so they are columns of the settings' side instead of one-point scalar charts (which would
    also come first in the SCALARS tab)."""
    params = {}
    for key in HPARAMS:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, DictConfig):
            params.update({f"{key}.{k}": v for k, v in OmegaConf.to_container(value, resolve=True).items()})
        else:
            params[key] = value
    params["parameters"] = metrics["parameters"]
    params = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
    # the run's one-number results: columns of the HPARAMS table beside the settings
    results = {key: metrics[key] for key in RESULTS if isinstance(metrics.get(key), (int, float))}
    summary = "\n".join(
        [
            "| result | value |",
            "|---|---|",
            *(f"| {k} | {v:.4g} |" for k, v in results.items()),
            "",
            "| setting | value |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in params.items()),
        ]
    )
    params.update(results)
    write_text(trainer, "summary", summary)  # TEXT tab: the run on one page
    write_hparams(trainer, params)

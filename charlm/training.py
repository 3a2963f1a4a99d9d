"""Building and running one training job from a composed Hydra config (used by train.py)."""

from __future__ import annotations

import json
import logging
import signal
import time
import warnings
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from charlm.callbacks import GracefulStop
from charlm.data import CharDataModule
from charlm.errors import UserError, exit_on_user_error
from charlm.model import check_model_args
from charlm.module import CharLM, read_checkpoint
from charlm.precision import choose_precision

log = logging.getLogger("charlm")

# TensorBoard's HPARAMS tab: these config entries (groups flattened to group.key) against these final metrics
HPARAMS = ("model", "optimizer", "data.corpus", "data.nchars", "data.stride", "data.batch_size", "trainer.max_steps",
           "trainer.max_epochs", "trainer.max_time", "seed")
HPARAM_METRICS = {"hparams/best_val_bpc": "best/val_bpc", "hparams/val_bpc": "val/bpc", "hparams/test_bpc": "test/bpc",
                  "hparams/parameters": "parameters", "hparams/chars_per_sec": "train/chars_per_sec",
                  "hparams/fit_seconds": "fit_seconds"}


def build(cfg: DictConfig) -> tuple[CharDataModule, CharLM, L.Trainer]:
    """The data module (set up, so its vocabulary is known), the model and the trainer of ``cfg``.

    The model and optimizer settings are checked first, so a mistake there costs no data preparation."""
    model_args = OmegaConf.to_container(cfg.model, resolve=True)
    check_model_args(**model_args)
    lr = cfg.optimizer.get("lr", 1)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        raise UserError(f"optimizer.lr={lr!r} must be a number > 0")
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    precision = choose_precision(cfg.trainer.precision, cfg.trainer.accelerator, model_args)  # tried on the device
    trainer = instantiate(cfg.trainer, precision=precision, callbacks=callbacks, logger=loggers)
    check_launch_mode(trainer, multirun=HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # the vocabulary sizes the model
    model = CharLM(vocab=datamodule.vocab.chars, model=model_args,
                   optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True))
    # charlm.data.CharDataModule saves and restores the position in the data itself (its
    # state_dict), which Lightning's check for a resumable DataLoader does not see.
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    return datamodule, model, trainer


def check_launch_mode(trainer: L.Trainer, multirun: bool) -> None:
    """Refuse a Hydra multirun whose DDP strategy would start the other ranks by re-running the
    command line: each child would run the whole sweep again. Processes started by SLURM,
    torchrun or ``ddp_spawn`` are fine, as is a single run with ``ddp``."""
    launcher = trainer.strategy.launcher
    relaunches = (isinstance(launcher, _SubprocessScriptLauncher) and launcher.num_processes > 1
                  and not launcher.cluster_environment.creates_processes_externally)
    if multirun and relaunches:
        raise UserError(f"{type(trainer.strategy).__name__} on {launcher.num_processes} devices would "
                        "re-run the whole sweep in every rank under -m; use trainer.strategy=ddp_spawn for multirun "
                        "sweeps, one run per command, or a SLURM launcher (hydra/launcher=slurm)")


class MultirunLaunchCheck(Callback):
    """Hydra callback: ``check_launch_mode`` on the trainer settings of a multirun, before any
    folder is created or job started (each job checks its own settings again)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # Only Hydra's basic launcher runs the jobs in this process; cluster launchers (SLURM)
        # start every rank themselves, on other machines than this one.
        if config.hydra.launcher._target_ == "hydra._internal.core_plugins.basic_launcher.BasicLauncher":
            with exit_on_user_error():
                check_multirun_launch_mode(config.trainer)


def check_multirun_launch_mode(trainer_cfg: DictConfig) -> None:
    """``check_launch_mode`` for the trainer settings of a whole multirun."""
    keys = ("accelerator", "strategy", "devices", "num_nodes")
    settings = {key: trainer_cfg[key] for key in keys if key in trainer_cfg}
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # this trainer is only looked at: no "GPU available" lines for it
    try:
        trainer = instantiate({"_target_": "lightning.pytorch.Trainer", **settings}, logger=False,
                              enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    except Exception:
        return  # settings Lightning rejects (e.g. more GPUs than here): each job reports them itself
    finally:
        lightning_log.setLevel(level)
    check_launch_mode(trainer, multirun=True)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Fit, test the best checkpoint, and return the final metrics."""
    if rank_zero_only.rank == 0:  # other DDP ranks run this too, in the same folder
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise UserError(f"seed={cfg.seed!r} must be a whole number")
    if cfg.ckpt_path is not None:
        read_checkpoint(cfg.ckpt_path, key="ckpt_path")  # one line for a missing, truncated or unsafe file
    L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    parameters = sum(p.numel() for p in model.parameters())
    log.info("run folder: %s | %s, %d parameters, vocabulary %d", run_dir, dict(cfg.model), parameters,
             len(datamodule.vocab))

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(parameters=parameters, fit_seconds=time.perf_counter() - started, **fit_outcome(trainer))
    stop = next((c for c in trainer.callbacks if isinstance(c, GracefulStop) and c.signal), None)
    if stop is not None:
        log.warning("stopped by %s at step %d; checkpoints saved. Continue with: python train.py ... resume=%s",
                    signal.Signals(stop.signal).name, trainer.global_step, run_dir)
        raise SystemExit(128 + stop.signal)
    if cfg.test and not trainer.interrupted:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        log.info("test (%s): loss %.4f nats/char, %.4f bpc, perplexity %.3f", best or "last weights",
                 metrics["test/loss"], metrics["test/bpc"], metrics["test/ppl"])
    if trainer.is_global_zero:
        log_hparams(trainer, cfg, metrics)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


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
    if not isinstance(trainer.strategy.launcher, _MultiProcessingLauncher) or not last.is_file():
        return outcome
    checkpoint = read_checkpoint(last)
    score = checkpoint["callbacks"].get(callback.state_key, {}).get("best_model_score")
    outcome["steps"] = checkpoint["global_step"]
    return outcome if score is None else {**outcome, "best/val_bpc": float(score)}


def log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """Write the run's ``HPARAMS`` settings with its final metrics (``HPARAM_METRICS``, the same
    names in every run) to its TensorBoard logger, for TensorBoard's HPARAMS tab."""
    params = {}
    for key in HPARAMS:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, DictConfig):
            params.update({f"{key}.{k}": v for k, v in OmegaConf.to_container(value, resolve=True).items()})
        else:
            params[key] = value
    params = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
    final = {name: metrics[key] for name, key in HPARAM_METRICS.items() if key in metrics}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # Not logger.log_hyperparams(params, metrics): it also writes an experiment summary in every
            # run, and TensorBoard then takes the hparam list of whichever run it reads first, with no
            # hparam marked as differing (its HPARAMS tab shows 5 hparams, differing ones first). With
            # session summaries only, TensorBoard builds that list from all the runs.
            logger.log_metrics(final, step=trainer.global_step)
            _, session_start, session_end = hparams_summaries(params, final)
            writer = logger.experiment._get_file_writer()
            writer.add_summary(session_start)
            writer.add_summary(session_end)
            logger.finalize("success")  # flush; fit and test closed the event file already, this one is new

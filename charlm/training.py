"""Building and running one training job from a composed Hydra config (used by train.py)."""

from __future__ import annotations

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
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from charlm.callbacks import BudgetValidation, GracefulStop
from charlm.config import quiet_known_noise
from charlm.data import CharDataModule
from charlm.errors import UserError, exit_on_user_error
from charlm.model import check_model_args
from charlm.module import CharLM, read_checkpoint
from charlm.precision import choose_precision

log = logging.getLogger("charlm")

# TensorBoard's HPARAMS tab: these config entries (groups flattened to group.key) and the parameter count,
# against the last value of each scalar (val/bpc, test/bpc, train/chars_per_sec, ...)
HPARAMS = ("model", "optimizer", "data.corpus", "data.nchars", "data.stride", "data.batch_size", "trainer.max_steps",
           "trainer.max_epochs", "trainer.max_time", "seed")


def build(cfg: DictConfig) -> tuple[CharDataModule, CharLM, L.Trainer]:
    """The data module (set up, so its vocabulary is known), the model and the trainer of ``cfg``.

    The model and optimizer settings are checked first, so a mistake there costs no data preparation."""
    model_args = OmegaConf.to_container(cfg.model, resolve=True)
    check_model_args(**model_args)
    lr = cfg.optimizer.get("lr", 1)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        raise UserError(f"optimizer.lr={lr!r} must be a number > 0")
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    if cfg.trainer.get("val_check_interval") is not None or cfg.trainer.get("check_val_every_n_epoch") is not None:
        callbacks = [c for c in callbacks if not isinstance(c, BudgetValidation)]  # the user's schedule wins
    loggers = [instantiate(c) for c in cfg.logger.values()]
    precision = choose_precision(cfg.trainer.precision, cfg.trainer.accelerator, model_args)  # tried on the device
    trainer = instantiate(cfg.trainer, precision=precision, callbacks=callbacks, logger=loggers)
    check_launch_mode(trainer, multirun=HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # the vocabulary sizes the model
    model = CharLM(vocab=datamodule.vocab.chars, model=model_args,
                   optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True))
    quiet_known_noise()  # also for jobs built in-process (tests, benchmarks)
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
    device = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    log.info("run folder: %s | %s, %d parameters, vocabulary %d | %d %s device(s), precision %s", run_dir,
             dict(cfg.model), parameters, len(datamodule.vocab), trainer.num_devices * trainer.num_nodes, device,
             trainer.precision)

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k != "step"}
    metrics.update(parameters=parameters, fit_seconds=time.perf_counter() - started, **fit_outcome(trainer))
    stop = next((c for c in trainer.callbacks if isinstance(c, GracefulStop) and c.signal), None)
    if stop is not None:
        log.warning("stopped by %s at step %d; checkpoints saved. Continue with: python train.py ... resume=%s",
                    signal.Signals(stop.signal).name, trainer.global_step, run_dir)
        raise SystemExit(128 + stop.signal)
    if cfg.test and not trainer.interrupted:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k != "step"})
        log.info("test (%s): loss %.4f nats/char, %.4f bpc, perplexity %.3f", best or "last weights",
                 metrics["test/loss"], metrics["test/bpc"], metrics["test/ppl"])
    if trainer.is_global_zero:
        log_hparams(trainer, cfg, metrics)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        log.info("%s", end_summary(run_dir, metrics, best, cfg.callbacks.get("samples", {}).get("prompt")))
    return metrics


def end_summary(run_dir: Path, metrics: dict[str, float], best: str, prompt: str | None) -> str:
    """What a person needs when a run ends: where it is, how good it got, and the commands that
    sample from its best checkpoint and show its curves (quoted for a POSIX shell and for Hydra)."""
    scores = [f"best val bpc {metrics['best/val_bpc']:.4f}" if "best/val_bpc" in metrics else "no validation",
              *([f"test bpc {metrics['test/bpc']:.4f}"] if "test/bpc" in metrics else [])]
    ckpt = best or str(run_dir / "checkpoints" / "last.ckpt")
    sample = ["python", "sample.py", override_arg("ckpt", ckpt)]
    if prompt is not None:
        sample.append(override_arg("prompt", prompt, quote=True))
    return "\n".join([f"finished: {run_dir} | " + ", ".join(scores),
                      f"  sample:      {' '.join(sample)}",
                      f"  tensorboard: tensorboard --logdir {shlex.quote(str(run_dir))}"])


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
    """Write the run's ``HPARAMS`` settings and parameter count to its TensorBoard logger, for
    TensorBoard's HPARAMS tab. Its metric columns are the runs' scalars (their last values: the
    final val/bpc, test/bpc of the best checkpoint, ...), so no one-point ``hparams/*`` scalar
    cards are needed (they would come first in the SCALARS tab, before the learning curves)."""
    params = {}
    for key in HPARAMS:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, DictConfig):
            params.update({f"{key}.{k}": v for k, v in OmegaConf.to_container(value, resolve=True).items()})
        else:
            params[key] = value
    params["parameters"] = metrics["parameters"]
    params = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # Not logger.log_hyperparams(params, metrics): it also writes an experiment summary in every
            # run, and TensorBoard then takes the hparam and metric lists of whichever run it reads first,
            # with no hparam marked as differing (its HPARAMS tab shows 5 hparams, differing ones first).
            # With session summaries only, TensorBoard builds both lists from all the runs.
            _, session_start, session_end = hparams_summaries(params, {})
            writer = logger.experiment._get_file_writer()
            writer.add_summary(session_start)
            writer.add_summary(session_end)
            logger.finalize("success")  # flush; fit and test closed the event file already, this one is new

"""Every private (underscored) name of Lightning, Hydra, datasets and TensorBoard that charlm uses, in
one place, each with the reason no public name does. tests/test_compat.py exercises each on the
installed versions, so a library upgrade that moves one fails there, by name, instead of quietly
changing what a run does. pyproject.toml pins the major versions these were checked against."""

from __future__ import annotations

import sys

import lightning as L

# --- Lightning -------------------------------------------------------------------------------------


def spawns_ranks(trainer: L.Trainer) -> bool:
    """Whether the ranks are worker processes this process starts (``ddp_spawn``): the fit then
    runs elsewhere, and only rank 0's results come back. Lightning has no public flag for it."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    return isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)


def relaunches_script(trainer: L.Trainer) -> bool:
    """Whether the ranks are started by running the command line again (``ddp`` without SLURM or
    torchrun): under a Hydra multirun each would run the whole sweep. No public flag either."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = trainer.strategy.launcher
    return (
        isinstance(launcher, _SubprocessScriptLauncher)
        and launcher.num_processes > 1
        and not launcher.cluster_environment.creates_processes_externally
    )


def logs_this_step(trainer: L.Trainer) -> bool:
    """Whether Lightning writes this training step's metrics (every ``log_every_n_steps``): a
    ``self.log`` on other steps costs ~0.7 ms for nothing. The logger connector is private."""
    return trainer._logger_connector.should_update_logs


def align_logging_step(trainer: L.Trainer) -> None:
    """Lightning decides which steps to log by a private count of optimizer steps; restored from a
    checkpoint it comes back one off, and a resumed run would log at other steps (301, 351, ...)
    with a stale final ``train/loss``. With one optimizer it equals ``global_step``."""
    trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step


# Validation after a chosen batch: Lightning validates after a training batch when
# (batch index + 1) % trainer.val_check_batch == 0 (its _should_check_val_fx); val_check_batch is set
# from val_check_interval at fit start and has no public setter.
NEVER = sys.maxsize


def validate_after_this_batch(trainer: L.Trainer, validate: bool) -> None:
    """Make Lightning validate after the current training batch (or not)."""
    trainer.val_check_batch = 1 if validate else NEVER


def saves_on_train_epoch_end(callback) -> bool | None:
    """``ModelCheckpoint(save_on_train_epoch_end=...)`` as given (None: Lightning decides); it keeps
    the argument only privately."""
    return callback._save_on_train_epoch_end


def progress_bar_line(bar):
    """A ``TQDMProgressBar``'s training bar, or None before it is made: its public property raises then."""
    return bar._train_progress_bar


# --- Hydra -----------------------------------------------------------------------------------------

HYDRA_BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"  # runs jobs in this process


def job_error(job_return) -> BaseException:
    """A failed Hydra job's exception: the public ``JobReturn.return_value`` raises it instead."""
    return job_return._return_value


# --- datasets, TensorBoard -------------------------------------------------------------------------


def dataset_fingerprint(dataset) -> str:
    """A ``datasets.Dataset``'s content hash, what ``datasets`` itself caches by; reading it costs
    nothing, where hashing the articles would read them all."""
    return dataset._fingerprint


def tensorboard_file_writer(summary_writer):
    """The event-file writer under torch's ``SummaryWriter``: hparams session summaries go there
    without the experiment summary that ``add_hparams`` would add (see ``charlm.training.log_hparams``)."""
    return summary_writer._get_file_writer()

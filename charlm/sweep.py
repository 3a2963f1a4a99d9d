"""The Hydra callback of multiruns: failed jobs' errors in their folders, the sweep summary at the end."""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from charlm.compat import job_error
from charlm.summary import ERROR_FILE, find_runs, print_summary


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: through a temporary file renamed into place,
    so a full disk leaves no empty ``error.txt`` (which would hide the job's error); then the
    error is logged instead."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        logging.getLogger("charlm").warning("could not write %s (%s): %s", path, err.strerror, text.strip())


class SweepCallback(Callback):
    """Writes a failed job's one-line error to ``<job>/error.txt`` and, when the multirun ends,
    the sweep summary (``charlm.summary``) into the sweep folder."""

    def __init__(self):
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)  # the Optuna sweeper opens its storage here before any job
        # Hydra 1.3's basic sweeper re-raises the first failed job's error after the last job, so
        # on_multirun_end never runs then; neither does it after Ctrl-C. Summarize at exit instead.
        atexit.register(self.summarize)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        (Path(config.hydra.runtime.output_dir) / ERROR_FILE).unlink(missing_ok=True)  # from an earlier try

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if job_return.status == JobStatus.FAILED:
            error = job_error(job_return)
            message = (str(error).strip().splitlines() or [""])[0]
            write_whole(Path(config.hydra.runtime.output_dir) / ERROR_FILE, f"{type(error).__name__}: {message}\n")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        atexit.unregister(self.summarize)
        self.summarize()

    def summarize(self) -> None:
        """Write and print the summary of the sweep folder, if any job got a folder there."""
        if self.sweep_dir is not None and find_runs(self.sweep_dir):
            print_summary(self.sweep_dir)

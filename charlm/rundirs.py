"""Run folders that a failed start leaves nothing in: a run stopped by a ``UserError`` before it
trained (no checkpoint) removes the folder it created, so no empty folder is left in
``outputs/runs`` to be taken for a run."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

from charlm.errors import user_error_in

CREATED: set[Path] = set()  # run folders this process created (charlm.config.OutputDirCheck)


def note_created(run_dir: str | Path) -> None:
    """Call before creating ``run_dir``: remembers it as this run's own when it does not exist yet."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.exists():
        CREATED.add(run_dir)


def remove_unstarted(run_dir: Path) -> bool:
    """Remove ``run_dir`` if this process created it and it holds no checkpoint; whether it did.
    A folder that was there before (``resume=``, a ``hydra.run.dir`` of the user's) is never removed."""
    run_dir = run_dir.resolve()
    checkpoints = run_dir / "checkpoints"
    if run_dir not in CREATED or (checkpoints.is_dir() and any(checkpoints.iterdir())):
        return False
    root = logging.getLogger()
    for handler in list(root.handlers):  # Hydra's train.log in it
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().is_relative_to(run_dir):
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(run_dir, ignore_errors=True)
    CREATED.discard(run_dir)
    return True


@contextlib.contextmanager
def removed_if_refused(run_dir: Path, keep: bool = False):
    """Around a run: a ``UserError`` (a refused setting or input, before any training) removes
    ``run_dir`` (see ``remove_unstarted``) unless ``keep`` (a resumed run, a multirun job, whose
    folder keeps its error.txt), then goes on as before."""
    try:
        yield
    except Exception as err:
        if not keep and user_error_in(err) is not None:
            remove_unstarted(run_dir)
        raise

"""A run's loggers: its scalars in ``<run>/metrics.csv`` whatever loggers it has (``MetricsFile``), and
text, images, figures and hyperparameters to every logger able to take them.

TensorBoard's ``SummaryWriter`` has ``add_text``, ``add_image`` and ``add_figure``; Lightning's
``CSVLogger`` writes scalars only. Calling ``trainer.logger.experiment.add_text`` directly made a run
with ``~logger.tensorboard`` and a CSV logger fail at its first validation; here a logger without the
method is passed over, and only rank 0 writes."""

from __future__ import annotations

import csv
import importlib.util
import os
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from charlm.compat import tensorboard_file_writer
from charlm.errors import UserError

METRICS_FILE = "metrics.csv"
# Loggers whose package is no dependency of charlm: (module, the extra of pyproject.toml that installs it)
OPTIONAL_PACKAGES = {"WandbLogger": ("wandb", "wandb"), "MLFlowLogger": ("mlflow", "mlflow")}


class MetricsFile(Logger, L.Callback):
    """Every scalar the run logs, one row ``step,seconds,name,value`` each, appended to ``<run>/metrics.csv``
    whatever loggers the run chose (charlm's trainer always has this one): the sweep summary reads its curves
    there, a plain file that any logger preset, a killed run and a later charlm all leave readable.

    Long rows (one per scalar) so a new metric never rewrites the header. A Lightning logger, so it gets
    what the run logs, at the steps it is logged; and a callback, for the clock and for resume:
    ``seconds`` is the wall-clock time of the fit so far, validation included, on top of the checkpoint's
    ``fit_seconds`` (a resumed run goes on from where the earlier one was saved, the pause left out); the
    file's length goes into every checkpoint, and a fit resumed from one first cuts the file back to that
    length, so rows a killed run wrote after its last checkpoint are not there twice. Each log call's rows
    are appended and the file closed (a killed run keeps them); only rank 0 writes."""

    COLUMNS = ("step", "seconds", "name", "value")

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)
        self._seconds_before = 0.0  # the fit time of the runs this one resumes (the checkpoint's fit_seconds)
        self._started: float | None = None
        self._length = 0  # of the file, as far as this run wrote it
        self._resumed_length: int | None = None  # the file's length at the checkpoint resumed from

    # --- the logger ---

    @property
    def name(self) -> str:
        return "metrics"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @property
    def experiment(self) -> None:
        return None  # text, images and hparams are for the other loggers

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the settings are in the run's config.yaml, the results in its metrics.json

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        seconds = "" if self._started is None else f"{self._seconds_before + time.perf_counter() - self._started:.3f}"
        rows = [(step, seconds, name, repr(float(value))) for name, value in metrics.items()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            if f.tell() == 0:
                writer.writerow(self.COLUMNS)
            writer.writerows(rows)
            self._length = f.tell()

    # --- the callback ---

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        self._seconds_before = float(checkpoint.get("fit_seconds", 0.0))

    def state_dict(self) -> dict:
        return {"length": self._length}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resumed_length = state_dict.get("length")

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        self._started = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        # global_step is restored by now: cut off what came after the checkpoint this fit starts from
        if trainer.is_global_zero:
            self._length = self.cut(trainer.global_step)

    def cut(self, step: int) -> int:
        """Keep the rows written before the checkpoint a fit resumes (at ``step``): the file's first
        ``_resumed_length`` bytes; without that record (a checkpoint of an older charlm) the rows up to
        ``step``; none for a fit from scratch. The file's new length."""
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        if step == 0:
            kept = b""
        elif self._resumed_length is not None:
            kept = data[: self._resumed_length]
            kept = kept[: kept.rfind(b"\n") + 1]  # whole rows only
        else:
            lines = data.decode(errors="replace").splitlines(keepends=True)
            kept = "".join(
                lines[:1] + [line for line in lines[1:] if _row_step(line) is not None and _row_step(line) <= step]
            ).encode()
        if kept != data:
            tmp = self.path.with_name(f".{self.path.name}.tmp")  # whole or not at all
            tmp.write_bytes(kept)
            os.replace(tmp, self.path)
        return len(kept)


def _row_step(line: str) -> int | None:
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return None


def read_metrics(path: Path, names) -> dict[str, dict[int, tuple[float | None, float]]]:
    """``names``' points in a metrics.csv (``MetricsFile``): name -> step -> (seconds, value); a
    step logged twice keeps its later row, and a row a killed run left half-written is passed over."""
    found: dict[str, dict[int, tuple[float | None, float]]] = {name: {} for name in names}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("name") not in found:
                continue
            try:
                step, value = int(row["step"]), float(row["value"])
                seconds = float(row["seconds"]) if row["seconds"] else None
            except (TypeError, ValueError):
                continue
            found[row["name"]][step] = (seconds, value)
    return found


def check_loggers(logger_cfg) -> None:
    """Before anything is built: a logger preset whose package is not installed (``logger=wandb``
    without wandb) is one line naming the install command, not an ImportError from inside Hydra."""
    for key, cfg in (logger_cfg or {}).items():
        target = str((cfg or {}).get("_target_", "")).rsplit(".", 1)[-1]
        if target in OPTIONAL_PACKAGES:
            module, extra = OPTIONAL_PACKAGES[target]
            if importlib.util.find_spec(module) is None:
                raise UserError(
                    f"logger={key} needs the {module} package, which is not installed: "
                    f'pip install -e ".[{extra}]" (or use another logger, e.g. logger=csv)'
                )


def allow_mlflow_file_store(logger_cfg) -> None:
    """An MLflow logger writing to a local file store (``tracking_uri: file:...``, logger=mlflow's): MLflow 3
    refuses that backend unless ``MLFLOW_ALLOW_FILE_STORE`` is set (it would have a database, which needs
    the full mlflow package and its SQLAlchemy); set here for this process, unless the user set it."""
    for cfg in (logger_cfg or {}).values():
        if str((cfg or {}).get("_target_", "")).endswith("MLFlowLogger") and str(
            cfg.get("tracking_uri") or ""
        ).startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def check_no_clash(loggers: list, metrics_path: Path) -> None:
    """A ``CSVLogger`` writing into the run folder itself would write its own ``metrics.csv`` over
    charlm's (``MetricsFile``): refused in one line naming a folder of its own."""
    for logger in loggers:
        if isinstance(logger, CSVLogger) and Path(logger.log_dir).resolve() == metrics_path.parent.resolve():
            raise UserError(
                f"a CSVLogger with save_dir={logger.save_dir} would write its metrics.csv over the run's "
                f"own {metrics_path}; give it a folder of its own, e.g. "
                "logger.csv.save_dir='${hydra:runtime.output_dir}/csv' (logger=csv does)"
            )


def writers(trainer: L.Trainer, method: str) -> list:
    """``method`` (e.g. ``"add_text"``) of every logger's experiment that has it; none off rank 0."""
    if not trainer.is_global_zero:
        return []
    return [
        getattr(logger.experiment, method)
        for logger in trainer.loggers
        if hasattr(getattr(logger, "experiment", None), method)
    ]


def write_text(trainer: L.Trainer, tag: str, text: str) -> None:
    """TensorBoard's TEXT tab (Markdown) at the current step."""
    for add_text in writers(trainer, "add_text"):
        add_text(tag, text, trainer.global_step)


def write_image(trainer: L.Trainer, tag: str, image, **kwargs) -> None:
    """TensorBoard's IMAGES tab at the current step (``kwargs``: e.g. ``dataformats="HWC"``)."""
    for add_image in writers(trainer, "add_image"):
        add_image(tag, image, trainer.global_step, **kwargs)


def write_figure(trainer: L.Trainer, tag: str, figure) -> None:
    """A matplotlib figure, as an image, at the current step."""
    for add_figure in writers(trainer, "add_figure"):
        add_figure(tag, figure, trainer.global_step)


def write_hparams(trainer: L.Trainer, params: dict[str, bool | int | float | str]) -> None:
    """The run's settings and one-number results (``params``) to every logger that keeps hyperparameters:
    TensorBoard's HPARAMS tab, the CSV logger's hparams.yaml, the config of a wandb or MLflow run.

    TensorBoard's way is its own: not ``logger.log_hyperparams(params, metrics)``, which also writes an
    experiment summary in every run, so TensorBoard would take the hparam and metric lists of whichever
    run it reads first, with no hparam marked as differing (its HPARAMS tab shows 5 hparams, differing
    ones first). With session summaries only, TensorBoard builds both lists from all the runs."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, MetricsFile):
            continue
        if isinstance(logger, TensorBoardLogger):
            from torch.utils.tensorboard.summary import hparams as hparams_summaries

            _, session_start, session_end = hparams_summaries(params, {})
            writer = tensorboard_file_writer(logger.experiment)
            writer.add_summary(session_start)
            writer.add_summary(session_end)
        else:
            logger.log_hyperparams(params)
        logger.finalize("success")  # flush; fit and test closed TensorBoard's event file already, this one is new

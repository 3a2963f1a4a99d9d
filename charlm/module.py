"""The LightningModule: training, carried-state evaluation, metrics, optimizer, checkpoint contents."""

from __future__ import annotations

import errno
import inspect
import logging
import os
import re
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.fabric.plugins.io import TorchCheckpointIO

from charlm.compat import align_logging_step, logs_this_step
from charlm.errors import UserError
from charlm.loggers import write_figure, writers
from charlm.model import CharRNN
from charlm.scoring import SplitMetrics, split_metrics
from charlm.vocabulary import Vocabulary
from charlm.windows import unpack_batch

FORMAT_VERSION = 1  # bump when the checkpoint layout changes
VAL_ARTICLES_CLASSIFIED = 2000  # held-out articles classified at each validation (test: all of them)

log = logging.getLogger(__name__)


class CharLM(L.LightningModule):
    """A ``CharRNN`` trained with mean cross-entropy (nats per character).

    Everything needed to rebuild the model (vocabulary, model settings) is saved as plain
    lists and dicts in the checkpoint's hyperparameters, so a checkpoint loads with
    ``torch.load(weights_only=True)`` and is enough to sample.

    Args:
        vocab: the vocabulary's characters (``Vocabulary.chars``).
        model: keyword arguments of ``CharRNN`` (cell, hidden_size, layers, dropout, embedding_dim, ...).
        optimizer: a Hydra config of a ``torch.optim`` optimizer, instantiated with ``params``
            (the learning-rate schedule is the ``BudgetLRDecay`` callback).
        format_version: the checkpoint layout, saved with the hyperparameters and checked by
            ``read_checkpoint`` before a checkpoint is used.
    """

    def __init__(
        self,
        vocab: list[str],
        model: dict,
        optimizer: dict | None = None,
        format_version: int = FORMAT_VERSION,
        topics: list[str] | None = None,
        topic_counts: list[int] | None = None,
    ):
        super().__init__()
        # topics: the topics' names (model.topics); topic_counts: training articles per topic (the prior)
        self.save_hyperparameters()
        self.vocab = Vocabulary(vocab)
        self.net = CharRNN(len(self.vocab), **model)
        self.topics = list(topics) if topics else None
        # every metric of each held-out split (charlm.scoring); the training sample has its own
        self.val_metrics, self.test_metrics = (split_metrics(stage, topics=bool(topics)) for stage in ("val", "test"))
        self.topic_confusion: dict[str, list[list[int]]] = {}  # per stage, for metrics.json
        self._train_state = None  # carried across training batches (data.order=streams), detached
        # The time spent in fit, also by the runs this one resumes: saved in checkpoints (fit_seconds)
        self._fit_started: float | None = None
        self._fit_seconds_before = 0.0

    def _state_tensors(self, state) -> list[torch.Tensor]:
        return self.net.rnn.unpack(state)

    def _state_from(self, tensors: list[torch.Tensor]):
        return self.net.rnn.pack(tensors)  # the cell's layout: (h, c) or h

    def forward(self, ids: torch.Tensor, state=None):
        return self.net(ids, state)

    def training_step(self, batch, batch_idx):
        # One path for every order: a batch that says to carry the state (data.order=streams, every
        # chunk but an epoch's first) starts from the state the previous batch ended in; the others
        # (windows, articles, the first chunk) from zeros (None).
        x, y, extras = unpack_batch(batch)
        state = self._train_state if extras.get("carry") else None
        if state is not None:
            tensors = [t.to(x.device) for t in self._state_tensors(state)]
            # a state of other rows (another batch size, a checkpoint of another run) is not this batch's
            state = self._state_from(tensors) if tensors[0].shape[1] == x.shape[0] else None
        logits, state = self.net(x, state, topic=extras.get("topic"))  # topic: with model.topics, else None
        # The graph ends at the batch (truncated backpropagation); a batch that carries nothing keeps nothing.
        self._train_state = (
            self._state_from([t.detach() for t in self._state_tensors(state)]) if "carry" in extras else None
        )
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        # Only on the steps whose metrics Lightning writes (every trainer.log_every_n_steps):
        # each self.log call costs about 0.7 ms of bookkeeping, ~3% of a CPU step here.
        # A host copy (one host-device sync, on these steps only): Lightning converts the progress
        # bar's values with .item() after every step, and a GPU tensor there would sync every step.
        if logs_this_step(self.trainer):
            self.log("train/loss", loss.detach().cpu(), on_step=True, prog_bar=True)
        return loss

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # a resumed run logs at the steps an uninterrupted one does (see compat.align_logging_step)
        align_logging_step(self.trainer)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # Lightning writes a step's metrics at its batch index (0 after the first step) and adds an
        # `epoch` scalar; a logged "step" replaces both (Lightning's documented way), so scalars,
        # text samples and checkpoints all count optimizer steps, as max_steps does.
        if logs_this_step(self.trainer):
            self.log("step", float(self.trainer.global_step))

    def _log_eval(self, metrics: SplitMetrics):
        # Under DDP each rank scored its own rows; compute() sums the weighted losses and the
        # character counts of all ranks, so every rank holds the loss of the whole stream.
        stage = metrics.prefix
        values = metrics.compute()
        topics_scored = metrics.scored_topics
        metrics.reset()
        if self.topics and topics_scored:
            values[f"{stage}/topic_acc"] = torch.tensor(self._classify(stage))
        # equal on all ranks already: the mean is exact. The test's numbers are one point each: they go
        # to metrics.json, TensorBoard's HPARAMS table and the run's text summary (log_hparams), not to
        # one-point scalar charts.
        self.log_dict(
            {**values, "step": float(self.trainer.global_step)},  # see on_train_batch_end
            sync_dist=True,
            logger=stage != "test",
        )

    def _classify(self, stage: str) -> float:
        """Accuracy of the generative classifier on the held-out articles of ``stage``; the confusion
        matrix goes to ``topic_confusion`` and, as an image, to TensorBoard."""
        from charlm.topics import classify_articles, confusion_figure

        datamodule = self.trainer.datamodule
        tokens, labels = datamodule.held_out_topics(stage)
        limit = None if stage == "test" else VAL_ARTICLES_CLASSIFIED
        accuracy, matrix = classify_articles(
            self.net, tokens, labels, datamodule.separator_id, self.hparams.topic_counts, limit
        )
        self.topic_confusion[stage] = matrix
        if writers(self.trainer, "add_figure"):
            figure = confusion_figure(matrix, self.topics)
            if figure is None:
                log.info("matplotlib is not installed: no confusion-matrix image (the matrix is in metrics.json)")
            else:
                write_figure(self.trainer, f"{stage}/topic_confusion", figure)
        return accuracy

    def validation_step(self, batch, batch_idx):
        # The held-out stream arrives as consecutive chunks of the same rows: the state is carried.
        self.val_metrics.update(self.net, batch, first=batch_idx == 0)

    def on_validation_epoch_end(self):
        self._log_eval(self.val_metrics)

    def test_step(self, batch, batch_idx):
        self.test_metrics.update(self.net, batch, first=batch_idx == 0)

    def on_test_epoch_end(self):
        self._log_eval(self.test_metrics)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning does not save random states; dropout needs them for an exact resume.
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if self._fit_started is not None:  # the fit time so far, which a resumed run adds to its own
            checkpoint["fit_seconds"] = self._fit_seconds_before + time.perf_counter() - self._fit_started
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()
        # The state carried into the next training batch (data.order=streams) is part of where
        # training stands: each rank's, stacked ([world_size, layers, rows, hidden] per tensor).
        # Every rank writes its checkpoint contents (only rank 0 saves the file), so the gather meets.
        if self._train_state is not None:
            tensors = self._state_tensors(self._train_state)
            world = self.trainer.world_size if self._trainer is not None else 1
            checkpoint["train_state"] = [(self.all_gather(t) if world > 1 else t[None]).cpu() for t in tensors]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states", {})
        self._fit_seconds_before = float(checkpoint.get("fit_seconds", 0.0))
        if "torch" in states:
            torch.set_rng_state(states["torch"].cpu())
        if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        saved = checkpoint.get("train_state")
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        # on another number of ranks the rows are others: the state starts over (as at an epoch's start)
        self._train_state = self._state_from([t[rank] for t in saved]) if saved and len(saved[0]) == world else None

    def configure_optimizers(self):
        if self.hparams.optimizer is None:
            raise UserError("no optimizer configured; pass optimizer=adamw (or another conf/optimizer file)")
        return instantiate(self.hparams.optimizer, params=self.parameters())


class DiskFull(UserError):
    """A checkpoint could not be written: its folder's disk (or quota) is full."""


FULL = (errno.ENOSPC, errno.EDQUOT)


def _full_disk_error(err: BaseException | None) -> OSError | None:
    """The "no space" ``OSError`` behind ``err``, if any: torch's writer reports a failed write as a
    ``RuntimeError`` ("enforce fail ... unexpected pos") raised while handling it."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in FULL:
            return err
        err = err.__cause__ or err.__context__
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, flushes it to disk, then renames
    it over the old one, so a process killed while saving leaves the previous checkpoint whole.

    Lightning's own save stages the file in the system temp folder (fsspec), and where that is
    another filesystem (a tmpfs ``/tmp``) the final move is a copy that a kill can cut short.

    A write that fails removes its temporary file, which would otherwise hold the space a resume
    needs; on a full disk it raises ``DiskFull`` naming the folder, in one line."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            full = _full_disk_error(err)
            if full is None:
                raise
            raise DiskFull(
                f"the folder {path.parent} is full ({full.strerror}) writing {path.name}; the checkpoints "
                "saved before are kept"
            ) from None


def read_checkpoint(path: str | Path, key: str = "ckpt", map_location="cpu") -> dict:
    """The contents of a charlm checkpoint file, read with ``weights_only=True``: only tensors and
    plain data load, so a file holding a pickled object is refused and nothing in it runs.

    A missing, truncated, unsafe or foreign file, or one of another ``FORMAT_VERSION``, raises a
    ``UserError`` naming ``key=path`` (``ckpt`` for sample.py, ``ckpt_path`` for train.py)."""
    path = Path(path)
    if path.is_dir():
        found = [
            f
            for f in (
                path / "checkpoints" / "best.ckpt",
                path / "checkpoints" / "last.ckpt",
                path / "best.ckpt",
                path / "last.ckpt",
            )
            if f.is_file()
        ]
        if key == "ckpt_path":  # training continues from the last state; sampling wants the best model
            found.reverse()
        suggestion = f"e.g. {key}={found[0]}" if found else "a .ckpt file from a run's checkpoints/ folder"
        raise UserError(f"{key}={path} is a folder, not a checkpoint file; pass one, {suggestion}")
    if not path.is_file():
        raise UserError(f"{key}={path} does not exist; pass a .ckpt file from a run's checkpoints/ folder")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(err))  # torch names what the pickle would have called
        if unsafe:
            raise UserError(
                f"{key}={path} cannot be loaded safely: it holds a pickled object ({unsafe[1]}) that could "
                "run code; refused without running it — use a checkpoint written by charlm"
            ) from None
        reason = str(err).split(". ")[0].strip()[:200] or type(err).__name__
        raise UserError(
            f"{key}={path} cannot be loaded: it is truncated, corrupt or not a checkpoint ({reason}); "
            "use a checkpoint written by charlm"
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not hparams or "vocab" not in hparams or "state_dict" not in checkpoint:
        raise UserError(
            f"{key}={path} is not a charlm checkpoint (no vocabulary or weights); pass one written by train.py"
        )
    version = hparams.get("format_version", 0)
    if version != FORMAT_VERSION:
        raise UserError(
            f"{key}={path} has format_version={version}, not {FORMAT_VERSION}, the one this charlm reads; "
            "use it with the charlm version that wrote it, or retrain"
        )
    return checkpoint


def check_checkpoint_fits(checkpoint: dict, path, vocab: list[str], model_args: dict) -> None:
    """Refuse, in one line, to continue training from ``checkpoint`` (``ckpt_path=path``) a model
    that is not the one this run builds: another vocabulary (the data of another text) or other
    model settings. Loading its weights would otherwise fail in a 30-line size-mismatch traceback,
    or, where the sizes happen to agree, silently give characters the ids of others."""
    hparams = checkpoint["hyper_parameters"]
    old = list(hparams["vocab"])
    if old != list(vocab):
        only_old, only_new = sorted(set(old) - set(vocab)), sorted(set(vocab) - set(old))
        differs = (
            "; ".join(
                f"{what}: {''.join(chars[:20])!r}{'...' if len(chars) > 20 else ''}"
                for what, chars in (("only in the checkpoint", only_old), ("only in this data", only_new))
                if chars
            )
            or "the same characters in another order"
        )
        raise UserError(
            f"ckpt_path={path} was trained on another vocabulary ({len(old)} characters, this data has "
            f"{len(vocab)}; {differs}); continue it on the data it was trained on (see its run's "
            "config.yaml), or leave out ckpt_path to train a new model"
        )
    defaults = {k: p.default for k, p in inspect.signature(CharRNN).parameters.items() if p.default is not p.empty}
    saved, here = {**defaults, **hparams["model"]}, {**defaults, **model_args}
    differing = [k for k in sorted(set(saved) | set(here)) if saved.get(k) != here.get(k)]
    if differing:
        raise UserError(
            f"ckpt_path={path} has other model settings than this run ("
            + "; ".join(f"model.{k}: {saved.get(k)} there, {here.get(k)} here" for k in differing)
            + "); pass the checkpoint's ("
            + " ".join(f"model.{k}={saved.get(k)}" for k in differing)
            + ") or leave out ckpt_path"
        )


def newest_checkpoint(runs_dir: str | Path, topics: bool = False) -> Path:
    """``checkpoints/best.ckpt`` of the most recently trained run under ``runs_dir`` (sample.py's
    default); with ``topics``, of the most recent run trained with ``model.topics=true`` (classify's).
    A checkpoint that cannot be read is passed over for ``topics``: its topics are not known."""
    found = sorted(Path(runs_dir).rglob("checkpoints/best.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not topics:
        if not found:
            raise UserError(f"no checkpoints/best.ckpt under runs_dir={runs_dir}; train first or pass ckpt=PATH")
        return found[0]
    for path in found:
        try:  # mmap: the hyperparameters only, not the weights
            hparams = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
        except Exception:  # noqa: BLE001 - truncated, corrupt, unsafe: not a run to choose
            continue
        if hparams.get("topics"):
            return path
    raise UserError(
        f"no checkpoints/best.ckpt of a model trained with topics under runs_dir={runs_dir}; train one "
        "(python train.py model.topics=true) or pass ckpt=PATH"
    )


def load_checkpoint(path: str | Path, map_location="cpu") -> CharLM:
    """A ``CharLM`` from a checkpoint file, read safely with ``read_checkpoint`` (no code can run)."""
    checkpoint = read_checkpoint(path, map_location=map_location)
    hparams = checkpoint["hyper_parameters"]
    module = CharLM(
        vocab=hparams["vocab"],
        model=hparams["model"],
        optimizer=hparams.get("optimizer"),
        topics=hparams.get("topics"),
        topic_counts=hparams.get("topic_counts"),
    )
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise UserError(
            f"ckpt={path} does not match its own model settings ({str(err).splitlines()[0]}); "
            "it was edited or written by another version"
        ) from None
    return module.eval()


def usable_device(name) -> torch.device:
    """``torch.device(name)`` (``device=`` of sample.py, classify and inspect: cpu, cuda, cuda:N, mps ...)
    after a tensor was made and used on it, else a ``UserError``: not a device name, no such device
    here, a backend this torch lacks, or ``meta`` (holds no data; a model moved there fails only
    when it computes)."""
    try:
        device = torch.device(name)
        if device.type == "meta":
            raise RuntimeError("a meta tensor holds no data")
        torch.ones(1, device=device).add_(1)
    except TypeError:
        raise UserError(f"device={name} is not a device name; use cpu, or cuda on a machine with a GPU") from None
    except (RuntimeError, AssertionError, NotImplementedError) as err:
        reason = str(err).splitlines()[0].split(". ")[0]
        raise UserError(
            f"device={name} is not usable here ({reason}); use cpu, or cuda on a machine with a GPU"
        ) from None
    return device

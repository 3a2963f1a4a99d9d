"""Progress against the run's budget: the fraction of it used (steps, epochs or ``max_time``,
whichever ends first), the one-line console bar that counts it, and the validation schedule that
gives every run the same number of points whatever its budget."""

from __future__ import annotations

import contextlib
import math
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import Timer, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf
from tqdm.contrib.logging import logging_redirect_tqdm

from charlm.compat import progress_bar_line, validate_after_this_batch
from charlm.errors import UserError


class BudgetTimer(Timer):
    """Lightning's ``Timer`` for ``trainer.max_time``, with the clock started when the run's (or a
    resumed run's) first optimizer step has ended, and one clock for all DDP ranks.

    Lightning's Timer starts at ``on_train_start``, so the first step's one-off costs (the first
    batch's allocations and kernel selection, a busy machine's slow start: 65 s of a 30 s budget
    once) came out of the budget and out of the learning-rate and validation schedules, which
    follow it. Data preparation, the precision probe and the sanity check come before
    ``on_train_start`` and were never counted. ``max_time`` therefore covers training from the
    end of the first step, validations and checkpoints included.

    Under DDP each rank's clock differs a little, and a schedule read from it (the learning rate)
    would differ between ranks; ``elapsed`` is rank 0's time as of the last step, broadcast."""

    def __init__(self, duration):
        super().__init__(duration=duration, interval="step", verbose=False)  # no "Time limit reached" line
        self.seconds = self.time_remaining("train")  # the budget, read before any time has passed
        self._shared: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._shared = None  # the clock starts at the end of the first step (on_train_batch_end)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, *args, **kwargs) -> None:
        if self.start_time("train") is None:
            super().on_train_start(trainer, pl_module)  # Lightning's own start of the clock, now
        elapsed = self.time_elapsed("train")
        self._shared = trainer.strategy.broadcast(elapsed) if trainer.world_size > 1 else elapsed
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def elapsed(self) -> float:
        """Seconds of the budget used, as every rank reads it (the live clock before the first step ends)."""
        return self.time_elapsed("train") if self._shared is None else self._shared


def _timer(trainer: L.Trainer) -> Timer | None:
    """The Timer of ``trainer.max_time`` (a ``BudgetTimer`` in charlm's runs), if any."""
    return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)


def budget_timer(trainer: L.Trainer) -> Timer | None:
    """The Timer of a ``trainer.max_time`` budget, or None when the run has none."""
    timer = _timer(trainer)
    return timer if timer is not None and timer.time_remaining("train") is not None else None


def budget_seconds(timer: Timer) -> float:
    """Seconds of the time budget used (as every DDP rank reads them, for a ``BudgetTimer``)."""
    return timer.elapsed() if isinstance(timer, BudgetTimer) else timer.time_elapsed("train")


def timer_duration(timer: Timer) -> float:
    """The time budget in seconds (exact for a ``BudgetTimer``: the same number on every rank)."""
    return (
        timer.seconds if isinstance(timer, BudgetTimer) else timer.time_elapsed("train") + timer.time_remaining("train")
    )


def budget_progress(trainer: L.Trainer) -> float:
    """Fraction of the run's budget used, in [0, 1]: the largest of the fractions of
    ``trainer.max_steps``, ``trainer.max_epochs`` (in steps) and ``trainer.max_time`` used, since
    whichever ends first ends the run."""
    total, timer = budget_steps(trainer), budget_timer(trainer)
    done = [trainer.global_step / total] if total else []
    if timer is not None:
        done.append(budget_seconds(timer) / max(timer_duration(timer), 1e-9))
    return min(1.0, max(done, default=0.0))


def budget_steps(trainer: L.Trainer) -> int | None:
    """The number of training steps in the run's step or epoch budget, or None (time only)."""
    totals = [trainer.max_steps] if trainer.max_steps and trainer.max_steps > 0 else []
    if trainer.max_epochs and trainer.max_epochs > 0 and trainer.num_training_batches not in (0, float("inf")):
        totals.append(trainer.max_epochs * trainer.num_training_batches)
    return min(totals, default=None)


def _timed(trainer: L.Trainer) -> bool:
    """Whether the run has a ``max_time`` budget."""
    return budget_timer(trainer) is not None


class BudgetProgressBar(TQDMProgressBar):
    """One console line for the whole run, measured against its budget (``budget_progress``):
    ``step 300/600  50%|█████     | 01:02 left, loss 1.612, val 2.345 bpc, 41.2k chars/s``.

    Lightning's bar counts the batches of the current epoch, so a ``max_steps`` run ends
    frozen part-way, and its validation bar, sanity-check bar and ``key=value`` metrics wrap
    a narrow terminal into dozens of lines. Here the step total is the step or epoch budget,
    or for a ``max_time`` budget the steps that fit in it at the pace so far; validation shows
    in the same line; the metrics are short, so the line fits 80 columns (tqdm trims the rest)."""

    BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar}| {remaining} left{postfix}"

    def __init__(self, refresh_rate: int = 10, process_position: int = 0):
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self._redirect: contextlib.ExitStack | None = None

    def _tqdm(self, desc: str, leave: bool, bar_format: str | None = None) -> Tqdm:
        return Tqdm(
            desc=desc,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=leave,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=bar_format or self.BAR_FORMAT,
        )

    def init_sanity_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)  # two batches: not worth a line

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)  # shown in the training line (on_validation_batch_end)

    def init_train_tqdm(self) -> Tqdm:
        return self._tqdm("step", leave=True)

    def init_test_tqdm(self) -> Tqdm:
        return self._tqdm("test", leave=False, bar_format="{desc} {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar}|")

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        # Console log lines while training (Lightning's, charlm's) go above the bar, not into its line.
        self._redirect = contextlib.ExitStack()
        if not self.is_disabled:
            self._redirect.enter_context(logging_redirect_tqdm())
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.initial = trainer.global_step  # a resumed run: the pace counts from here
        self._show(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, *_) -> None:
        pass  # one bar for the whole run, not one per epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.refresh_rate == 0:
            self._show(trainer, read=trainer.global_step % trainer.log_every_n_steps == 0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        pass

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._show(trainer)
        self.train_progress_bar.close()
        self._redirect.close()

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if progress_bar_line(self) is not None:  # ends the line: the error comes on its own line, not after the bar
            progress_bar_line(self).close()
        if self._redirect is not None:
            self._redirect.close()

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx, dataloader_idx: int = 0
    ) -> None:
        bar = progress_bar_line(self)
        n = batch_idx + 1
        if (
            trainer.state.fn == "fit"
            and not trainer.sanity_checking
            and bar is not None
            and not bar.disable
            and self._should_update(n, self.total_val_batches_current_dataloader)
        ):
            total = convert_inf(self.total_val_batches_current_dataloader)
            bar.n, bar.total = self.budget(trainer)
            bar.set_postfix_str(f"validating {n}/{total or '?'}")

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        self.val_progress_bar.close()
        self.reset_dataloader_idx_tracker()
        if trainer.state.fn == "fit" and not trainer.sanity_checking and progress_bar_line(self) is not None:
            self._show(trainer)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx, dataloader_idx: int = 0) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            self.test_progress_bar.reset(total=convert_inf(self.total_test_batches_current_dataloader))

    def budget(self, trainer: L.Trainer) -> tuple[int, int | None]:
        """The bar's position and total: steps done, and steps in the budget (for a ``max_time``
        budget, steps done / fraction of the time used; None before any step of a time budget)."""
        step, progress = trainer.global_step, budget_progress(trainer)
        total = budget_steps(trainer)
        if progress > 0 and (total is None or _timed(trainer)):
            total = max(step, round(step / progress))
        return step, total

    def postfix(self, trainer: L.Trainer) -> str:
        """The latest training loss, validation bits per character and throughput, if any."""
        metrics = trainer.callback_metrics
        parts = [
            f"{name} {float(metrics[key]):{fmt}}"
            for name, key, fmt in (("loss", "train/loss", ".3f"), ("val", "val/bpc", ".3f"))
            if key in metrics
        ]
        if "val/bpc" in metrics:
            parts[-1] += " bpc"
        if "train/chars_per_sec" in metrics:
            parts.append(f"{Tqdm.format_sizeof(float(metrics['train/chars_per_sec']))} chars/s")
        return ", " + ", ".join(parts) if parts else ""

    def _show(self, trainer: L.Trainer, read: bool = True) -> None:
        """Redraw the line; ``read``: read the metrics again. They change only on logging steps and
        at validations, and reading them between (values on a GPU) would be a host-device sync at
        every redraw, so other redraws reuse the last text."""
        bar = self.train_progress_bar
        if bar.disable:
            return
        bar.n, bar.total = self.budget(trainer)
        if read or not hasattr(self, "_postfix"):
            self._postfix = self.postfix(trainer).removeprefix(", ")
        bar.set_postfix_str(self._postfix, refresh=False)
        bar.refresh()


class BudgetValidation(L.Callback):
    """Validates each time the run has used another ``1/points`` of its budget (steps, epochs or
    ``max_time``, whichever ends first: ``budget_progress``), so every run's learning curve gets
    ``points`` points, whatever its length; Lightning's default, once per epoch, gives a short
    run on a large corpus a single point.

    For step and epoch budgets the steps are fixed by the budget alone: validation follows the
    step where ``floor(points * step / budget_steps)`` grows, i.e. steps ``ceil(k * budget_steps /
    points)`` for k = 1..points (150 steps: 15, 30, ..., 150), and a resumed run validates at the
    same steps as an uninterrupted one (it starts counting from its restored step). For
    ``max_time`` the steps depend on the pace; under DDP rank 0 decides then, so all ranks
    validate together. Lightning still validates when a run stops early (Ctrl-C, max_time).

    Under ``max_time`` validation is paid for out of the budget, so ``max_share`` caps it: a point
    is skipped when validating once more (at the cost of the last validation, measured up to the
    next training step: scoring, samples, checkpoints) would take the time spent validating above
    ``max_share`` of the time used so far. A large model on a short budget then validates less
    often instead of spending its budget on validation (a 2-layer 512 LSTM on AG News, 3 minutes on
    one core: 10 validations of ~17 s each left it 62 training steps); cheap validations are never
    skipped, and the run's last step is always validated (Lightning does it when the time ends).
    Step and epoch budgets keep every point, at steps fixed by the budget. ``max_share: null``
    turns the cap off.

    An explicit ``trainer.val_check_interval`` replaces this schedule (``charlm.training.build``
    leaves this callback out then)."""

    NEVER = sys.maxsize

    def __init__(self, points: int = 10, max_share: float | None = 0.2):
        if isinstance(points, bool) or not isinstance(points, int) or points < 1:
            raise UserError(f"callbacks.validation.points={points!r} must be a whole number >= 1")
        if max_share is not None and (
            isinstance(max_share, bool) or not isinstance(max_share, (int, float)) or not 0 < max_share <= 1
        ):
            raise UserError(
                f"callbacks.validation.max_share={max_share!r} must be a fraction in (0, 1], or null for no cap"
            )
        self.points, self.max_share, self._reached = points, max_share, 0
        self._started: float | None = None  # when the validation in progress started
        self._spent, self._last = 0.0, None  # seconds validating so far, and the last validation's

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._started = time.monotonic()

    def _count_validation(self) -> None:
        if self._started is not None:
            self._last = time.monotonic() - self._started
            self._spent += self._last
            self._started = None

    def _affordable(self, trainer: L.Trainer) -> bool:
        """Whether one more validation keeps the time spent validating within ``max_share`` of the
        time used (only under ``max_time``; before the first one its cost is unknown, so yes)."""
        if self.max_share is None or self._last is None or not _timed(trainer):
            return True
        return self._spent + self._last <= self.max_share * budget_seconds(_timer(trainer))

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        # Lightning's own schedule off (public settings); each batch then says whether it validates
        trainer.check_val_every_n_epoch = None
        trainer.val_check_interval = self.NEVER

    def _crossed(self, trainer: L.Trainer) -> int:
        return math.floor(budget_progress(trainer) * self.points + 1e-9)

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._reached = self._crossed(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        self._count_validation()
        validate_after_this_batch(trainer, False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        crossed = self._crossed(trainer)
        validate = crossed > self._reached and self._affordable(trainer)
        if _timed(trainer) and trainer.world_size > 1:  # rank 0's clock decides for all ranks
            crossed, validate = trainer.strategy.broadcast((crossed, validate))
        if crossed > self._reached:
            self._reached = crossed  # a skipped point stays skipped: the next one is the next crossing
            if validate:
                validate_after_this_batch(trainer, True)

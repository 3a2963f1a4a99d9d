"""Callbacks: generated text, throughput and the training-sample score in TensorBoard, the learning rate
over the budget, graceful stops, the NaN check, and the surprisal image (the progress line and the
validation schedule are in ``charlm.progress``)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time

import lightning as L
import torch

from charlm.compat import spawns_ranks
from charlm.errors import UserError
from charlm.loggers import write_image, write_text, writers
from charlm.progress import budget_progress, budget_seconds, budget_steps, budget_timer, timer_duration
from charlm.sampling import check_sampling_args, default_prompt, generate, generate_text
from charlm.scoring import evaluate_stream, split_metrics

log = logging.getLogger(__name__)


class TextSamples(L.Callback):
    """At every validation, generate text from ``prompt`` at each temperature (0 = greedy)
    and write it to the logger as TensorBoard text (``samples/T=...``).

    ``prompt=None`` (the default) is ``charlm.sampling.default_prompt`` of the model's
    vocabulary: "today ", or a newline for a corpus without those characters (said in the log);
    a prompt given with characters outside the vocabulary is refused before training."""

    def __init__(
        self,
        prompt: str | None = None,
        length: int = 200,
        temperatures: tuple[float, ...] = (0.0, 0.5, 1.0),
        seed: int = 0,
    ):
        if isinstance(temperatures, (int, float)):  # callbacks.samples.temperatures=0.5: one temperature
            temperatures = [temperatures]
        self.prompt, self.length, self.temperatures, self.seed = prompt, length, list(temperatures), seed
        self._prompt = prompt  # the prompt used, known once the vocabulary is

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        try:  # fail before training, not at the first validation
            for temperature in self.temperatures:
                check_sampling_args(self.length, temperature, None, None, 1, self.seed)
            if self.prompt is None:
                self._prompt, note = default_prompt(pl_module.vocab)
                if note:
                    log.info("callbacks.samples.prompt: %s", note)
            generate(pl_module.net, pl_module.vocab, self._prompt, self.length)
        except UserError as err:
            raise UserError(f"callbacks.samples.{err}".replace(".temperature=", ".temperatures: ")) from None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not writers(trainer, "add_text"):
            return
        for temperature in self.temperatures:
            text = generate_text(
                pl_module.net, pl_module.vocab, self._prompt, self.length, temperature=temperature, seed=self.seed
            )[0]
            # Markdown renders newlines only as hard breaks; keep the text literal in a code block.
            write_text(trainer, f"samples/T={temperature:g}", f"    {text}".replace("\n", "\n    "))
        for topic, name in enumerate(getattr(pl_module, "topics", None) or []):  # a topic-conditioned model
            text = generate_text(
                pl_module.net,
                pl_module.vocab,
                self._prompt,
                self.length,
                temperature=self.temperatures[-1],
                seed=self.seed,
                topic=topic,
            )[0]
            write_text(trainer, f"samples/topic={name}", f"    {text}".replace("\n", "\n    "))


class CharThroughput(L.Callback):
    """Logs ``train/chars_per_sec`` every ``log_every_n_steps`` training steps.

    Written here instead of Lightning's ``ThroughputMonitor`` because that one calls
    ``torch.cuda.synchronize()`` after every step, stalling the GPU queue; this one reads
    the clock only when it logs, so over a logging interval the figure is exact enough
    without a sync. Time spent in validation is not counted."""

    def __init__(self):
        self._start, self._chars, self._paused = None, 0, 0.0
        self.total_chars, self.total_seconds = 0, 0.0  # over the fit (this process), for ``mean``

    def mean(self, trainer) -> float | None:
        """Characters per second over the whole fit (all ranks), validation left out; None before
        any step. ``train/chars_per_sec`` is the figure of the last logging interval only."""
        seconds = self.total_seconds + (time.perf_counter() - self._start - self._paused if self._start else 0.0)
        chars = self.total_chars + self._chars
        return chars / seconds * trainer.world_size if chars and seconds > 0 else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._chars += batch[0].numel()
        if trainer.global_step % trainer.log_every_n_steps == 0:
            elapsed = time.perf_counter() - self._start - self._paused
            pl_module.log("train/chars_per_sec", self._chars / max(elapsed, 1e-9) * trainer.world_size)
            self.total_chars, self.total_seconds = self.total_chars + self._chars, self.total_seconds + elapsed
            self._start, self._chars, self._paused = time.perf_counter(), 0, 0.0

    def on_train_end(self, trainer, pl_module) -> None:
        if self._start is not None:  # the interval since the last logging step, counted in ``mean``
            self.total_seconds += time.perf_counter() - self._start - self._paused
            self.total_chars += self._chars
            self._start, self._chars, self._paused = None, 0, 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._start is not None:
            self._paused += time.perf_counter() - self._validation_start


class TrainSampleScore(L.Callback):
    """At every validation, also scores a sample of the training text, the first ``chars``
    characters of the training split (at most as many as the val split holds), exactly as val is
    scored (``charlm.scoring``: ``data.eval_rows`` rows, state carried over ``data.eval_chunk``
    chunks) and logs ``train_eval/loss``, ``train_eval/bpc`` and ``train_eval/ppl``. Its metrics are
    its own set (``split_metrics``), so the training text cannot reach val's; the topic model's
    unconditioned twin is not scored here (it would cost a second forward for a number nobody reads).

    ``train/loss`` cannot stand beside ``val/bpc``: it is the mean over the current batch's random
    windows, each read from a zero state (and with dropout on), while val carries the state over
    its stream; the two differ even on the same text. Counted the same way, ``val/bpc -
    train_eval/bpc`` is the overfitting gap that ``charlm.summary`` reports. The cost is one
    forward pass over ``chars`` characters per validation (32,768: one chunk of 64 rows × 512)."""

    def __init__(self, chars: int = 32768):
        if isinstance(chars, bool) or not isinstance(chars, int) or chars < 2:
            raise UserError(f"callbacks.train_eval.chars={chars!r} must be a whole number >= 2")
        self.chars = chars
        self._stream = None
        self.metrics = split_metrics("train_eval")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        if trainer.sanity_checking or not hasattr(datamodule, "eval_stream"):
            return
        if self._stream is None:
            self._stream = datamodule.eval_stream("train", min(self.chars, datamodule.meta["characters"]["val"]))
        if not len(self._stream):
            return
        self.metrics.to(pl_module.device)  # compute() sums over DDP ranks, as for val
        with trainer.precision_plugin.val_step_context():
            values = evaluate_stream(
                pl_module.net,
                (self._stream[i] for i in range(len(self._stream))),
                self.metrics,
                device=pl_module.device,
            )
        # no "step" here: CharLM logs it in this same hook (after the callbacks), for these too
        pl_module.log_dict(values, sync_dist=True)


class RepeatFirstBatches(L.Callback):
    """``debug=overfit``: every training epoch starts again from the first batch of the first epoch, so
    that Lightning's ``trainer.overfit_batches`` (``N`` batches per epoch) trains on the same ``N``
    batches each time. charlm's training orders continue from where training stands (the data
    module's ``position``), whatever Lightning counts as an epoch, so without this each short epoch
    would bring the next ``N`` batches and nothing would be memorized."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        # before the loader's first batch of the epoch is drawn (Lightning iterates after this hook)
        datamodule = trainer.datamodule
        datamodule.load_state_dict({**datamodule.state_dict(), "position": 0})


class BudgetLRDecay(L.Callback):
    """Warms the learning rate up over ``warmup_steps`` steps, then decays it along a cosine to
    ``final_fraction`` of its base value over the rest of the run's budget.

    The budget is whichever of ``trainer.max_steps``, ``trainer.max_epochs`` and
    ``trainer.max_time`` ends first, so a time-limited run (``trainer.max_time``) still ends
    with a low learning rate, which a step-indexed torch scheduler cannot do since the number of
    steps is not known in advance. The cosine starts where the warm-up ends (as nanoGPT's does):
    a slow start then costs training time but never the peak learning rate. Under
    ``max_time`` the time at which the warm-up ended is kept in the checkpoint. Runs limited by
    steps or epochs get a schedule fixed by the step count, and resume exactly."""

    def __init__(self, warmup_steps: int = 100, final_fraction: float = 0.05):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise UserError(f"callbacks.lr_decay.warmup_steps={warmup_steps!r} must be a whole number >= 0")
        self.warmup_steps, self.final_fraction = warmup_steps, final_fraction
        self.warm_seconds: float | None = None  # budget time used when the warm-up ended (max_time runs)

    def decay_progress(self, trainer: L.Trainer) -> float:
        """Fraction of the budget left after the warm-up that is used, in [0, 1]; 0 during warm-up."""
        if trainer.global_step < self.warmup_steps:
            return 0.0
        timer = budget_timer(trainer)
        if timer is not None and self.warm_seconds is None:
            self.warm_seconds = budget_seconds(timer)
        starts = [self.warmup_steps / total] if (total := budget_steps(trainer)) else []
        if timer is not None:
            starts.append(self.warm_seconds / timer_duration(timer))
        start = min(max(starts, default=0.0), 1.0)
        return min(1.0, max(0.0, (budget_progress(trainer) - start) / (1 - start))) if start < 1 else 1.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        warmup = min(1.0, (trainer.global_step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        cosine = 0.5 * (1 + math.cos(math.pi * self.decay_progress(trainer)))
        decay = self.final_fraction + (1 - self.final_fraction) * cosine
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * warmup * decay

    def state_dict(self) -> dict:
        return {"warm_seconds": self.warm_seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.warm_seconds = state_dict.get("warm_seconds")


class ValidateLastStep(L.Callback):
    """Asks for a validation after the last training step of a ``trainer.max_steps`` run.

    Lightning validates when a run stops through ``trainer.should_stop`` (as ``max_time``
    and early stopping do) and at epoch ends, but not when ``max_steps`` ends it mid-epoch;
    then the best checkpoint would miss the final weights."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class GracefulStop(L.Callback):
    """Ctrl-C (SIGINT), SIGTERM or SIGUSR2 (submitit's warning before a SLURM time limit): finish
    the current step, validate and save the checkpoints (as at the end of a run), then stop;
    ``train.py`` exits with status 128 + the signal (130 for Ctrl-C) and prints how to resume. A
    second Ctrl-C stops at once.

    Lightning's own handling raises ``KeyboardInterrupt`` wherever the process is, possibly in
    the middle of an optimizer step, so a checkpoint written then would not resume exactly.

    Under DDP the ranks may receive the signal at different steps, or only one of them may (a
    ``kill`` of one process): every ``sync_every_n_steps`` steps they agree on it with one
    all-reduce, so all stop after the same step and none waits forever for the others; they
    agree once more when training ends, for a signal that came after the last comparison.

    Under ``ddp_spawn`` the ranks are worker processes and ``train.py`` waits in the main one:
    the ranks' stop reaches it in ``trainer.callback_metrics`` (what Lightning sends back from
    rank 0, key ``RESULT``), and ``watch_spawned_ranks`` keeps a Ctrl-C in the main process from
    becoming Lightning's ``KeyboardInterrupt``, which would kill the ranks and exit with status 1.

    The signal handlers are put back when training ends, and also when it ends in an exception
    (``on_exception``), so that afterwards Ctrl-C interrupts again (in a notebook, in tests)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
    RESULT = "graceful_stop/signal"

    def __init__(self, sync_every_n_steps: int = 10):
        self.signal: int | None = None
        self.sync_every_n_steps = sync_every_n_steps
        self._previous = {}
        self._installed_by: int | None = None

    def _handle(self, signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the second Ctrl-C interrupts at once
        if self.signal is not None:
            return  # the same stop again (e.g. a SIGTERM to the process group and one passed on by the main process)
        self.signal = signum
        log.warning(
            "received %s: stopping after this step and saving a checkpoint (Ctrl-C again to quit now)",
            signal.Signals(signum).name,
        )

    def _install(self, handler) -> None:
        if self._previous and self._installed_by == os.getpid():
            return  # already installed here (at the sanity check); a ddp_spawn rank gets the main process's copy
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, handler) for s in self.SIGNALS}
            self._installed_by = os.getpid()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module) -> None:
        # from the sanity check on, not only from training's start: a Ctrl-C there was Lightning's
        # KeyboardInterrupt (exit 1, a run folder without a checkpoint); now the run trains its first
        # step, saves it and stops as resumable. (Not earlier: Lightning installs its own SIGTERM
        # handler after on_fit_start and puts back, as it ends, whatever it found.)
        self._install(self._handle)

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._install(self._handle)  # no sanity check (num_sanity_val_steps=0, a resumed run)

    def _agree(self, trainer: L.Trainer, pl_module) -> None:
        """Every rank takes the signal any rank received (one all-reduce)."""
        received = torch.tensor(self.signal or 0, device=pl_module.device)
        self.signal = int(trainer.strategy.reduce(received, reduce_op="max")) or None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.world_size > 1:
            if trainer.global_step % self.sync_every_n_steps:
                return
            self._agree(trainer, pl_module)
        if self.signal is not None:
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            self._agree(trainer, pl_module)  # all ranks then stop here, or all go on to the test
        if self.signal is not None:
            trainer.callback_metrics[self.RESULT] = torch.tensor(self.signal)  # for the main process of ddp_spawn
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self._restore()

    def stopped_by(self, trainer: L.Trainer) -> int | None:
        """The signal that stopped the fit, received here or by the ranks (``RESULT``); ``None`` if none did."""
        result = trainer.callback_metrics.get(self.RESULT)
        return (int(result) if result is not None else None) or self.signal

    @contextlib.contextmanager
    def watch_spawned_ranks(self, trainer: L.Trainer):
        """Around ``trainer.fit`` in the main process of ``ddp_spawn`` (elsewhere it does nothing): a
        signal here is recorded, so that the run ends as stopped once the ranks have saved. SIGTERM
        and SIGUSR2 are passed on to the ranks (a ``kill`` of this process); Ctrl-C is not, since a
        terminal sends it to every process already. A second Ctrl-C stops at once."""
        if not spawns_ranks(trainer):
            yield
            return
        launcher = trainer.strategy.launcher

        def handle(signum, frame):
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.signal = self.signal or signum
            if signum != signal.SIGINT:
                for process in launcher.procs:
                    if process.is_alive() and process.pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(process.pid, signum)

        self._install(handle)
        try:
            yield
        finally:
            self._restore()


class NonFiniteLoss(UserError):
    """Training produced a NaN or infinite loss."""


class StopOnNonFiniteLoss(L.Callback):
    """Stops training with one clear line when the loss is NaN or infinite, before any
    checkpoint is written from the broken weights, so ``last.ckpt`` and ``best.ckpt`` keep the
    last good state.

    Reading a GPU tensor on the host waits for all the GPU work queued before it (a host-device
    sync); once per step that would idle the GPU between steps. So each step's loss is only copied
    into a buffer on its device, and the buffer is read (one sync) on logging steps (every
    ``trainer.log_every_n_steps``, where Lightning reads the logged loss anyway), when it is
    full, at the end of training, and before every checkpoint is written (``on_save_checkpoint``
    runs before the file is: raising there writes nothing) and before each validation. Each check reads the weights too,
    since a step can make them non-finite after a finite loss. Under DDP the ranks agree on the
    result with one all-reduce per check, so all stop together. (Lightning does not call this
    hook for ``save_weights_only`` checkpoints, which charlm's config does not use.)"""

    BUFFER = 1024  # losses kept between reads at most

    def __init__(self):
        self._losses: torch.Tensor | None = None
        self._steps: list[int] = []  # the global step after each buffered loss

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        if self._losses is None or self._losses.device != loss.device:
            self._losses = torch.empty(min(self.BUFFER, max(1, trainer.log_every_n_steps)), device=loss.device)
        self._losses[len(self._steps)].copy_(loss.detach())  # a device-side copy: the host does not wait
        self._steps.append(trainer.global_step)
        if trainer.global_step % trainer.log_every_n_steps == 0 or len(self._steps) == len(self._losses):
            self.check(trainer, pl_module)

    def check(self, trainer: L.Trainer, pl_module) -> None:
        """Reads the losses since the last check and the weights (one sync); raises ``NonFiniteLoss``
        if any is not finite."""
        losses, steps = (self._losses[: len(self._steps)] if self._steps else None), self._steps
        self._steps = []
        bad = (
            ~torch.isfinite(losses) if losses is not None else torch.zeros(1, dtype=torch.bool, device=pl_module.device)
        )
        bad_weights = ~torch.stack([torch.isfinite(p).all() for p in pl_module.parameters()]).all()
        flags = torch.stack([bad.any(), bad_weights]).int()
        if trainer.world_size > 1:
            flags = trainer.strategy.reduce(flags, reduce_op="max")
        bad_loss, bad_weights = flags.tolist()
        if not bad_loss and not bad_weights:
            return
        last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        keep = (
            f"the checkpoints keep the last good weights ({last or 'none saved yet'}); lower optimizer.lr or "
            "keep trainer.gradient_clip_val, then resume or retrain"
        )
        if bad.any():
            first = int(bad.nonzero()[0])
            raise NonFiniteLoss(f"the training loss is {losses[first].item()} at step {steps[first]}; {keep}")
        if bad_loss:
            raise NonFiniteLoss(
                f"the training loss is not finite on another rank by step {trainer.global_step}; {keep}"
            )
        raise NonFiniteLoss(f"the weights are not finite at step {trainer.global_step}; {keep}")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        self.check(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        # Validation syncs anyway; broken weights would otherwise first show as text samples that
        # cannot be drawn (a NaN distribution) instead of this callback's line.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.check(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self.check(trainer, pl_module)


class EndSpawnedProcessGroup(L.Callback):
    """Under ``ddp_spawn``: ends the worker processes' process group in step (a barrier, then
    ``destroy_process_group``) when a fit or test is over.

    Lightning leaves that to an ``atexit`` hook, which the spawned workers may not run; a worker
    that then exits while another still holds the group can abort ("terminate called without an
    active exception"), failing the run after its work was done (seen here about one run in five
    on the CPU with gloo)."""

    def teardown(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        spawned = spawns_ranks(trainer)
        if spawned and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


class SurprisalImage(L.Callback):
    """At every validation: the first ``chars`` characters of the validation split, each on a
    background coloured by the model's surprisal in bits (``charlm.page.surprisal_image``), as
    the TensorBoard image ``inspect/surprisal`` (IMAGES tab); its step slider shows which characters
    become predictable as training goes on. Rank 0 only.

    The paragraph is read from a zero state with one forward pass of ``chars`` characters; the
    drawing needs matplotlib, and without it the image is skipped with one info line. TensorBoard
    has images but no way to draw text coloured per character, hence this callback."""

    def __init__(self, chars: int = 600, columns: int = 48):
        self.chars, self.columns = chars, columns
        self._ids, self._skip = None, False

    def _paragraph(self, trainer: L.Trainer):
        """The validation split's first ``chars`` tokens (after a leading separator), or ``None``."""
        datamodule = trainer.datamodule
        cache = getattr(datamodule, "cache_path", None)
        if cache is None or not (cache / "val.npy").exists():
            return None
        import numpy as np

        from charlm.cache import map_tokens

        tokens = np.asarray(map_tokens(cache / "val.npy")[: self.chars + 1], dtype=np.int64)
        start = 1 if len(tokens) and tokens[0] == getattr(datamodule, "separator_id", None) else 0
        return torch.from_numpy(tokens[start : start + self.chars].copy())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if self._skip or trainer.sanity_checking or not writers(trainer, "add_image"):
            return
        if self._ids is None:
            self._ids = self._paragraph(trainer)
            if self._ids is None or len(self._ids) < 2:
                log.info("no validation text to draw the surprisal image from; skipped")
                self._skip = True
                return
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            log.info("matplotlib is not installed: the TensorBoard surprisal image is skipped (pip install matplotlib)")
            self._skip = True
            return
        import numpy as np

        from charlm.activations import surprisal
        from charlm.page import surprisal_image

        started = time.perf_counter()
        bits = surprisal(pl_module.net, self._ids.to(pl_module.device))
        chars = [pl_module.vocab.chars[i] for i in self._ids.tolist()]
        caption = (
            f"step {trainer.global_step}: mean {np.nanmean(bits):.3f} bits/char over the first "
            f"{len(chars)} characters of val"
        )
        image = surprisal_image(chars, bits, columns=self.columns, caption=caption)
        write_image(trainer, "inspect/surprisal", image, dataformats="HWC")
        log.debug("surprisal image: %.1f ms", (time.perf_counter() - started) * 1e3)

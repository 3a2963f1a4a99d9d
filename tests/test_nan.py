"""A NaN loss stops training with one clear line and leaves the good checkpoints alone."""

import math
import signal

import lightning as L
import pytest
import torch

from charlm.callbacks import NonFiniteLoss
from charlm.config import compose_config
from charlm.training import build

from conftest import tiny_job_settings


def tiny_job(tiny_text, tmp_path, *overrides):
    """A built job on the tiny corpus, without the progress bar."""
    cfg = compose_config(
        [
            *tiny_job_settings(tiny_text, tmp_path),
            "~callbacks.progress_bar",
            "+trainer.enable_progress_bar=false",
            *overrides,
        ],
        tmp_path,
    )
    return build(cfg)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoints(tiny_text, tmp_path):
    L.seed_everything(0)
    datamodule, model, trainer = tiny_job(
        tiny_text,
        tmp_path,
        "trainer.max_steps=100",
        "trainer.val_check_interval=10",
        "callbacks.last_checkpoint.every_n_train_steps=5",
    )
    real_step = model.training_step

    def poisoned_step(batch, batch_idx):
        loss = real_step(batch, batch_idx)
        return loss * math.nan if trainer.global_step == 23 else loss  # the 24th step

    model.training_step = poisoned_step
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 24; .*last\.ckpt"):
        trainer.fit(model, datamodule=datamodule)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    assert last["global_step"] == 20 and best["global_step"] == 20
    for checkpoint in (last, best):
        assert all(torch.isfinite(w).all() for w in checkpoint["state_dict"].values())


def test_signal_handlers_come_back_after_a_fit_that_raises(tiny_text, tmp_path):
    """GracefulStop takes Ctrl-C during training; after a fit that ends in an exception (here the
    NaN stop) Ctrl-C must interrupt again, not only set a flag."""
    datamodule, model, trainer = tiny_job(tiny_text, tmp_path, "trainer.max_steps=20")
    model.training_step = lambda batch, batch_idx: torch.tensor(math.nan, requires_grad=True)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    with pytest.raises(NonFiniteLoss):
        trainer.fit(model, datamodule=datamodule)
    assert {s: signal.getsignal(s) for s in before} == before


def test_ctrl_c_before_training_starts_stops_as_resumable(tiny_text, tmp_path):
    """A Ctrl-C in the first seconds (here during the sanity check) stops the run like one during
    training: a checkpoint saved after the first step and the signal recorded, not Lightning's
    KeyboardInterrupt and exit 1 with no checkpoint."""
    import os

    import lightning as L

    from charlm.callbacks import GracefulStop

    class CtrlCInSanityCheck(L.Callback):
        def on_sanity_check_start(self, trainer, pl_module):
            os.kill(os.getpid(), signal.SIGINT)

    datamodule, model, trainer = tiny_job(tiny_text, tmp_path, "trainer.max_steps=50", "~callbacks.samples")
    trainer.callbacks.append(CtrlCInSanityCheck())
    trainer.fit(model, datamodule=datamodule)
    (stop,) = [c for c in trainer.callbacks if isinstance(c, GracefulStop)]
    assert stop.stopped_by(trainer) == signal.SIGINT
    assert 1 <= trainer.global_step < 50
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == trainer.global_step

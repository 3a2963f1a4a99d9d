"""Text, images and figures for a run's loggers: each goes to every logger able to take it.

TensorBoard's ``SummaryWriter`` has ``add_text``, ``add_image`` and ``add_figure``; Lightning's
``CSVLogger`` writes scalars only. Calling ``trainer.logger.experiment.add_text`` directly made a run
with ``~logger.tensorboard`` and a CSV logger fail at its first validation; here a logger without the
method is passed over, and only rank 0 writes."""

from __future__ import annotations

import lightning as L


def writers(trainer: L.Trainer, method: str) -> list:
    """``method`` (e.g. ``"add_text"``) of every logger's experiment that has it; none off rank 0."""
    if not trainer.is_global_zero:
        return []
    return [getattr(logger.experiment, method) for logger in trainer.loggers if hasattr(logger.experiment, method)]


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

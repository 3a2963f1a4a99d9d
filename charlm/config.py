"""Hydra/OmegaConf glue shared by train.py and sample.py."""

from __future__ import annotations

import logging
import os

import torch
from omegaconf import OmegaConf


def auto_precision(accelerator: str) -> str:
    """bf16-mixed where training lands on a GPU that supports it, else full fp32."""
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def register_resolvers() -> None:
    """``${pid:}`` (unique run folders) and ``${auto_precision:accelerator}``."""
    if not OmegaConf.has_resolver("pid"):
        OmegaConf.register_new_resolver("pid", lambda: os.getpid(), use_cache=True)
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", auto_precision)


def route_lightning_logs() -> None:
    """Send Lightning's console messages through the root logger, so Hydra writes them to
    ``<run>/train.log`` too (Lightning installs its own handler when imported first)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True

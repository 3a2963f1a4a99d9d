"""Train a character-level RNN language model: python train.py [hydra overrides]."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from charlm.config import register_resolvers, route_lightning_logs
from charlm.errors import UserError, exit_on_user_error
from charlm.module import CharLM

log = logging.getLogger("charlm")
register_resolvers()


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the best checkpoint, and return the final metrics."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # the vocabulary sizes the model
    if cfg.optimizer.get("lr", 1) <= 0:
        raise UserError(f"optimizer.lr={cfg.optimizer.lr} must be > 0")
    model = CharLM(vocab=datamodule.vocab.chars, model=OmegaConf.to_container(cfg.model, resolve=True),
                   optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
                   scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True) or None)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    log.info("run folder: %s | %s, %d parameters, vocabulary %d", run_dir, cfg.model,
             sum(p.numel() for p in model.parameters()), len(datamodule.vocab))

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.test and not trainer.interrupted:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        log.info("test (%s): loss %.4f nats/char, %.4f bpc, perplexity %.3f", best or "last weights",
                 metrics["test/loss"], metrics["test/bpc"], metrics["test/ppl"])
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    route_lightning_logs()
    with exit_on_user_error(reraise=HydraConfig.get().mode == RunMode.MULTIRUN):
        metrics = train(cfg)
    return metrics.get("val/bpc", math.nan)


if __name__ == "__main__":
    main()

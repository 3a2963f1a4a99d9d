"""Train a character-level RNN language model: python train.py [hydra overrides]."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from charlm.config import (
    literal_prompt_overrides,
    quiet_known_noise,
    register_resolvers,
    route_lightning_logs,
    separate_rank_logs,
)
from charlm.errors import UserError, exit_on_user_error
from charlm.rundirs import removed_if_refused
from charlm.training import train

register_resolvers()
quiet_known_noise()  # here too: ddp_spawn's workers import this file, not run main()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    route_lightning_logs()
    separate_rank_logs()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    with exit_on_user_error(reraise=multirun), removed_if_refused(run_dir, keep=multirun or cfg.resume is not False):
        if cfg.resume and (run_dir / "metrics.json").exists():
            logging.getLogger("charlm").info("resume: %s already finished; skipped", run_dir)
            return json.loads((run_dir / "metrics.json").read_text()).get("best/val_bpc", math.nan)
        last = run_dir / "checkpoints" / "last.ckpt"
        if cfg.resume and cfg.ckpt_path is None and last.exists():
            cfg.ckpt_path = str(last)
        elif cfg.resume not in (True, False) and cfg.ckpt_path is None:
            raise UserError(
                f"resume={cfg.resume} has no checkpoints/last.ckpt to continue from; "
                "pass the folder of a run that saved one"
            )
        metrics = train(cfg, run_dir)
    return metrics.get("best/val_bpc", math.nan)  # what an Optuna search minimizes


if __name__ == "__main__":
    literal_prompt_overrides(sys.argv, "callbacks.samples.prompt")
    main()

"""Generate text from a trained checkpoint: python sample.py ckpt=PATH prompt="Today " length=300 temperature=0.8"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from charlm.errors import UserError, exit_on_user_error
from charlm.module import load_checkpoint
from charlm.sampling import check_sampling_args, generate


def newest_checkpoint(runs_dir: str) -> Path:
    """``checkpoints/best.ckpt`` of the most recently trained run under ``runs_dir``."""
    found = sorted(Path(runs_dir).rglob("checkpoints/best.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no checkpoints/best.ckpt under runs_dir={runs_dir}; train first or pass ckpt=PATH")
    return found[-1]


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        check_sampling_args(cfg.length, cfg.temperature, cfg.top_k, cfg.top_p, cfg.num_samples, cfg.seed)
        module = load_checkpoint(cfg.ckpt or newest_checkpoint(cfg.runs_dir))
        try:
            module = module.to(cfg.device)
        except (RuntimeError, AssertionError) as err:  # not a device name, or no such device here
            raise UserError(f"device={cfg.device} is not usable here ({str(err).splitlines()[0]}); use cpu, "
                            "or cuda on a machine with a GPU") from None
        steps = generate(module.net, module.vocab, cfg.prompt, cfg.length, temperature=cfg.temperature,
                         top_k=cfg.top_k, top_p=cfg.top_p, num_samples=cfg.num_samples, seed=cfg.seed)
        if cfg.num_samples == 1:  # stream the characters as they are made
            sys.stdout.write(cfg.prompt)
            for (char,) in steps:
                sys.stdout.write(char)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return
        samples = [cfg.prompt] * cfg.num_samples
        for step in steps:
            samples = [text + char for text, char in zip(samples, step)]
        for i, text in enumerate(samples):
            print(f"--- sample {i + 1}\n{text}")


if __name__ == "__main__":
    main()

"""Shared helpers of the benchmark scripts: config composition, data paths, tables."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from charlm.config import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
AG_NEWS_TEST = SHARED / "ag_news" / "test.csv"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"


def require(path: Path) -> Path:
    """Exit with one line when a shared data file is absent."""
    if not path.exists():
        sys.exit(f"error: this benchmark needs {path} (the shared data folder beside the checkout)")
    return path


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config train.py would run with ``overrides``, writing into ``output_dir``."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
    HydraConfig.instance().set_config(cfg)
    return cfg


def print_table(headers: list[str], rows: list[list]) -> None:
    """A Markdown table on stdout."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    sys.stdout.flush()


median = statistics.median

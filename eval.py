"""Score a checkpoint on a corpus split with the test's metrics: python eval.py ckpt=PATH split=test out=results.csv"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from charlm.config import command_line
from charlm.errors import exit_on_user_error
from charlm.evaluation import check_args, format_table, run, write_results


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        notes = []
        out = check_args(cfg)
        row = run(cfg, HydraConfig.get().overrides.task, notes)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(format_table(row))
        if out is not None:
            write_results(row, Path(out))
            print(f"wrote {out}")


if __name__ == "__main__":
    command_line(sys.argv, "python eval.py", "eval", "ckpt", "runs_dir", "out", "data.path")
    main()

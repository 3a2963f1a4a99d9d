"""A callback for tests that run train.py: it records the training windows each rank saw."""

from pathlib import Path

import lightning as L
import numpy as np


class RecordTrainingWindows(L.Callback):
    """Saves every training input window this rank trained on to ``<out_dir>/rank<N>.npy``."""

    def __init__(self, out_dir: str):
        self.out_dir, self.windows = Path(out_dir), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.windows.append(batch[0].cpu().numpy())

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        np.save(self.out_dir / f"rank{trainer.global_rank}.npy", np.concatenate(self.windows))

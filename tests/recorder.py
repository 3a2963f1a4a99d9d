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


class RecordLearningRates(L.Callback):
    """Saves this rank's learning rate at every step and its final weights to ``<out_dir>/lr_rank<N>.pt``."""

    def __init__(self, out_dir: str):
        self.out_dir, self.lrs = Path(out_dir), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"lrs": self.lrs, "weights": {k: v.cpu() for k, v in pl_module.state_dict().items()}},
            self.out_dir / f"lr_rank{trainer.global_rank}.pt",
        )

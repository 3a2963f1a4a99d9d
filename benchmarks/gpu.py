"""The GPU path measured: characters/s, GPU utilization, peak memory and step time of the project's
training loop per model size, batch size and precision; the host data path against windows cut on
the device; and held-out bpc after 2 minutes of ``experiment=gpu``. One command, under 8 minutes
on one GPU; on a machine without one it exits with one line. A third table puts the cells
(``--cells``: LSTM, GRU, minGRU, minLSTM) side by side at 3 layers of 512, batch 256, bf16.

    python benchmarks/gpu.py                    # the whole table (about 7 minutes)
    python benchmarks/gpu.py --seconds 1 --quality 0 --hidden 512 --layers 1   # a quick look

Each cell trains ``--seconds`` seconds after 5 warm-up steps on the shared AG News file (or
``--data``, e.g. a folder with the full train.csv and test.csv), through ``charlm.training.build``
as train.py does, with validation off. Step time is the timed window over its steps (one sync at
each end, none per step). GPU utilization is the mean of NVML samples every 0.1 s in the window
(pynvml, else nvidia-smi). Cells left when ``--budget`` seconds are spent print "skipped (time)".
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import lightning as L
import torch
from common import AG_NEWS_TEST, ROOT, print_table

from charlm.config import compose_config
from charlm.errors import UserError
from charlm.training import build


class Utilization(threading.Thread):
    """Samples the GPU's utilization (percent) every ``interval`` seconds until stopped."""

    def __init__(self, index: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.index, self.interval, self.samples, self.running = index, interval, [], True
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.read = lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
        except Exception:  # no pynvml: nvidia-smi, slower per sample but everywhere the driver is
            smi = shutil.which("nvidia-smi")
            query = [smi, f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            self.read = (
                (lambda: float(subprocess.run(query, capture_output=True, text=True).stdout.strip())) if smi else None
            )

    def run(self):
        while self.running and self.read is not None:
            try:
                self.samples.append(self.read())
            except Exception:
                self.read = None
            time.sleep(self.interval)

    def stop(self) -> str:
        self.running = False
        self.join(2)
        return f"{sum(self.samples) / len(self.samples):.0f}%" if self.samples else "n/a"


class Window(L.Callback):
    """Times ``seconds`` of training after ``warmup`` steps, then stops the fit."""

    def __init__(self, warmup: int, seconds: float, device: torch.device):
        self.warmup, self.seconds, self.device = warmup, seconds, device
        self.start = self.steps = self.chars = self.elapsed = self.sampler = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.sampler = Utilization(self.device.index or 0)
            self.sampler.start()
            self.start, self.steps, self.chars = time.perf_counter(), 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start is None:
            return
        self.steps += 1
        self.chars += batch[1].numel()
        if time.perf_counter() - self.start >= self.seconds:  # the host runs ahead; the sync below catches up
            torch.cuda.synchronize(self.device)
            self.elapsed = time.perf_counter() - self.start
            trainer.should_stop = True


def cell(
    data: list[str],
    hidden: int,
    layers: int,
    batch: int,
    precision: str,
    on_device: bool,
    seconds: float,
    model_cell: str = "lstm",
) -> list:
    """One row: characters/s, GPU utilization, peak memory, step time (or why there is none)."""
    overrides = [
        *data,
        f"model.cell={model_cell}",
        f"model.hidden_size={hidden}",
        f"model.layers={layers}",
        f"data.batch_size={batch}",
        f"trainer.precision={precision}",
        f"data.on_device={str(on_device).lower()}",
        *([] if on_device else ["data.num_workers=2", "data.pin_memory=true"]),
        "trainer.accelerator=gpu",
        "trainer.max_steps=1000000",
        "trainer.max_epochs=1000",
        "+trainer.limit_val_batches=0",
        "+trainer.num_sanity_val_steps=0",
        "test=false",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
        "~callbacks.samples",
    ]
    row = [hidden, layers, batch, precision, "device" if on_device else "host"]
    with tempfile.TemporaryDirectory() as out:
        try:
            cfg = compose_config(overrides, Path(out))
            L.seed_everything(0)
            datamodule, model, trainer = build(cfg)
            window = Window(5, seconds, torch.device("cuda", torch.cuda.current_device()))
            trainer.callbacks.append(window)
            trainer.fit(model, datamodule=datamodule)
        except UserError as err:
            return row + [f"fails: {str(err)[:80]}", "", "", ""]
        except torch.OutOfMemoryError:
            return row + ["out of memory", "", "", ""]
        finally:
            torch.cuda.empty_cache()
    if window.elapsed is None:
        return row + ["too few steps", "", "", ""]
    utilization = window.sampler.stop()
    peak = torch.cuda.max_memory_allocated() / 2**30
    return row + [
        f"{window.chars / window.elapsed:,.0f}",
        utilization,
        f"{peak:.2f} GiB",
        f"{window.elapsed / window.steps * 1e3:.1f} ms",
    ]


def quality(data: list[str], seconds: int) -> list:
    """Held-out bpc of ``experiment=gpu`` after ``seconds`` of training (train.py, its test split)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            str(ROOT / "train.py"),
            "experiment=gpu",
            *data,
            f"trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}",
            f"hydra.run.dir={out}",
        ]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            return [f"failed: {(result.stderr.strip().splitlines() or [''])[-1][:100]}"] + [""] * 4
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    return [
        seconds,
        f"{metrics['test/bpc']:.4f}",
        f"{metrics['best/val_bpc']:.4f}",
        metrics["steps"],
        f"{metrics.get('train/chars_per_sec', float('nan')):,.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell")
    parser.add_argument("--budget", type=float, default=330, help="seconds for the grid; later cells are skipped")
    parser.add_argument("--quality", type=int, default=120, help="seconds of experiment=gpu for the bpc row (0: none)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "mingru", "minlstm"], help="model.cell rows")
    parser.add_argument("--data", default=str(AG_NEWS_TEST), help="AG News CSV file or folder (train.csv, test.csv)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit(
            "error: benchmarks/gpu.py measures the GPU path and torch sees no CUDA GPU here "
            "(torch.cuda.is_available() is False); run it on a machine with one"
        )
    if not Path(args.data).exists():
        sys.exit(f"error: --data {args.data} does not exist; pass an AG News CSV file or folder")
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    data = [f"data.path={args.data}", "data.val_size=200", "data.test_size=600"]
    started = time.perf_counter()
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}", flush=True
    )

    headers = ["hidden", "layers", "batch", "precision", "data", "chars/s", "GPU util", "peak memory", "step time"]
    rows = []
    # Precision x batch first at each size: the question is which precision and batch size.
    for hidden in args.hidden:
        for layers in args.layers:
            for batch in args.batch:
                for precision in args.precision:
                    if time.perf_counter() - started > args.budget:
                        rows.append([hidden, layers, batch, precision, "device", "skipped (time)", "", "", ""])
                        continue
                    rows.append(cell(data, hidden, layers, batch, precision, True, args.seconds))
                    print(rows[-1], file=sys.stderr, flush=True)
    print()
    print_table(headers, rows)

    # Host path against windows on the device, where the data path weighs most: a small model.
    transfer = []
    for batch in (256, 1024):
        for on_device in (False, True):
            transfer.append(cell(data, 256, 1, batch, "bf16-mixed", on_device, args.seconds))
            print(transfer[-1], file=sys.stderr, flush=True)
    print()
    print_table(headers, transfer)

    # The cells side by side at one size (the minimal ones train with the log-space scan on a GPU)
    cells = []
    for name in args.cells:
        cells.append([name, *cell(data, 512, 3, 256, "bf16-mixed", True, args.seconds, name)])
        print(cells[-1], file=sys.stderr, flush=True)
    print()
    print_table(["cell", *headers], cells)

    if args.quality:
        print()
        print_table(
            ["experiment=gpu, seconds", "test bpc", "best val bpc", "steps", "chars/s"], [quality(data, args.quality)]
        )
    print(f"\n{time.perf_counter() - started:.0f} s in all", file=sys.stderr)


if __name__ == "__main__":
    main()

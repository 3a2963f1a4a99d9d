"""Resuming a killed run reproduces the uninterrupted run exactly (CPU, same seed)."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from conftest import ROOT, run_script


def settings(tiny_text, tmp_path):
    return ["data=text", f"data.path={tiny_text}", f"data.cache_dir={tmp_path / 'cache'}", "data.val_size=0.1",
            "data.test_size=0.1", "data.nchars=32", "data.stride=8", "data.batch_size=16", "model.hidden_size=48",
            "model.layers=2", "model.dropout=0.2", "trainer.max_steps=300", "trainer.val_check_interval=50",
            "callbacks.last_checkpoint.every_n_train_steps=10", "callbacks.samples.length=5"]


def last_step(path):
    try:
        return torch.load(path, weights_only=True)["global_step"]
    except Exception:  # not written yet, or being written
        return -1


def test_sigkilled_run_resumes_to_the_same_weights_and_metrics(tiny_text, tmp_path):
    overrides = settings(tiny_text, tmp_path)
    straight = run_script("train.py", *overrides, f"hydra.run.dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", *overrides, f"hydra.run.dir={killed_dir}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while last_step(last) < 80 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = last_step(last)
    assert 0 < killed_at < 300, "the kill did not land during training"
    assert torch.load(last, weights_only=True)["CharDataModule"]["batches"] > 0, "the kill landed on an epoch end"

    resumed = run_script("train.py", *overrides, f"hydra.run.dir={killed_dir}", f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["global_step"] == b["global_step"] == 300
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs after resuming from step {killed_at}"
    ma = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    mb = json.loads((killed_dir / "metrics.json").read_text())
    assert ma["val/bpc"] == mb["val/bpc"] and ma["test/bpc"] == mb["test/bpc"]

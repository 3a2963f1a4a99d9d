"""Resuming a killed run reproduces the uninterrupted run exactly (CPU, same seed)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
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


@pytest.fixture
def straight_run(tiny_text, tmp_path):
    """The uninterrupted run the resumed ones must reproduce."""
    straight = run_script("train.py", *settings(tiny_text, tmp_path), f"hydra.run.dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-2000:]
    return tmp_path / "straight"


def interrupt(overrides, run_dir, signum, after_step):
    """Start train.py, send ``signum`` once last.ckpt is past ``after_step``; its exit status."""
    proc = subprocess.Popen([sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while last_step(last) < after_step and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signum)
    return proc.wait(timeout=120)


def assert_same_run(straight, resumed):
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 300
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs after resuming"
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (straight, resumed))
    assert ma["val/bpc"] == mb["val/bpc"] and ma["test/bpc"] == mb["test/bpc"]


def test_sigkilled_run_resumes_mid_epoch_to_the_same_weights_and_metrics(tiny_text, tmp_path, straight_run):
    overrides, killed = settings(tiny_text, tmp_path), tmp_path / "killed"
    assert interrupt(overrides, killed, signal.SIGKILL, after_step=80) == -signal.SIGKILL
    last = killed / "checkpoints" / "last.ckpt"
    assert 0 < last_step(last) < 300, "the kill did not land during training"
    assert torch.load(last, weights_only=True)["CharDataModule"]["batches"] > 0, "the kill landed on an epoch end"

    resumed = run_script("train.py", *overrides, f"resume={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(straight_run, killed)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR2])
def test_interrupted_run_saves_exits_and_resumes_to_the_same_weights(tiny_text, tmp_path, straight_run, signum):
    overrides, stopped = settings(tiny_text, tmp_path), tmp_path / "stopped"
    assert interrupt(overrides, stopped, signum, after_step=60) == 128 + signum
    log = (stopped / "train.log").read_text()
    assert f"stopped by {signal.Signals(signum).name}" in log and f"resume={stopped}" in log
    assert 60 <= last_step(stopped / "checkpoints" / "last.ckpt") < 300

    resumed = run_script("train.py", *overrides, f"resume={stopped}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(straight_run, stopped)

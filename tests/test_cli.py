"""The real entry points, run as a user runs them, with tiny settings."""

import shlex

import pytest
import torch

from conftest import run_script

TINY = [
    "model.hidden_size=32",
    "model.embedding_dim=8",
    "data.nchars=32",
    "data.stride=32",
    "data.batch_size=16",
    "data.val_size=40",
    "data.test_size=40",
    "trainer.max_steps=24",
    "trainer.val_check_interval=12",
    "trainer.log_every_n_steps=4",
    "callbacks.samples.length=20",
]


@pytest.mark.slow
def test_train_then_sample_end_to_end(ag_news_test_csv, tmp_path):
    run = tmp_path / "run"
    result = run_script(
        "train.py",
        f"data.path={ag_news_test_csv}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run}",
        *TINY,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "test (" in log and "bpc" in log
    assert "`Trainer.fit` stopped: `max_steps=24` reached" in log  # Lightning's own messages reach the log
    console = result.stdout + result.stderr
    for noise in ("💡 Tip", "GPU available", "TPU available", "LeafSpec", "Total FLOPs", "smaller than the logging"):
        assert noise not in console and noise not in log
    # the console starts with two short lines; Lightning's notes and the full settings are in train.log only
    start = [line for line in result.stdout[: result.stdout.index("step ")].splitlines() if line.strip()]
    assert len(start) == 2 and len(start[0]) <= 80, start  # the second: the run folder's path as given
    assert start[0].startswith("lstm 1×32, ") and start[1] == f"run folder: {run}"
    for note in ("Seed set to", "settings: model {", "Restoring states", "Loaded model weights", "stopped: `max_steps"):
        assert note in log and note not in console, note
    # the run ends with what to do next, on the console and in train.log
    summary = log[log.index("finished: ") :].splitlines()
    assert summary[0].startswith(f"finished: {run} | best val bpc ") and ", test bpc " in summary[0]
    assert "\n".join(summary) in result.stdout
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in summary[1:]}
    assert lines["warning"].startswith("undertrained: 24 steps (< 100)")  # a run this short says so
    assert lines["tensorboard"] == f"tensorboard --logdir {run}"
    command = shlex.split(lines["sample"])
    # the default prompt (null) adapts to the model: the command leaves it out, sample.py picks "today "
    assert command[:2] == ["python", "sample.py"] and command[2] == f"ckpt={run / 'checkpoints' / 'best.ckpt'}"
    assert not any(arg.startswith("prompt=") for arg in command)
    suggested = run_script(*command[1:], "length=5", "seed=1")
    assert suggested.returncode == 0 and suggested.stdout.startswith("today "), suggested.stderr
    assert (run / "config.yaml").exists() and list(run.glob("events.out.tfevents.*"))
    best = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["hyper_parameters"]["model"]["hidden_size"] == 32
    assert len(checkpoint["hyper_parameters"]["vocab"]) == 84  # 82 AG News characters + separator + unknown

    sample = run_script("sample.py", f"ckpt={best}", "prompt=Today", "length=50", "temperature=0.8", "seed=5")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("Today") and len(sample.stdout.rstrip("\n")) >= 55
    again = run_script("sample.py", f"ckpt={best}", "prompt=Today", "length=50", "temperature=0.8", "seed=5")
    assert again.stdout == sample.stdout

    newest = run_script("sample.py", f"runs_dir={tmp_path}", "length=10", "temperature=0")
    assert newest.returncode == 0 and newest.stdout.startswith("today ")


@pytest.mark.slow
def test_runs_started_together_get_their_own_folders(tmp_path, tiny_text):
    import sys

    from conftest import ROOT, start_script

    # (a refused run leaves no folder: these two train, one step each)
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        "data=text",
        f"data.path={tiny_text}",
        "model.hidden_size=8",
        "data.nchars=16",
        "trainer.max_steps=1",
        "~callbacks.samples",
        "test=false",
    ]
    procs = [start_script(*args[1:], cwd=tmp_path) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    folders = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(folders) == 2 and all((f / "metrics.json").exists() for f in folders)

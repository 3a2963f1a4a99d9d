"""Data-parallel training on the CPU: two gloo processes started by train.py itself."""

import csv
import json
import os
import signal
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from charlm.data import CharDataModule
from charlm.module import load_checkpoint

from conftest import ROOT, run_script, start_script

pytestmark = pytest.mark.slow  # every test here starts train.py processes

NCHARS, BATCH = 32, 8


def random_text(path):
    """30,000 random letters, spaces and newlines: every training window is unique."""
    path.write_text("".join(np.random.default_rng(0).choice(list("abcdefghijklmnopqrstuvwxyz \n"), size=30_000)))
    return path


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A 2-rank DDP run of train.py on random text (so every window is unique), one epoch."""
    tmp = tmp_path_factory.mktemp("ddp")
    corpus = random_text(tmp / "corpus.txt")
    data = [
        "data=text",
        f"data.path={corpus}",
        f"data.cache_dir={tmp / 'cache'}",
        "data.val_size=3000",
        "data.test_size=3000",
        f"data.nchars={NCHARS}",
        f"data.stride={NCHARS}",
        f"data.batch_size={BATCH}",
        "data.eval_rows=5",
        "data.eval_chunk=64",
    ]
    result = run_script(
        ROOT / "train.py",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        *data,
        "trainer.max_epochs=1",
        "model.hidden_size=32",
        "model.embedding_dim=8",
        "trainer.log_every_n_steps=5",
        "callbacks.samples.length=20",
        "+callbacks.record._target_=tests.recorder.RecordTrainingWindows",
        f"+callbacks.record.out_dir={tmp / 'windows'}",
        cwd=tmp,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp / "outputs" / "runs").iterdir())
    assert len(runs) == 1  # the second rank works in the first one's folder
    dm = CharDataModule(
        corpus="text",
        path=str(corpus),
        cache_dir=str(tmp / "cache"),
        val_size=3000,
        test_size=3000,
        nchars=NCHARS,
        stride=NCHARS,
        batch_size=BATCH,
        eval_rows=5,
        eval_chunk=64,
    )
    dm.setup("fit")
    return tmp, runs[0], dm


def test_ranks_train_on_disjoint_shards_that_cover_the_epoch(ddp_run):
    tmp, run, dm = ddp_run
    tokens = np.load(dm.cache_path / "train.npy")
    index = {tokens[i * NCHARS : (i + 1) * NCHARS].tobytes(): i for i in range(len(dm.train_set))}
    assert len(index) == len(dm.train_set)  # random text: every window is unique, so each is identified
    seen = [[index[w.astype(np.uint8).tobytes()] for w in np.load(tmp / "windows" / f"rank{r}.npy")] for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) > 0
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == len(seen[0]) * 2 == len(dm.train_set) // (2 * BATCH) * 2 * BATCH


def test_metrics_reduced_across_ranks_equal_one_process_on_the_same_weights(ddp_run):
    tmp, run, dm = ddp_run
    metrics = json.loads((run / "metrics.json").read_text())
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    for stage, ckpt, step in (("val", "last", trainer.validate), ("test", "best", trainer.test)):
        module = load_checkpoint(run / "checkpoints" / f"{ckpt}.ckpt")
        step(module, datamodule=dm, verbose=False)
        single = float(trainer.callback_metrics[f"{stage}/bpc"])  # the test's: kept out of loggers, not metrics
        assert single == pytest.approx(metrics[f"{stage}/bpc"], rel=1e-5), stage


def test_checkpoints_logs_and_metrics_are_written_once(ddp_run):
    tmp, run, dm = ddp_run
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    writers = {p.name.split(".")[-2] for p in run.glob("events.out.tfevents.*")}  # ...<host>.<pid>.<n>
    assert len(writers) == 1  # one process wrote TensorBoard events: rank 0
    with open(run / "metrics.csv", newline="") as f:
        keys = [(row["step"], row["name"]) for row in csv.DictReader(f)]
    assert ("5", "train/loss") in keys and len(keys) == len(set(keys))  # and metrics.csv: rank 0 alone
    assert "test (" in (run / "train.log").read_text()
    config = (run / "config.yaml").read_text()
    assert "strategy: ddp" in config and "devices: 2" in config
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == len(dm.train_set) // (2 * BATCH)  # a step = one batch on each rank


def test_a_multirun_with_ddp_stops_before_training_with_one_line(tmp_path, tiny_text):
    result = run_script(
        ROOT / "train.py",
        "-m",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "data=text",
        f"data.path={tiny_text}",
        "model.hidden_size=16,32",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "use trainer.strategy=ddp_spawn for multirun" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()  # stopped before any folder or job


@pytest.mark.xdist_group("ddp spawn multirun")
def test_a_multirun_with_ddp_spawn_runs_every_job_on_two_ranks(tmp_path, tiny_text):
    result = run_script(
        ROOT / "train.py",
        "-m",
        "trainer=ddp",
        "trainer.strategy=ddp_spawn",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "data=text",
        f"data.path={tiny_text}",
        "data.val_size=2000",
        "data.test_size=2000",
        "data.nchars=32",
        "data.stride=32",
        "data.batch_size=8",
        "model.hidden_size=16,32",
        "trainer.max_steps=6",
        "callbacks.samples.length=10",
        "test=false",  # the test under ddp_spawn: the resumed run of the stopped-rank test below
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted((tmp_path / "outputs" / "sweeps").glob("*/*/metrics.json"))
    assert len(jobs) == 2 and not (tmp_path / "outputs" / "runs").exists()
    for job in jobs:
        metrics = json.loads(job.read_text())
        assert metrics["steps"] == 6 and metrics["best/val_bpc"] > 0
        checkpoint = torch.load(job.parent / "checkpoints" / "best.ckpt", weights_only=True)
        assert checkpoint["hyper_parameters"]["model"]["hidden_size"] in (16, 32)


@pytest.mark.xdist_group("ddp clock")
def test_ranks_share_one_clock_under_a_time_budget(tmp_path):
    """Under trainer.max_time the learning rate follows the clock; every rank reads rank 0's, so
    the ranks' learning rates are equal at every step and their weights stay identical."""
    corpus = random_text(tmp_path / "corpus.txt")
    result = run_script(
        ROOT / "train.py",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "data=text",
        f"data.path={corpus}",
        "data.val_size=3000",
        "data.test_size=3000",
        "data.nchars=32",
        "data.stride=32",
        "data.batch_size=8",
        "model.hidden_size=16",
        "model.embedding_dim=8",
        "trainer.max_time=00:00:00:04",
        "trainer.max_epochs=-1",
        "callbacks.lr_decay.warmup_steps=5",
        "~callbacks.samples",
        "~callbacks.surprisal_image",
        "test=false",
        "+callbacks.record._target_=tests.recorder.RecordLearningRates",
        f"+callbacks.record.out_dir={tmp_path / 'lr'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / "lr" / f"lr_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert len(ranks[0]["lrs"]) == len(ranks[1]["lrs"]) > 10
    assert ranks[0]["lrs"] == ranks[1]["lrs"]  # before: different at every step after the warm-up
    assert len(set(ranks[0]["lrs"])) > 10  # the schedule moved
    for name, weights in ranks[0]["weights"].items():
        assert torch.equal(weights, ranks[1]["weights"][name]), name


def stoppable(tmp_path) -> list[str]:
    """A 2-rank run on random text that saves last.ckpt every 7 steps, for the stop tests."""
    return [
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "data=text",
        f"data.path={random_text(tmp_path / 'c.txt')}",
        "data.val_size=3000",
        "data.test_size=3000",
        "data.nchars=32",
        "data.stride=32",
        "data.batch_size=8",
        "callbacks.last_checkpoint.every_n_train_steps=7",
        "callbacks.samples.length=10",
    ]


@pytest.mark.xdist_group("ddp signal")
def test_a_signal_to_one_rank_stops_both_after_the_same_step(tmp_path):
    """SIGTERM to rank 1 only: the ranks agree to stop, save, and exit; no rank waits forever."""
    run = tmp_path / "run"
    proc = start_script(
        ROOT / "train.py",
        *stoppable(tmp_path),
        "model.hidden_size=32",
        "trainer.max_epochs=1000",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        stderr=tmp_path / "stderr.txt",
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()[-2000:]
            time.sleep(0.2)
        (child,) = map(int, Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
        os.kill(child, signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    stopped = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert stopped % 10 == 0  # saved at the step where the ranks compared notes (periodic saves: every 7)
    for log in ("train.log", "train_ddp_process_1.log"):  # rank 0, and rank 1 in its own log
        assert f"stopped by SIGTERM at step {stopped}" in (run / log).read_text(), log


def spawned_ranks(pid):
    """The worker processes ``ddp_spawn`` started from ``pid``, rank 0 first (started in rank order)."""
    children = map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    return sorted(child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes())


@pytest.mark.parametrize(
    "how, signum",
    [
        pytest.param("rank 1", signal.SIGTERM, marks=pytest.mark.xdist_group("ddp spawn rank 1")),
        pytest.param("process group", signal.SIGINT, marks=pytest.mark.xdist_group("ddp spawn process group")),
        pytest.param("main process", signal.SIGTERM, marks=pytest.mark.xdist_group("ddp spawn main process")),
    ],
)
def test_a_stopped_ddp_spawn_run_exits_as_stopped_and_resumes(tmp_path, how, signum):
    """Under ddp_spawn the ranks are worker processes and train.py waits in the main one. A SIGTERM
    to rank 1 only, a terminal's Ctrl-C (SIGINT to the whole process group), or a SIGTERM to the
    main process only (passed on to the ranks) is a stop there too: exit status 128 + the signal
    with the resume line, no test and no metrics.json; resume= then continues the run (not
    "already finished; skipped"; run once, the stop being the same)."""
    run = tmp_path / "run"
    settings = [*stoppable(tmp_path), "trainer.strategy=ddp_spawn", "model.hidden_size=16"]
    proc = start_script(
        ROOT / "train.py",
        *settings,
        "trainer.max_steps=1000000",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        stderr=tmp_path / "stderr.txt",
        new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (run / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()[-2000:]
            time.sleep(0.2)
        if how == "rank 1":
            os.kill(spawned_ranks(proc.pid)[1], signum)
        elif how == "process group":
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        assert proc.wait(timeout=180) == 128 + signum, (tmp_path / "stderr.txt").read_text()[-2000:]
    finally:
        proc.kill()
    output, log = (tmp_path / "stderr.txt").read_text(), (run / "train.log").read_text()
    stopped = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert (
        f"stopped by {signal.Signals(signum).name} at step {stopped}; checkpoints saved. Continue with: python "
        f"train.py ... resume={run}" in log
    )
    assert "KeyboardInterrupt" not in output + log and "Traceback" not in output + log
    assert not (run / "metrics.json").exists() and "test (" not in log
    if how != "rank 1":
        return
    resumed = run_script(
        ROOT / "train.py", *settings, f"trainer.max_steps={stopped + 10}", f"resume={run}", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == stopped + 10 and metrics["test/bpc"] > 0  # tested under ddp_spawn too

"""A run stopped any way (a signal, SIGKILL, max_time, max_steps) and continued reproduces the
uninterrupted run exactly (CPU, same seed): the same final weights and val/test bpc.

Two groups of runs, each with one uninterrupted reference per module: validation once per epoch
(``trainer.val_check_interval=null``; a stop then lands in the middle of an epoch, between two
validations) with a constant learning rate (so a run can also be continued with a larger budget
and still match), and validation every 20 batches with the learning-rate decay over the budget."""

import json
import os
import signal
import time

import pytest
import torch

from conftest import run_script, start_script

pytestmark = pytest.mark.slow  # every test here starts train.py processes

STEPS, PER_EPOCH = 80, 48  # 48 batches an epoch: 779 windows of 32 every 16 characters, 16 a batch
STREAM_CHUNKS = 24  # data.order=streams: (12720 - 32) // (16 rows * 32) chunks an epoch
ENV = {"OMP_NUM_THREADS": "1"}  # a tiny model: one thread is as fast, and lets runs overlap
GROUPS = {
    "per_epoch": ["trainer.val_check_interval=null", "~callbacks.lr_decay"],
    "mid_epoch": ["trainer.val_check_interval=20"],
    # the state carried across batches must come back too
    "streams": ["trainer.val_check_interval=20", "data.order=streams"],
    # a minimal cell: its scan and its carried h come back the same (charlm.cells)
    "mingru_streams": ["trainer.val_check_interval=20", "data.order=streams", "model.cell=mingru"],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("".join(f"line {i:04d}: the quick brown fox jumps over the lazy dog.\n" for i in range(300)))
    return path


def settings(corpus, group, max_steps=STEPS):
    return [
        "data=text",
        f"data.path={corpus}",
        f"data.cache_dir={corpus.parent / 'cache'}",
        "data.val_size=0.1",
        "data.test_size=0.1",
        "data.nchars=32",
        "data.stride=16",
        "data.batch_size=16",
        "model.hidden_size=32",
        "model.layers=2",
        "model.dropout=0.2",
        f"trainer.max_steps={max_steps}",
        "callbacks.last_checkpoint.every_n_train_steps=10",
        "callbacks.samples.length=5",
        *GROUPS[group],
    ]


def start(overrides, run_dir):
    return start_script("train.py", *overrides, f"hydra.run.dir={run_dir}", env=ENV)


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
    """The uninterrupted run of a group, which the others must reproduce: ``straight(group)``, made the
    first time a test of the group asks (the groups' tests may run on different pytest-xdist workers)."""
    root, made = tmp_path_factory.mktemp("straight"), {}

    def run(group):
        if group not in made:
            result = run_script("train.py", *settings(corpus, group), f"hydra.run.dir={root / group}", env=ENV)
            assert result.returncode == 0, result.stderr[-2000:]
            made[group] = root / group
        return made[group]

    return run


def checkpoint(path):
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # not written yet, or being written
        return {"global_step": -1}


def interrupt(overrides, run_dir, signum, after_step):
    """Start train.py, send ``signum`` once last.ckpt is past ``after_step``; its exit status."""
    proc = start(overrides, run_dir)
    deadline = time.time() + 300
    while checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] < after_step and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint came"
        time.sleep(0.02)
    os.kill(proc.pid, signum)
    return proc.wait(timeout=300)


TIMED = ("fit_seconds", "train/chars_per_sec", "chars_per_sec")  # wall-clock figures, never the same twice
TEST = ("test/loss", "test/bpc", "test/ppl")


def logged_steps(run_dir, tags=("train/loss", "lr-AdamW")):
    """The steps at which each of ``tags`` was logged to TensorBoard (a step logged again after a
    resume counted once). Not validation's: a stop validates where it lands, and a SIGKILL can
    lose the last events written before the checkpoint it resumes from."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in set(tags) & set(accumulator.Tags()["scalars"]):
            steps.setdefault(tag, set()).update(e.step for e in accumulator.Scalars(tag))
    return {tag: sorted(found) for tag, found in steps.items()}


def assert_same_run(straight, resumed, test_too=True):
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == STEPS
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs after resuming"
    assert a["CharDataModule"] == b["CharDataModule"]
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (straight, resumed))
    assert ma["steps"] == mb["steps"] == STEPS
    # every metric the weights decide is the same (the test too, but not after continuing in
    # another folder, which starts its own best checkpoint), and logged at the same steps
    same = [key for key in ma if key not in TIMED and (test_too or key not in TEST)]
    assert {key: mb.get(key) for key in same} == {key: ma[key] for key in same}
    assert logged_steps(resumed) == logged_steps(straight)


def stopped_mid_epoch(run_dir, per_epoch=PER_EPOCH):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < state["global_step"] < STEPS, "the stop did not land during training"
    if per_epoch == STREAM_CHUNKS:
        assert state["CharDataModule"]["batches"] == state["global_step"] % STREAM_CHUNKS
        assert state["train_state"][0].shape == (1, 2, 16, 32)  # ranks, layers, rows, hidden
    return state["global_step"] % per_epoch != 0


def case(group, signum):
    return pytest.param(group, signum, marks=pytest.mark.xdist_group(f"resume {group}"))


# The graceful signals (SIGINT, SIGTERM, SIGUSR2) share one handler (GracefulStop) and its checkpoint; a
# SIGKILL resumes from the last periodic checkpoint instead. Each group: one graceful stop, and a SIGKILL
# where the state carried between batches differs (the constant-lr epoch order, the streams' state).
@pytest.mark.parametrize(
    "group, signum",
    [
        case("per_epoch", signal.SIGINT),
        case("per_epoch", signal.SIGKILL),
        case("mid_epoch", signal.SIGUSR2),
        case("streams", signal.SIGTERM),
        case("streams", signal.SIGKILL),
        case("mingru_streams", signal.SIGTERM),
    ],
)
def test_stopped_run_resumes_to_the_same_weights_and_metrics(corpus, tmp_path, straight, group, signum):
    overrides, stopped = settings(corpus, group), tmp_path / "stopped"
    # SIGKILL: after the checkpoint of step 20 or 30 (mid-epoch); a graceful stop checkpoints where it lands
    status = interrupt(overrides, stopped, signum, after_step=20 if signum == signal.SIGKILL else 10)
    assert status == (-signum if signum == signal.SIGKILL else 128 + signum)
    assert stopped_mid_epoch(stopped, STREAM_CHUNKS if "streams" in group else PER_EPOCH), (
        "the stop landed on an epoch end"
    )
    if signum != signal.SIGKILL:
        log = (stopped / "train.log").read_text()
        assert f"stopped by {signal.Signals(signum).name}" in log and f"resume={stopped}" in log

    seconds_before = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)["fit_seconds"]
    started = time.monotonic()
    resumed = run_script("train.py", *overrides, f"resume={stopped}", env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(straight(group), stopped)
    # the wall time counts the stopped segment too (up to its checkpoint), not only the last one
    seconds = json.loads((stopped / "metrics.json").read_text())["fit_seconds"]
    assert 0 < seconds_before < seconds < seconds_before + time.monotonic() - started


@pytest.mark.xdist_group("resume per_epoch")
def test_run_ended_by_its_budget_continues_with_a_larger_one_to_the_same_weights(corpus, tmp_path, straight):
    """A finished run continued in a new folder (``ckpt_path=`` its last.ckpt) with a larger
    budget trains on exactly as a run given that budget at once (constant learning rate)."""
    overrides, first = settings(corpus, "per_epoch"), tmp_path / "first"
    ended = run_script("train.py", *overrides, "trainer.max_steps=30", f"hydra.run.dir={first}", env=ENV)
    assert ended.returncode == 0, ended.stderr[-2000:]
    assert stopped_mid_epoch(first)

    more = run_script(
        "train.py",
        *overrides,
        f"ckpt_path={first}/checkpoints/last.ckpt",
        f"hydra.run.dir={tmp_path / 'more'}",
        env=ENV,
    )
    assert more.returncode == 0, more.stderr[-2000:]
    assert str(first) not in (tmp_path / "more" / "train.log").read_text().splitlines()[-1]  # tests its own best
    assert_same_run(straight("per_epoch"), tmp_path / "more", test_too=False)


@pytest.mark.xdist_group("resume per_epoch")
def test_continuing_a_checkpoint_already_at_the_budget_is_refused(corpus, tmp_path, straight):
    last = straight("per_epoch") / "checkpoints" / "last.ckpt"
    result = run_script(
        "train.py", *settings(corpus, "per_epoch"), f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'again'}", env=ENV
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: ckpt_path={last} is at step {STEPS}, already at trainer.max_steps={STEPS}: nothing to train; "
        f"raise trainer.max_steps (e.g. trainer.max_steps={2 * STEPS}) to continue it"
    ]
    assert not (tmp_path / "again" / "checkpoints").exists()

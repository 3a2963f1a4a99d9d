from __future__ import annotations

import csv
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist each worker, and every process it starts (train.py, DDP ranks), gets its share of the
# cores: two workers each running two-thread torch on two cores would slow both several-fold.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    THREADS = str(max(1, (os.cpu_count() or 1) // WORKERS))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = THREADS
    import torch

    torch.set_num_threads(int(THREADS))
SHARED = ROOT.parent / "shared" / "data"
# The environment of the entry points the tests run, as a user's shell has it: taken before any test,
# since in-process training adds Lightning's and torch's variables (PL_GLOBAL_SEED, ...) to os.environ.
BASE_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="session")  # session: module-scoped sweeps in test_sweep.py use it too
def ag_news_test_csv() -> Path:
    path = SHARED / "ag_news" / "test.csv"
    if not path.exists():
        pytest.skip(f"needs the shared AG News test split at {path} (../shared/data beside the checkout)")
    return path


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    """A small AG News-format CSV: 60 articles with distinct, recognisable text."""
    path = tmp_path / "tiny.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        for i in range(60):
            writer.writerow([str(i % 4 + 1), f"Title {i:03d}", f"article number {i:03d} says hello world " * 3])
    return path


@pytest.fixture
def tiny_text(tmp_path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text("".join(f"line {i:04d}: the quick brown fox jumps over the lazy dog.\n" for i in range(300)))
    return path


# Has every character of the documented prompts ("Today ", the default "today ", Hangul): the README's
# sampling commands run on tiny_run's model.
TINY_TEXT = "".join(
    f"Today {i:03d}: today the quick brown fox jumps over the lazy dog. 순환 신경망은 글자를 읽는다.\n"
    for i in range(300)
)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder (config.yaml, checkpoints/best.ckpt, metrics.json) of a tiny model trained in this
    process on a small text for a few steps, shared by the tests that need a real trained checkpoint
    (eval.py's, the README's sampling commands)."""
    from charlm.config import compose_config
    from charlm.training import train

    folder = tmp_path_factory.mktemp("tiny_run")
    text = folder / "tiny.txt"
    text.write_text(TINY_TEXT, encoding="utf-8")
    run_dir = folder / "outputs" / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    cfg = compose_config(
        [
            "data=text",
            f"data.path={text}",
            f"data.cache_dir={folder}/cache",
            "data.nchars=32",
            "data.eval_rows=8",
            "data.eval_chunk=64",
            "model.hidden_size=16",
            "model.embedding_dim=4",
            "trainer.max_steps=6",
            "trainer.val_check_interval=3",
            "trainer.max_time=null",
            "trainer.accelerator=cpu",
            "callbacks.samples.length=10",
            "callbacks.surprisal_image.chars=60",
        ],
        run_dir,
    )
    train(cfg, run_dir)
    return run_dir


def tiny_job_settings(tiny_text, tmp_path) -> list[str]:
    """The overrides of a job on ``tiny_text`` that trains in seconds, for in-process tests."""
    return [
        "data=text",
        f"data.path={tiny_text}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.nchars=32",
        "data.stride=8",
        "data.batch_size=16",
        "model.hidden_size=16",
        "callbacks.samples.length=5",
    ]


def run_script(*args, cwd=ROOT, timeout=300, env=None, fresh=False) -> subprocess.CompletedProcess:
    """Run one of the project's entry points as a user would: ``python *args`` in ``cwd``, forked from
    this worker's zygote (tests/zygote.py: the libraries already imported) or, where the environment
    asks for it (or ``fresh``), as a fresh process."""
    full_env = {**BASE_ENV, **(env or {})}
    args = [str(a) for a in args]
    zygote = None if fresh else Zygote.get()
    if zygote is not None and zygote.serves(full_env):
        return zygote.run(args, Path(cwd), full_env, timeout)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


class Zygote:
    """This worker's tests/zygote.py process and the runs it forked (see there). One per process,
    started on first use; ``CHARLM_TEST_FRESH=1`` turns it off (every run a fresh process)."""

    _instance: Zygote | None = None
    _started = False

    @classmethod
    def get(cls) -> Zygote | None:
        if not cls._started:
            cls._started = True
            if os.environ.get("CHARLM_TEST_FRESH") != "1":
                cls._instance = cls()
        return cls._instance

    def __init__(self):
        import json
        import tempfile
        import threading

        self.json, self.lock, self.waiting = json, threading.Lock(), {}
        self.env = BASE_ENV
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "zygote.py")],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        hello = json.loads(self.process.stdout.readline())
        self.env, self.preloaded = hello["env"], set(hello["modules"])
        self.files = Path(tempfile.mkdtemp(prefix="zygote-"))
        self.count = 0
        threading.Thread(target=self.read, daemon=True).start()

    def serves(self, env: dict) -> bool:
        """Whether a forked child can have ``env``: it differs from the zygote's own only in keys read
        after start-up (and the Hub's settings only while nothing of the Hub is imported)."""
        from zygote import ONLY_AT_RUN_TIME

        # PYTEST_CURRENT_TEST changes with every test; pytest's variables are read by pytest only
        differ = {
            k for k in env.keys() | self.env.keys() if env.get(k) != self.env.get(k) and not k.startswith("PYTEST_")
        }
        late = set(ONLY_AT_RUN_TIME) - (
            {k for k in ONLY_AT_RUN_TIME if k.startswith("HF_")} if self.preloaded else set()
        )
        return differ <= late

    def read(self):
        for line in self.process.stdout:
            message = self.json.loads(line)
            with self.lock:
                slot = self.waiting[message["id"]]
            slot.update(message)
            if "status" in message:
                slot["done"].set()
            else:
                slot["forked"].set()

    def start(self, args, cwd, env, stdout=os.devnull, stderr=os.devnull, new_session=False) -> Forked:
        import threading

        with self.lock:
            self.count += 1
            n = self.count
            slot = self.waiting[n] = {"done": threading.Event(), "forked": threading.Event()}
            request = {
                "id": n,
                "argv": [str(a) for a in args],
                "cwd": str(cwd),
                "env": env,
                "stdout": str(stdout),
                "stderr": str(stderr),
                "new_session": new_session,
            }
            self.process.stdin.write(self.json.dumps(request) + "\n")
            self.process.stdin.flush()
        if not slot["forked"].wait(60):
            raise RuntimeError("the zygote forked no child in 60 s")
        return Forked(args, slot)

    def run(self, args, cwd, env, timeout) -> subprocess.CompletedProcess:
        name = os.urandom(8).hex()
        out, err = self.files / f"{name}.out", self.files / f"{name}.err"
        child = self.start(args, cwd, env, out, err)
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)
            raise subprocess.TimeoutExpired(
                [sys.executable, *args], timeout, out.read_text(), err.read_text()
            ) from None
        result = subprocess.CompletedProcess([sys.executable, *args], code, out.read_text(), err.read_text())
        out.unlink(), err.unlink()
        return result


class Forked:
    """A child of the zygote as a ``subprocess.Popen`` is used here: ``pid``, ``poll()``, ``wait()``,
    ``kill()``, ``returncode`` (negative: the signal that ended it)."""

    def __init__(self, args, slot):
        self.args, self.slot, self.pid, self.returncode = args, slot, slot["pid"], None

    def poll(self):
        if self.returncode is None and self.slot["done"].is_set():
            self.returncode = os.waitstatus_to_exitcode(self.slot["status"])
        return self.returncode

    def wait(self, timeout=None):
        if not self.slot["done"].wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.poll()

    def kill(self):
        if self.poll() is None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass


def start_script(*args, cwd=ROOT, env=None, stdout=os.devnull, stderr=os.devnull, new_session=False):
    """``run_script``'s counterpart for a run the test signals or watches: started, not awaited; a
    ``subprocess.Popen`` or the zygote's ``Forked`` child. ``stdout``/``stderr``: file paths."""
    full_env = {**BASE_ENV, **(env or {})}
    zygote = Zygote.get()
    if zygote is not None and zygote.serves(full_env):
        return zygote.start(args, Path(cwd), full_env, stdout, stderr, new_session)
    with open(stdout, "w") as out, open(stderr, "w") as err:
        return subprocess.Popen(
            [sys.executable, *map(str, args)],
            cwd=cwd,
            env=full_env,
            stdout=out,
            stderr=err,
            start_new_session=new_session,
        )


def started_together(target, path, cache_dir, built_log, n: int = 3) -> list[int]:
    """``target(path, cache_dir, barrier, built_log)`` in ``n`` forked processes that pass one barrier
    together (to race for a cache); their exit codes."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(n)
    workers = [context.Process(target=target, args=(path, cache_dir, barrier, built_log)) for _ in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    return [w.exitcode for w in workers]


# Fixtures that run the real entry points (train.py, sweeps, DDP): every test using one is in the slow
# lane. The fast lane, pytest -m "not slow", is the rest: in-process tests of seconds.
SLOW_FIXTURES = {"cell_runs", "cli", "csv_sweep", "ddp_run", "ran", "straight", "sweep", "seeded", "trained"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        # pytest-xdist (--dist loadgroup) runs a group on one worker, so a module-scoped run is made once: the
        # tests of a slow fixture are a group, any other slow test is one of its own (it runs beside the
        # rest), and the fast tests of a file are a group
        if item.get_closest_marker("xdist_group") is None:
            shared = sorted(SLOW_FIXTURES & set(getattr(item, "fixturenames", ())))
            alone = not shared and item.get_closest_marker("slow") is not None
            item.add_marker(
                pytest.mark.xdist_group(item.nodeid if alone else " ".join([item.module.__name__, *shared]))
            )

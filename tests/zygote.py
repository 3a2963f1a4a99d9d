"""A process that has imported torch, Lightning and Hydra once and forks a child per entry-point run.

The tests run ``train.py``, ``sample.py`` ... as a user does, about a hundred times; each fresh Python spends
seconds importing the same libraries before it reads its first argument. A child forked from here starts
with those imports done and then runs the entry point exactly as ``python script args`` would: as
``__main__``, with its ``sys.argv``, ``sys.path[0]``, working directory, environment, stdin from /dev/null,
stdout and stderr to files, its own exit status and the interpreter's normal shutdown (atexit). Only
third-party libraries are preloaded, never charlm (an entry point imports what it imports, as in a fresh
process). ``conftest.run_script`` sends a request only when the run's environment differs from this
process's in nothing read at import time; else it starts a fresh process (``CHARLM_TEST_FRESH=1``: always).

Protocol, one JSON object a line: in ``{"id", "argv", "cwd", "env", "stdout", "stderr", "new_session"}``; out
``{"id", "pid"}`` once forked, then ``{"id", "status"}`` (``os.waitpid``'s status) when the child ends.
"""

from __future__ import annotations

import gc
import json
import os
import select
import sys

PRELOAD = ("torch", "lightning", "lightning.pytorch", "hydra", "hydra.core.hydra_config", "omegaconf", "torchmetrics")
# Read from the environment at import time by what is preloaded: a run that sets one of these differently
# gets a fresh process. The thread counts are the exception: the child applies them (torch.set_num_threads).
THREAD_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
ONLY_AT_RUN_TIME = ("PYTHONPATH", "PYTHONUNBUFFERED", "HF_HOME", "HF_ENDPOINT", "HF_HUB_OFFLINE", *THREAD_KEYS)


def serve() -> dict:
    """Fork a child per request; report its pid and, later, its status. Returns only in a child."""
    running: dict[int, int] = {}  # pid -> request id
    stdin = sys.stdin.buffer
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.02)
        while running:  # reap the children that ended
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                break
            reply({"id": running.pop(pid), "status": status})
        if not ready:
            continue
        line = stdin.readline()
        if not line:  # the test process is gone
            os._exit(0)
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            return request
        running[pid] = request["id"]
        reply({"id": request["id"], "pid": pid})


def reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run(request: dict) -> None:
    """In the child: become ``python *argv`` in ``cwd`` with ``env``."""
    import multiprocessing.process
    import runpy

    if request.get("new_session"):
        os.setsid()  # as subprocess's start_new_session: its own process group, for a Ctrl-C to all of it
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update({**ADDED, **request["env"]})
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False, buffering=1 if unbuffered else -1, encoding="utf-8", errors="strict")
    sys.stderr = open(2, "w", closefd=False, buffering=1, encoding="utf-8", errors="backslashreplace")
    if unbuffered:
        sys.stdout.reconfigure(write_through=True)
    sys.stderr.reconfigure(write_through=True)
    threads = os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    # multiprocessing's spawn (ddp_spawn ranks, joblib's workers) finds a relative main script from here
    multiprocessing.process.ORIGINAL_DIR = os.getcwd()
    argv = request["argv"]
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if argv[0] == "-m":
        sys.path[0:1] = [os.getcwd(), *extra]
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.path[0:1] = [os.path.dirname(os.path.abspath(argv[0])), *extra]
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    before = dict(os.environ)
    for name in PRELOAD:
        __import__(name)
    # what the imports put into the environment (as they would in a fresh process): kept in the children
    ADDED = {k: v for k, v in os.environ.items() if before.get(k) != v}
    hub = sorted(m for m in ("huggingface_hub", "datasets") if m in sys.modules)
    gc.freeze()  # the preloaded objects: out of the children's collections (which would copy their pages)
    reply({"ready": True, "env": before, "modules": hub})
    run(serve())

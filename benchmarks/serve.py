"""The playground's speed and memory: ``python -m charlm.serve`` started as a user starts it, then the time
to the first streamed character, the characters per second streamed (against ``charlm.sampling.generate``
alone in this process, the same model and settings), and the server's resident memory (RSS) idle with its
one model loaded: after start-up, and again after the streams.

    python benchmarks/serve.py [--ckpt PATH] [--length 2000] [--rounds 5]

Without ``--ckpt`` the model is one built with the default settings (conf/model/lstm.yaml: LSTM 1x384,
embedding 16) and AG News' printable characters, untrained: speed does not depend on the weights
(benchmarks/generation.py does the same). Linux only (RSS from /proc).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import Request, urlopen

import torch
from common import ROOT, median, print_table
from omegaconf import OmegaConf

from charlm.module import CharLM, load_checkpoint
from charlm.sampling import generate
from charlm.vocabulary import Vocabulary


def default_checkpoint(folder: Path) -> Path:
    model = dict(OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "lstm.yaml")))
    model.update(topics=0)
    vocab = Vocabulary.from_text("\n" + "".join(chr(c) for c in range(32, 127))).chars
    torch.manual_seed(0)
    module = CharLM(vocab=vocab, model=model)
    path = folder / "runs" / "default" / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def stream(url: str, body: dict) -> tuple[float, float, int]:
    """Seconds to the first text event, seconds from it to the end, characters received."""
    request = Request(url + "api/generate", json.dumps(body).encode(), {"Content-Type": "application/json"})
    start = time.perf_counter()
    first, chars, name = None, 0, None
    with urlopen(request, timeout=600) as response:
        for raw in response:
            line = raw.decode("utf-8")
            if line.startswith("event: "):
                name = line[7:].strip()
            elif line.startswith("data: ") and name == "text":
                chars += len(json.loads(line[6:]))
                first = first or time.perf_counter()
    return first - start, time.perf_counter() - first, chars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="a checkpoint; default: the default model, untrained (see above)")
    parser.add_argument("--length", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    ckpt = Path(args.ckpt) if args.ckpt else default_checkpoint(folder)
    what = args.ckpt or "default settings (LSTM 1x384, embedding 16, 96 characters and the unknown one), untrained"
    server = subprocess.Popen(
        [sys.executable, "-m", "charlm.serve", f"ckpt={ckpt}", f"runs_dir={folder}", "port=0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        line = server.stdout.readline()
        url = line.split("open ", 1)[1].split()[0]
        time.sleep(1)
        idle_start = rss_mb(server.pid)
        body = {"ckpt": str(ckpt), "prompt": "today ", "temperature": 0.8, "seed": 0}
        stream(url, {**body, "length": 50})  # warm-up
        firsts, rates = [], []
        for _ in range(args.rounds):
            first, _, _ = stream(url, {**body, "length": 1})
            firsts.append(first)
            _, rest, chars = stream(url, {**body, "length": args.length})
            rates.append((chars - 1) / rest)
        time.sleep(1)
        idle_after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    module = load_checkpoint(ckpt)
    direct = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in generate(module.net, module.vocab, "today ", args.length, temperature=0.8, seed=0):
            pass
        direct.append(args.length / (time.perf_counter() - start))
    print(f"model: {what}; {args.rounds} rounds, medians; torch threads {torch.get_num_threads()}")
    print_table(
        ["measure", "value"],
        [
            ["time to the first streamed character (request sent to first event)", f"{median(firsts) * 1000:.1f} ms"],
            [f"characters/s streamed ({args.length} characters a request)", f"{median(rates):,.0f}"],
            ["characters/s of charlm.sampling.generate alone (this process)", f"{median(direct):,.0f}"],
            ["server RSS idle, one model loaded, after start-up", f"{idle_start:.0f} MB"],
            ["server RSS idle, after the streams", f"{idle_after:.0f} MB"],
        ],
    )


if __name__ == "__main__":
    main()

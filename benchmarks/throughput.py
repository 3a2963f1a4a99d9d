"""Training throughput on this machine, in characters per second (medians of interleaved rounds).

Compares, on the same model and the same batches:
  - the project's training loop (Lightning, with the default callbacks and logger of train.py),
  - a minimal plain PyTorch loop (forward, cross-entropy, backward, clip, the configured optimizer's step),
and the lesson's approach: one batch per article, built by a Python loop over every window; and
each against the machine's fp32 matmul rate (the model's matmul FLOPs per character, forward +
backward = 3 x forward, times characters/s).

    python benchmarks/throughput.py [--rounds 5] [--seconds 8]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torch.utils.mkldnn
from common import AG_NEWS_TEST, median, print_table, require

from charlm.config import compose_config
from charlm.model import CharRNN, matmul_flops_per_char
from charlm.sources import read_ag_news_csv
from charlm.training import build


class StepClock(L.Callback):
    """Times the training steps after ``warmup`` steps."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.chars = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start is not None:
            self.chars += batch[1].numel()
            self.end = time.perf_counter()


def overrides_for(model_overrides: list[str], steps: int) -> list[str]:
    return [
        f"data.path={AG_NEWS_TEST}",
        "data.val_size=200",
        "data.test_size=600",
        *model_overrides,
        f"trainer.max_steps={steps}",
        "+trainer.limit_val_batches=0",
        "+trainer.num_sanity_val_steps=0",
        "test=false",
    ]


def project_loop(model_overrides: list[str], steps: int, warmup: int = 10) -> float:
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config(overrides_for(model_overrides, steps + warmup), Path(out))
        L.seed_everything(cfg.seed, workers=True)
        datamodule, model, trainer = build(cfg)
        clock = StepClock(warmup)
        trainer.callbacks.append(clock)
        with contextlib.redirect_stdout(sys.stderr):  # the progress bar runs as in train.py, away from the table
            trainer.fit(model, datamodule=datamodule)
        return clock.chars / (clock.end - clock.start)


def plain_loop(model_overrides: list[str], steps: int, warmup: int = 10) -> float:
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config(overrides_for(model_overrides, steps + warmup), Path(out))
        L.seed_everything(cfg.seed)
        datamodule, module, _ = build(cfg)
        model = module.net
        optimizer = module.configure_optimizers()  # the configured optimizer, as the project loop builds it
        clip = cfg.trainer.gradient_clip_val
        chars, start = 0, None
        for step, (x, y) in enumerate(datamodule.train_dataloader()):
            if step == warmup:
                start = time.perf_counter()
            logits, _ = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            if start is not None:
                chars += y.numel()
            if step + 1 == steps + warmup:
                break
        return chars / (time.perf_counter() - start)


def training_flops_per_char(net: CharRNN) -> float:
    """Matmul FLOPs of one training character: the forward count (``charlm.model.matmul_flops_per_char``)
    times 3 for forward + backward."""
    rnn = net.rnn
    embedding_dim = net.embedding.embedding_dim if net.embedding is not None else 0
    return 3 * matmul_flops_per_char(
        rnn.name, rnn.hidden_size, rnn.num_layers, net.vocab_size, embedding_dim, **rnn.settings
    )


@torch.no_grad()
def matmul_flops_per_second(size: int = 2048, repeats: int = 7) -> float:
    """The machine's fp32 matmul rate through oneDNN (the library that runs the CPU LSTM; on
    AMD processors MKL's ``torch.mm`` reaches only about half of it): the median of
    ``repeats`` square products."""
    linear = torch.utils.mkldnn.to_mkldnn(torch.nn.Linear(size, size, bias=False).eval())
    x = torch.randn(size, size).to_mkldnn()
    linear(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        linear(x)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / median(times)


def lesson_loop(seconds: float, nchars: int = 100, hidden: int = 64) -> float:
    """The lesson: for each article, a Python loop over every window builds one batch."""
    articles = read_ag_news_csv(AG_NEWS_TEST)
    chars = sorted(set("".join(articles)))
    index = {c: i for i, c in enumerate(chars)}
    torch.manual_seed(0)
    model = CharRNN(len(chars), "lstm", hidden, 1, 0.0, 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    done, start = 0, None
    for n, text in enumerate(a for a in articles if len(a) > nchars):
        if n == 5:
            start = time.perf_counter()
        inputs, targets = [], []
        for i in range(len(text) - nchars):
            inputs.append([index[c] for c in text[i : i + nchars]])
            targets.append([index[c] for c in text[i + 1 : i + nchars + 1]])
        x, y = torch.tensor(inputs), torch.tensor(targets)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if start is not None:
            done += y.numel()
            if time.perf_counter() - start > seconds:
                break
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="rough length of one measurement")
    args = parser.parse_args()
    require(AG_NEWS_TEST)

    models = {
        "default": [],
        "LSTM 512 x 3 layers": ["model.hidden_size=512", "model.layers=3"],
        # the minimal cells at the same width (charlm.cells: one product per layer over all steps, a scan)
        "minGRU 512 x 3 layers": ["model.cell=mingru", "model.hidden_size=512", "model.layers=3"],
        "minLSTM 512 x 3 layers": ["model.cell=minlstm", "model.hidden_size=512", "model.layers=3"],
        # the lesson's model in shuffled windows (experiment=lesson trains in the articles order, whose
        # batches differ in size; benchmarks/orders.py --orders lesson compares that order)
        "lesson (one-hot LSTM 64, batch 128, stride 1)": [
            "experiment=lesson",
            "data.order=windows",
            "data.stride=1",
            "data.batch_size=128",
        ],
    }
    # steps per measurement, from a quick probe of each model's speed
    steps = {
        name: max(20, int(args.seconds * plain_loop(ov, 10, 3) / _chars_per_step(ov))) for name, ov in models.items()
    }
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # interleaved, so drift in the machine's speed hits all alike
        for name, ov in models.items():
            results.setdefault(f"{name}|project", []).append(project_loop(ov, steps[name]))
            results.setdefault(f"{name}|plain", []).append(plain_loop(ov, steps[name]))
        results.setdefault("lesson|per-article", []).append(lesson_loop(args.seconds))

    peak = median(matmul_flops_per_second() for _ in range(3))
    rows = []
    for name, ov in models.items():
        with tempfile.TemporaryDirectory() as out:
            flops = training_flops_per_char(build(compose_config(overrides_for(ov, 1), Path(out)))[1].net)
        project, plain = median(results[f"{name}|project"]), median(results[f"{name}|plain"])
        for loop, speed, share in (
            ("project (Lightning, train.py's callbacks)", project, f"{project / plain:.1%}"),
            ("plain PyTorch loop", plain, "100%"),
        ):
            rows.append(
                [name, loop, f"{speed:,.0f}", share, f"{speed * flops / 1e9:.1f}", f"{speed * flops / peak:.0%}"]
            )
    lesson = median(results["lesson|per-article"])
    lesson_plain = median(results[f"{list(models)[-1]}|plain"])
    rows.append(
        [
            "lesson (one-hot LSTM 64)",
            "lesson's loop: one batch per article, Python loop per window",
            f"{lesson:,.0f}",
            f"{lesson / lesson_plain:.1%}",
            "",
            "",
        ]
    )
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds, medians; "
        f"fp32 matmul rate {peak / 1e9:.0f} GFLOP/s (oneDNN, 2048x2048 products)\n"
    )
    print_table(
        ["model", "loop", "chars/s", "vs plain loop, same model", "GFLOP/s (3x forward matmuls)", "of matmul rate"],
        rows,
    )


def _chars_per_step(model_overrides: list[str]) -> int:
    cfg = compose_config(overrides_for(model_overrides, 1), Path(tempfile.gettempdir()))
    return cfg.data.batch_size * cfg.data.nchars


if __name__ == "__main__":
    main()

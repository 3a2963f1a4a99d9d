"""Each cell's speed on this CPU: training and generation characters/s, and their share of the
machine's matmul rate, at equal width and at equal parameters, with windows of 100 and 1,000
characters (medians of interleaved rounds).

The reference is an LSTM 2x512 (embedding 16, tiny Shakespeare's 65 characters). "Equal width": every
cell 2x512. "Equal parameters": every cell 2xH, H chosen so its parameter count is nearest the
LSTM's. Training is a plain PyTorch step (forward, cross-entropy, backward, clip, AdamW) on
``--batch`` random windows, so the figure is the model's, not the data pipeline's (throughput.py
compares the project loop with this plain one). Generation is ``charlm.sampling.generate``, one
sample, one character a step, as sample.py runs it. The share of the matmul rate counts the
model's matmul FLOPs (``charlm.model.matmul_flops_per_char``; x3 for a training character) against
fp32 2048x2048 products through oneDNN; a minimal cell's scan, norms and gate nonlinearities are
not counted, so its share says how much of the time goes to them.

    python benchmarks/cells.py [--rounds 3] [--seconds 3] [--lengths 100 1000] [--batch 16]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import median, print_table
from generation import chars_per_second
from throughput import matmul_flops_per_second

from charlm.cells import CELLS
from charlm.model import CharRNN, matmul_flops_per_char, parameter_count
from charlm.vocabulary import Vocabulary

SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # its 65 characters
VOCAB = len(Vocabulary.from_text(SHAKESPEARE_CHARS))  # and the id for unknown ones
EMBEDDING = 16
LAYERS = 2
WIDTH = 512


def equal_parameter_width(cell: str, target: int) -> int:
    """The hidden size whose ``LAYERS``-layer model has the parameter count nearest ``target``."""
    count = lambda h: parameter_count(VOCAB, cell, h, LAYERS, EMBEDDING)  # noqa: E731
    low, high = 1, 8192
    while high - low > 1:  # the count grows with the width
        mid = (low + high) // 2
        low, high = (mid, high) if count(mid) <= target else (low, mid)
    return min((low, high), key=lambda h: abs(count(h) - target))


def training_speed(net: CharRNN, batch: int, length: int, seconds: float) -> float:
    """Training characters/s of a plain loop over random windows, after 2 warm-up steps."""
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.006, betas=(0.9, 0.99))
    x = torch.randint(VOCAB, (batch, length + 1))
    chars, start, step = 0, None, 0
    while start is None or time.perf_counter() - start < seconds:
        if step == 2:
            start = time.perf_counter()
        logits, _ = net(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        if start is not None:
            chars += batch * length
        step += 1
    return chars / (time.perf_counter() - start)


def generation_speed(net: CharRNN, vocab: Vocabulary, seconds: float) -> float:
    """Characters/s of one sampled stream (temperature 0.8, 200 characters after generation.py's
    prompt), the median over the streams that fit in ``seconds``."""
    rates, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        rates.append(chars_per_second(net, vocab, 200, 1, 0.8))
    return median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measurement")
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 1000], help="characters a window")
    parser.add_argument("--batch", type=int, default=16, help="windows a training step")
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "mingru", "minlstm"], choices=sorted(CELLS))
    args = parser.parse_args()

    vocab = Vocabulary.from_text(SHAKESPEARE_CHARS)
    target = parameter_count(VOCAB, "lstm", WIDTH, LAYERS, EMBEDDING)
    models = {}  # (comparison, cell) -> hidden size
    for cell in args.cells:
        models[("equal width", cell)] = WIDTH
        if cell != "lstm":  # the reference itself
            models[("equal parameters", cell)] = equal_parameter_width(cell, target)
    torch.manual_seed(0)
    nets = {key: CharRNN(VOCAB, key[1], hidden, LAYERS, 0.0, EMBEDDING) for key, hidden in models.items()}
    results: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):  # interleaved, so drift in the machine's speed hits all alike
        for key, net in nets.items():
            for length in args.lengths:
                results.setdefault((*key, length), []).append(training_speed(net, args.batch, length, args.seconds))
            results.setdefault((*key, "generation"), []).append(generation_speed(net, vocab, args.seconds))
    peak = median(matmul_flops_per_second() for _ in range(3))

    rows = []
    for key, net in nets.items():
        comparison, cell = key
        hidden = models[key]
        flops = matmul_flops_per_char(cell, hidden, LAYERS, VOCAB, EMBEDDING)
        row = [comparison, f"{cell} {LAYERS}x{hidden}", f"{sum(p.numel() for p in net.parameters()):,}"]
        for length in args.lengths:
            speed = median(results[(*key, length)])
            row += [f"{speed:,.0f}", f"{3 * flops * speed / peak:.0%}"]
        speed = median(results[(*key, "generation")])
        rows.append(row + [f"{speed:,.0f}", f"{flops * speed / peak:.1%}"])
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds, medians; "
        f"batch {args.batch}; fp32 matmul rate {peak / 1e9:.0f} GFLOP/s (oneDNN, 2048x2048 products)\n"
    )
    headers = ["comparison", "model", "parameters"]
    for length in args.lengths:
        headers += [f"training chars/s, {length}-char windows", "of matmul rate"]
    print_table(headers + ["generation chars/s (1 sample)", "of matmul rate"], rows)


if __name__ == "__main__":
    main()

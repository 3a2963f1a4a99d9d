"""Generation speed: characters/s for 1 sample and for N samples generated together (one
batched forward pass per step), greedy and sampled, and the time to the first character after
a long prompt. Speed does not depend on the weights, so a model with the default settings (or
a checkpoint, --ckpt) is used as it is.

    python benchmarks/generation.py [--ckpt PATH] [--length 400] [--batch 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import median, print_table

from charlm.model import CharRNN
from charlm.module import load_checkpoint
from charlm.sampling import generate
from charlm.vocabulary import Vocabulary


def chars_per_second(net, vocab, length, num_samples, temperature) -> float:
    start = time.perf_counter()
    for _ in generate(net, vocab, "today ", length, temperature=temperature, num_samples=num_samples, seed=0):
        pass
    return length * num_samples / (time.perf_counter() - start)


def first_character_seconds(net, vocab, prompt_length) -> float:
    prompt = ("the quick brown fox jumps over the lazy dog. " * (prompt_length // 45 + 1))[:prompt_length]
    start = time.perf_counter()
    next(iter(generate(net, vocab, prompt, 1, temperature=0)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="a checkpoint; default: untrained model with the default settings")
    parser.add_argument("--length", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.ckpt:
        module = load_checkpoint(args.ckpt)
        net, vocab, what = module.net, module.vocab, args.ckpt
    else:
        vocab = Vocabulary.from_text("".join(chr(c) for c in range(32, 127)) + "\n")
        net = CharRNN(len(vocab), "lstm", 384, 1, 0.0, 16).eval()
        what = "default model (LSTM 384, embedding 16), untrained"
    torch.manual_seed(0)
    results = {}
    for _ in range(args.rounds):
        for temperature, mode in ((0.0, "greedy"), (0.8, "sampled T=0.8")):
            for n in (1, args.batch):
                results.setdefault((mode, n), []).append(chars_per_second(net, vocab, args.length, n, temperature))
        results.setdefault("first", []).append(first_character_seconds(net, vocab, 1000))
    rows = []
    for mode in ("greedy", "sampled T=0.8"):
        one, many = median(results[(mode, 1)]), median(results[(mode, args.batch)])
        rows.append([mode, f"{one:,.0f}", f"{many:,.0f}", f"{args.batch * one / many:.1f}x"])
    print(
        f"\n{what}; torch {torch.__version__}, {torch.get_num_threads()} threads, {args.length} characters, "
        f"{args.rounds} rounds, medians\n"
    )
    print_table(
        [
            "mode",
            "chars/s, 1 sample",
            f"chars/s, {args.batch} samples together",
            f"time of {args.batch} samples together / time of 1",
        ],
        rows,
    )
    print(f"\ntime to the first character after a 1,000-character prompt: {median(results['first']) * 1000:.1f} ms")


if __name__ == "__main__":
    main()

"""Cost of the TensorBoard surprisal image (``charlm.callbacks.SurprisalImage``) per validation:
scoring the paragraph (one forward pass) and drawing it (matplotlib), for a tiny and the default
model, against the time of the validation itself (tiny Shakespeare's val split, 55,770 characters,
scored as ``CharLM.validation_step`` does). The first drawing of a process also loads matplotlib
and its font: reported apart.

    python benchmarks/inspect_image.py [--chars 600] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import median, print_table

from charlm.activations import surprisal
from charlm.model import CharRNN
from charlm.page import surprisal_image
from charlm.vocabulary import Vocabulary
from charlm.windows import EvalStream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--val-chars", type=int, default=55_770)
    args = parser.parse_args()
    vocab = Vocabulary.from_text("".join(chr(c) for c in range(32, 127)) + "\n")
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, len(vocab), size=args.val_chars)
    paragraph = torch.from_numpy(tokens[: args.chars].copy())
    chars = [vocab.chars[i] for i in paragraph.tolist()]
    started = time.perf_counter()
    surprisal_image(chars, np.zeros(len(chars)))
    first = time.perf_counter() - started
    rows = []
    for name, settings in (("tiny (LSTM 8, embedding 4)", (8, 4)), ("default (LSTM 384, embedding 16)", (384, 16))):
        torch.manual_seed(0)
        net = CharRNN(len(vocab), "lstm", settings[0], 1, 0.0, settings[1]).eval()
        score, draw, validate = [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            bits = surprisal(net, paragraph)
            t1 = time.perf_counter()
            surprisal_image(chars, bits, caption="step 1")
            t2 = time.perf_counter()
            state = None
            with torch.no_grad():
                for x, _ in EvalStream(tokens, 64, 512, None):
                    _, state = net(x, state)
            t3 = time.perf_counter()
            score.append(t1 - t0), draw.append(t2 - t1), validate.append(t3 - t2)
        image = median(score) + median(draw)
        rows.append(
            [
                name,
                f"{median(score) * 1e3:.1f}",
                f"{median(draw) * 1e3:.1f}",
                f"{median(validate) * 1e3:.0f}",
                f"{100 * image / (image + median(validate)):.1f}%",
            ]
        )
    print(
        f"\n{args.chars} characters drawn; validation of {args.val_chars:,} characters; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds, medians\n"
    )
    print_table(["model", "scoring (ms)", "drawing (ms)", "validation (ms)", "image share of validation"], rows)
    print(f"\nfirst drawing in a process (imports matplotlib, loads the font): {first * 1e3:.0f} ms")


if __name__ == "__main__":
    main()

"""One minimal-cell layer's scan against its matrix product, forward + backward, in ms (medians).

The matrix product is a minGRU layer's projection, ``Linear(hidden, 2 * hidden)`` over batch x time
rows; each scan computes ``h_t = a_t * h_{t-1} + b_t`` from ``log a``, ``log b`` ``[batch, time,
hidden]`` and a carried ``h_0`` (charlm.cells.SCANS), with the gradients of all three. ``--compile``
adds ``torch.compile`` of the log-space scan and of the plain sequential loop (their compile time
is printed beside them).

    python benchmarks/scan.py [--repeats 7] [--lengths 100 1000] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from common import median, print_table

from charlm.cells import SCANS, scan_chunked


def timed(fn, repeats: int) -> float:
    """Median ms of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * median(times)


def scan_case(scan, log_a, log_b, h0, grad):
    def run():
        h = scan(log_a, log_b, h0)
        torch.autograd.backward(h, grad)
        for t in (log_a, log_b, h0):
            t.grad = None

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--compile", action="store_true", help="also torch.compile the log scan and the step loop")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows, reference = [], {}
    for steps in args.lengths:
        b, size = args.batch, args.hidden
        x = torch.randn(b, steps, size, requires_grad=True)
        linear = torch.nn.Linear(size, 2 * size)
        out_grad = torch.randn(b, steps, 2 * size)

        def matmul(linear=linear, x=x, out_grad=out_grad):
            torch.autograd.backward(linear(x), out_grad)
            x.grad = None
            linear.zero_grad(set_to_none=True)

        base = timed(matmul, args.repeats)
        rows.append([steps, "matrix product Linear(512, 1024), forward + backward", f"{base:.2f}", "1.00", ""])
        log_a = (-F.softplus(torch.randn(b, steps, size))).requires_grad_()
        log_b = torch.randn(b, steps, size).requires_grad_()
        h0 = torch.rand(b, size).requires_grad_()
        grad = torch.randn(b, steps, size)
        reference[steps] = SCANS["step"](log_a, log_b, h0).detach()
        cases = {f"{name} scan": scan for name, scan in SCANS.items() if name != "chunked"}
        for chunk in args.chunks:
            cases[f"chunked scan, chunks of {chunk}"] = lambda a, lb, h, c=chunk: scan_chunked(a, lb, h, c)
        compile_seconds = {}
        if args.compile:
            for name in ("log", "step"):
                start = time.perf_counter()
                compiled = torch.compile(SCANS[name], dynamic=False)
                scan_case(compiled, log_a, log_b, h0, grad)()
                compile_seconds[f"compiled {name} scan"] = time.perf_counter() - start
                cases[f"compiled {name} scan"] = compiled
        for name, scan in cases.items():
            with torch.no_grad():
                error = (scan(log_a, log_b, h0) - reference[steps]).abs().max().item()
            ms = timed(scan_case(scan, log_a, log_b, h0, grad), args.repeats)
            note = f"max abs difference from step: {error:.1e}"
            if name in compile_seconds:
                note += f"; compiled in {compile_seconds[name]:.0f} s"
            rows.append([steps, name, f"{ms:.2f}", f"{ms / base:.2f}", note])
            print(rows[-1], file=sys.stderr, flush=True)
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, hidden {args.hidden}, "
        f"medians of {args.repeats}\n"
    )
    print_table(["time steps", "forward + backward of", "ms", "x matrix product", "agrees"], rows)


if __name__ == "__main__":
    main()

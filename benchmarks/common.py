"""Shared helpers of the benchmark scripts: data paths, tables."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
AG_NEWS_TEST = SHARED / "ag_news" / "test.csv"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"


def require(path: Path) -> Path:
    """Exit with one line when a shared data file is absent."""
    if not path.exists():
        sys.exit(f"error: this benchmark needs {path} (the shared data folder beside the checkout)")
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    """A Markdown table on stdout."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    sys.stdout.flush()


median = statistics.median

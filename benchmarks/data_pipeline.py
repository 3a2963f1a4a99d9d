"""Data pipeline: preparing a corpus (read, vocabulary, encode, cache) and feeding training from it.

For the shared AG News file and for synthetic plain-text corpora of the given sizes, each
measured in a fresh process; memory is what the step adds to the process's resident set (the
imports of torch and Lightning alone take about 400 MiB), at its peak and, at its end, split into
private memory and pages of mapped files:

- prepare: seconds per million characters and peak RSS of ``CharDataModule.prepare_data``
  (the streaming path for text files), paired with the whole-text-in-memory way
  (``read_text`` + ``Vocabulary.encode`` of the whole text) on the sizes where that fits;
- train: ``train.py``'s own build (``charlm.training.build``) with the default model for a
  fixed number of steps, timed by Lightning's SimpleProfiler: the share of the training loop
  spent waiting for the next batch (``train_dataloader_next``), characters/s, peak RSS.

    python benchmarks/data_pipeline.py --sizes-mb 100 1000 3000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import AG_NEWS_TEST, ROOT, median, print_table

WORDS = (
    "the of and to a in that is was he for it with as his on be at by i this had not are but from or have an "
    "they which one you were her all she there would their we him been has when who will more no if out so "
    "said what up its about into than them can only other new some could time these two may then do first "
    "any my now such like our over man me even most made after also did many before must through back years "
    "where much your way well down should because each just those people how too little state good very "
    "make world still own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take three café naïve "
    "Zürich — “quoted” 1914 2026 $5 50% News: AT&T"
).split()


def make_corpus(path: Path, megabytes: int) -> None:
    """Random lines of words (about 75 distinct characters, some of them multi-byte), written as
    8 different random pieces of about 25 MB in a random order until the file has ``megabytes``."""
    rng = np.random.default_rng(0)
    words = np.array([w + " " for w in WORDS] + ["\n"] * 8)
    pieces = ["".join(rng.choice(words, size=4_000_000)).encode("utf-8") for _ in range(8)]
    with open(path, "wb") as f:
        written = 0
        while written < megabytes << 20:
            piece = pieces[rng.integers(len(pieces))]
            f.write(piece)
            written += len(piece)


def memory_mb() -> dict[str, float]:
    """This process's resident memory in MiB: ``peak`` (VmHWM), ``private`` (RssAnon: the heap,
    arrays) and ``mapped`` (RssFile: pages of mapped files, such as the token array, which the
    kernel can drop and read again)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    kib = {key: int(fields[key].split()[0]) / 1024 for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
    return {"peak": kib["VmHWM"], "now": kib["VmRSS"], "private": kib["RssAnon"], "mapped": kib["RssFile"]}


def measured(work) -> dict:
    """Run ``work()`` (returning a dict); add its seconds, the peak resident memory it added to the
    process, and the private and file-mapped memory it added by its end."""
    before = memory_mb()
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    after = memory_mb()
    return {
        "seconds": seconds,
        "rss": after["peak"] - before["now"],
        "private": after["private"] - before["private"],
        "mapped": after["mapped"] - before["mapped"],
        **result,
    }


# ----------------------------------------------------------------------------- children (one per measurement)


def child_prepare(corpus: str, path: str, cache: str) -> dict:
    from charlm.data import CharDataModule

    sizes = 0.05 if corpus == "ag_news" else 200_000
    dm = CharDataModule(corpus=corpus, path=path, cache_dir=cache, val_size=sizes, test_size=sizes)
    result = measured(lambda: dm.prepare_data() or {})
    return {**result, "chars": sum(json.loads((dm.cache_path / "meta.json").read_text())["characters"].values())}


def child_whole_text(path: str) -> dict:
    """The way a text file was prepared before streaming: the whole text as one string, encoded at once."""
    from charlm.vocabulary import Vocabulary

    out = Path(path).with_suffix(".whole.npy")

    def prepare():
        text = Path(path).read_text(encoding="utf-8")
        np.save(out, Vocabulary.from_text(text[:-400_000]).encode(text))
        return {"chars": len(text)}

    result = measured(prepare)
    out.unlink()
    return result


def child_train(path: str, cache: str, steps: int, out: str) -> dict:
    import lightning as L

    from charlm.config import compose_config
    from charlm.training import build

    cfg = compose_config(
        [
            "data=text",
            f"data.path={path}",
            f"data.cache_dir={cache}",
            "data.val_size=200000",
            "data.test_size=200000",
            f"trainer.max_steps={steps}",
            "trainer.max_epochs=-1",
            "+trainer.limit_val_batches=0",
            "+trainer.enable_checkpointing=false",
            "~callbacks.checkpoint",
            "~callbacks.last_checkpoint",
            "~callbacks.samples",
            "~callbacks.progress_bar",
            "~callbacks.validate_last_step",
            "logger={}",
            "+trainer.profiler=simple",
            "+trainer.enable_progress_bar=false",
            "+trainer.enable_model_summary=false",
        ],
        Path(out),
    )
    L.seed_everything(0)

    def fit():
        datamodule, model, trainer = build(cfg)
        trainer.fit(model, datamodule=datamodule)
        durations = trainer.profiler.recorded_durations
        # the first fetch also creates the epoch's iterator (a permutation of all windows): shown apart
        first, *waits = durations["[_TrainingEpochLoop].train_dataloader_next"]
        waiting, stepping = sum(waits), sum(durations["run_training_batch"][1:])
        return {
            "wait_share": waiting / (waiting + stepping),
            "first_fetch_ms": first * 1000,
            "chars_per_sec": (steps - 1) * cfg.data.batch_size * cfg.data.nchars / (waiting + stepping),
        }

    return measured(fit)


def child_cold_reads(tokens_path: str, mapping: str, batches: int) -> dict:
    """Random training windows (16 of 101 tokens a batch) from a token file just dropped from the
    page cache, through ``np.load``'s mapping (the kernel reads ahead around each fault) or through
    ``charlm.cache.map_tokens`` (MADV_RANDOM: no read-ahead)."""
    from charlm.cache import map_tokens

    tokens = np.load(tokens_path, mmap_mode="r") if mapping == "default" else map_tokens(Path(tokens_path), True)
    io = lambda: int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["read_bytes"])  # noqa: E731
    rng, offsets, read_before, times = np.random.default_rng(1), np.arange(101), io(), []
    for _ in range(batches):
        start = time.perf_counter()
        starts = rng.integers(0, (len(tokens) - 101) // 100, size=16) * 100
        tokens[starts[:, None] + offsets].astype(np.int64)
        times.append(time.perf_counter() - start)
    return {
        "ms_per_batch": 1000 * sum(times) / len(times),
        "read_mib": (io() - read_before) / 2**20,
        "mapped": memory_mb()["mapped"],
    }


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (needs root); False where that is not allowed."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def in_child(*args) -> dict:
    """Run one measurement in a fresh Python process; its JSON result."""
    result = subprocess.run(
        [sys.executable, __file__, "--child", *map(str, args)], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"error: measurement {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000, 3000], help="synthetic corpus sizes")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (medians are shown)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per training measurement")
    parser.add_argument(
        "--whole-text-up-to-mb",
        type=int,
        default=1000,
        help="largest size also prepared the whole-text way (it needs ~16 bytes of RAM per character)",
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=["prepare", "train", "cold"],
        default=["prepare", "train", "cold"],
        help="prepare: time and memory; train: feeding training; cold: reading windows from a "
        "token file not in the page cache (needs root, the largest size only)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        rest = [int(a) if a.isdigit() else a for a in rest]
        children = {"prepare": child_prepare, "whole": child_whole_text, "train": child_train, "cold": child_cold_reads}
        print(json.dumps(children[kind](*rest)))
        return

    prepare_rows, train_rows, cold_rows = [], [], []
    if not AG_NEWS_TEST.exists():
        print(f"(no AG News row: {AG_NEWS_TEST} is absent)", file=sys.stderr)
    (ROOT / "outputs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "outputs") as tmp:
        tmp = Path(tmp)
        sources = [("ag_news", AG_NEWS_TEST, "AG News test.csv (shared)")] if AG_NEWS_TEST.exists() else []
        for mb in args.sizes_mb:
            path = tmp / f"synthetic-{mb}mb.txt"
            make_corpus(path, mb)
            sources.append(("text", path, f"synthetic {path.stat().st_size / 2**20:,.0f} MiB"))
        for corpus, path, label in sources:
            if corpus == "ag_news" and "prepare" not in args.sections:
                continue
            repeats = args.repeats if "prepare" in args.sections else 1  # else only to have a cache
            runs = [in_child("prepare", corpus, path, tmp / f"cache-{i}") for i in range(repeats)]
            mib, chars = path.stat().st_size / 2**20, runs[0]["chars"]
            if "prepare" in args.sections:
                ways = [("streamed (charlm)", runs)]
                if corpus == "text" and mib <= args.whole_text_up_to_mb:
                    ways.append(("whole text in memory", [in_child("whole", path) for _ in range(args.repeats)]))
                for way, results in ways:
                    seconds = median(r["seconds"] for r in results)
                    prepare_rows.append(
                        [
                            label,
                            way,
                            f"{chars / 1e6:,.1f}",
                            f"{seconds:.2f}",
                            f"{seconds / chars * 1e6:.3f}",
                            f"{median(r['rss'] for r in results):,.0f}",
                        ]
                    )
            if corpus == "text" and "train" in args.sections:
                trains = [
                    in_child("train", path, tmp / "cache-0", args.steps, tmp / "run") for _ in range(args.repeats)
                ]
                train_rows.append(
                    [
                        label,
                        f"{median(r['wait_share'] for r in trains):.2%}",
                        f"{median(r['first_fetch_ms'] for r in trains):,.0f}",
                        f"{median(r['chars_per_sec'] for r in trains):,.0f}",
                        *(f"{median(r[k] for r in trains):,.0f}" for k in ("rss", "private", "mapped")),
                    ]
                )
            if corpus == "text" and "cold" in args.sections and path == sources[-1][1]:  # the largest
                tokens = next((tmp / "cache-0").glob("*/train.npy"))
                for mapping, way in (
                    ("default", "np.load(mmap_mode='r')"),
                    ("random", "charlm.cache.map_tokens (MADV_RANDOM)"),
                ):
                    results = [
                        in_child("cold", tokens, mapping, args.steps) for _ in range(args.repeats) if drop_page_cache()
                    ]
                    if results:
                        cold_rows.append(
                            [
                                label,
                                way,
                                f"{median(r['ms_per_batch'] for r in results):.2f}",
                                f"{median(r['read_mib'] for r in results):,.0f}",
                                f"{median(r['mapped'] for r in results):,.0f}",
                            ]
                        )
            for cache in tmp.glob("cache-*"):
                shutil.rmtree(cache)
            if corpus == "text":
                path.unlink()
    if prepare_rows:
        print(f"\nPreparing a corpus (median of {args.repeats} fresh processes):\n")
        print_table(["corpus", "way", "M characters", "seconds", "s per M chars", "peak RSS added (MiB)"], prepare_rows)
    if train_rows:
        print(f"\nTraining the default model from the prepared cache, {args.steps} steps (median of {args.repeats}):\n")
        print_table(
            [
                "corpus",
                "time waiting for the next batch (steps 2+)",
                "first batch (ms)",
                "characters/s",
                "peak RSS added (MiB)",
                "private memory added",
                "file pages mapped",
            ],
            train_rows,
        )
    if "cold" in args.sections:
        print(
            f"\nReading {args.steps} batches of random windows from a training token file dropped from the page "
            f"cache (median of {args.repeats}):\n"
        )
        if cold_rows:
            print_table(
                ["corpus", "mapping", "ms per batch (mean)", "MiB read from disk", "file pages mapped (MiB)"], cold_rows
            )
        else:
            print("(skipped: emptying the page cache needs root)")


if __name__ == "__main__":
    main()

"""Topic conditioning on AG News: charlm's generative classifier against a character n-gram
TF-IDF + logistic regression classifier and chance, on the same split.

    python benchmarks/topics.py                       # 600 s of CPU training per seed, 3 seeds
    python benchmarks/topics.py --budget 60 --seeds 1  # a quick look
    python benchmarks/topics.py --compare-modes        # topic_mode=input against state, paired seeds

The split: the shared AG News test file (7,600 articles); its last 600 articles are the test set
(data.test_size=600), the ``--val`` articles before them the validation set (early stopping and
checkpoint choice of charlm; unused by the baseline), the rest are the training articles of
both classifiers. Needs scikit-learn for the baseline (pip install charlm[bench]); without it the
baseline column says so.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import AG_NEWS_TEST, ROOT, duration, median, print_table, require, train

sys.path.insert(0, str(ROOT))
from charlm.sources import read_ag_news_csv, split_tail  # noqa: E402

TEST_ARTICLES = 600


def train_charlm(seed: int, seconds: int, val: int, mode: str, run_dir: Path, extra: list[str]) -> dict:
    metrics = train(
        [
            f"data.path={AG_NEWS_TEST}",
            f"data.val_size={val}",
            f"data.test_size={TEST_ARTICLES}",
            "model.topics=true",
            f"model.topic_mode={mode}",
            f"seed={seed}",
            f"trainer.max_time={duration(seconds)}",
            "trainer.accelerator=cpu",
            *extra,
        ],
        run_dir,
    )
    metrics["ckpt"] = str(next((run_dir / "checkpoints").glob("best*.ckpt"), run_dir / "checkpoints" / "last.ckpt"))
    return metrics


def classification_seconds(ckpt: str) -> float:
    """Wall time of classifying the 600 test articles with the checkpoint (one batched pass)."""
    import torch

    from charlm.data import CharDataModule
    from charlm.module import load_checkpoint
    from charlm.topics import article_log_likelihoods, split_articles

    module = load_checkpoint(ckpt)
    with tempfile.TemporaryDirectory() as cache:
        dm = CharDataModule(path=str(AG_NEWS_TEST), val_size=1, test_size=TEST_ARTICLES, cache_dir=cache)
        dm.setup()
        tokens, labels = dm.held_out_topics("test")
        articles, _ = split_articles(tokens, labels, dm.separator_id)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    article_log_likelihoods(module.net, articles, dm.separator_id)
    return time.perf_counter() - started


def samples(ckpt: str, length: int = 120) -> dict[str, str]:
    from charlm.module import load_checkpoint
    from charlm.sampling import generate_text

    module = load_checkpoint(ckpt)
    return {
        name: generate_text(module.net, module.vocab, "\n", length, temperature=0.8, seed=0, topic=i)[0].strip()
        for i, name in enumerate(module.topics)
    }


def ngram_baseline(val: int) -> float | str:
    """Accuracy of char 1-4-gram TF-IDF + logistic regression, fit on the training articles."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return "needs scikit-learn (pip install charlm[bench])"
    labels: list[int] = []
    articles = read_ag_news_csv(AG_NEWS_TEST, labels)
    (train, _, test), (y_train, _, y_test) = (
        split_tail(articles, val, TEST_ARTICLES),
        split_tail(labels, val, TEST_ARTICLES),
    )
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, min_df=2)
    classifier = LogisticRegression(max_iter=2000, C=10.0).fit(vectorizer.fit_transform(train), y_train)
    return float((classifier.predict(vectorizer.transform(test)) == y_test).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=600, help="seconds of CPU training per run")
    parser.add_argument("--seeds", type=int, default=3, help="runs (seeds 0..n-1); the median is shown")
    parser.add_argument("--val", type=int, default=400, help="validation articles (before the 600 test ones)")
    parser.add_argument("--mode", default="input", choices=["input", "state"], help="model.topic_mode")
    parser.add_argument("--compare-modes", action="store_true", help="input against state, same seeds")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides, e.g. model.hidden_size=256")
    args = parser.parse_args()
    require(AG_NEWS_TEST)
    modes = ["input", "state"] if args.compare_modes else [args.mode]
    rows, medians = [], {}
    with tempfile.TemporaryDirectory() as out:
        for mode in modes:
            runs = []
            for seed in range(args.seeds):
                m = train_charlm(seed, args.budget, args.val, mode, Path(out) / f"{mode}-{seed}", args.overrides)
                m["classify_s"] = classification_seconds(m["ckpt"])
                runs.append(m)
                rows.append([mode, seed, *cells(m)])
                print(rows[-1], file=sys.stderr, flush=True)
            rows.append([mode, "median", *(cells({k: median(r[k] for r in runs) for k in KEYS}))])
            medians[mode] = median(r["test/topic_acc"] for r in runs)
            texts = samples(runs[0]["ckpt"])
        baseline = ngram_baseline(args.val)
    print(
        f"\nAG News ({AG_NEWS_TEST.name}): {7600 - args.val - TEST_ARTICLES} training articles, {args.val} validation "
        f"(charlm only), the last {TEST_ARTICLES} for testing; {args.budget} s of CPU training per run\n"
    )
    print_table(
        [
            "topic_mode",
            "seed",
            "topic acc",
            "bpc (topic)",
            "bpc (no topic)",
            "bits the topic is worth",
            "classify 600 s",
        ],
        rows,
    )
    print()
    print_table(
        ["classifier", "test accuracy"],
        [
            *([f"charlm generative, topic_mode={mode} (median)", f"{acc:.3f}"] for mode, acc in medians.items()),
            [
                "char 1-4-gram TF-IDF + logistic regression",
                f"{baseline:.3f}" if isinstance(baseline, float) else baseline,
            ],
            ["chance", "0.250"],
        ],
    )
    print()
    print_table(
        ["topic", "sample (seed 0, temperature 0.8)"],
        [[name, text.replace("|", "\\|")] for name, text in texts.items()],
    )


KEYS = ("test/topic_acc", "test/bpc", "test/bpc_uncond", "test/topic_bits", "classify_s")


def cells(m: dict) -> list[str]:
    return [
        f"{m['test/topic_acc']:.3f}",
        f"{m['test/bpc']:.4f}",
        f"{m['test/bpc_uncond']:.4f}",
        f"{m['test/topic_bits']:.4f}",
        f"{m['classify_s']:.1f}",
    ]


if __name__ == "__main__":
    main()

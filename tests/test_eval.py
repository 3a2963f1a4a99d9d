"""eval.py (charlm.evaluation): a checkpoint scored on a split of its corpus or of another, with the test's
metrics; in this process on the shared tiny run, and once as a real command."""

import csv
import json
import re

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from charlm.config import CONF_DIR
from charlm.data import CharDataModule
from charlm.evaluation import data_config, format_table, run, write_results
from charlm.module import load_checkpoint
from charlm.scoring import evaluate_stream, split_metrics
from charlm.windows import EvalStream

from conftest import ROOT, run_script


def evaluate(overrides, notes=None):
    """What ``python eval.py *overrides`` computes, in this process."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    return run(cfg, overrides, notes)


def test_eval_reproduces_the_test_and_best_val_of_training(tiny_run, tmp_path):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    test = evaluate([f"ckpt={ckpt}"])  # the run's own corpus and settings, from its config.yaml
    assert test["split"] == "test" and test["ckpt"] == str(ckpt)
    for key in ("loss", "bpc", "ppl"):
        assert test[key] == pytest.approx(metrics[f"test/{key}"], rel=1e-6), key
    assert set(test) == {"ckpt", "corpus", "split", "characters", "loss", "bpc", "ppl"}
    val = evaluate([f"ckpt={ckpt}", "split=val"])
    assert val["bpc"] == pytest.approx(metrics["best/val_bpc"], rel=1e-6)  # best.ckpt is the best validation's
    notes = []
    train_split = evaluate([f"runs_dir={tiny_run.parent.parent}", "split=train"], notes)
    assert notes == [f"no ckpt given: using the newest run's {ckpt}"]
    assert train_split["characters"] > test["characters"] and np.isfinite(train_split["bpc"])
    write_results(test, tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text()) == test
    write_results(test, tmp_path / "results.csv")
    with open(tmp_path / "results.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["bpc"]) == test["bpc"] and row["split"] == "test"
    table = format_table(test)
    assert f"{test['bpc']:10.4f}  bits/char" in table and table.startswith(f"{ckpt} on the test split of")


def test_another_corpus_is_read_in_the_checkpoints_own_ids(tiny_run, tmp_path):
    """A corpus with another vocabulary (capitals the model never saw, and no digits): its split is scored
    in the ids the checkpoint knows, the characters it does not know as its unknown id, said in one note."""
    other = tmp_path / "other.txt"
    other.write_text("".join(f"The Lazy Dog: a quick brown fox, line {chr(97 + i % 26)}.\n" for i in range(200)))
    notes = []
    row = evaluate(
        [
            f"ckpt={tiny_run}/checkpoints/best.ckpt",
            "data=text",
            f"data.path={other}",
            f"data.cache_dir={tmp_path}/cache",
            "data.eval_rows=5",
        ],
        notes,
    )
    assert row["corpus"] == str(other)
    dm = CharDataModule(corpus="text", path=str(other), cache_dir=str(tmp_path / "cache"))
    dm.setup()
    text = dm.vocab.decode(dm.eval_stream("test").tokens)
    module = load_checkpoint(tiny_run / "checkpoints" / "best.ckpt")
    ids = module.vocab.encode(text).astype(np.int64)
    unknown = sorted({c for c, i in zip(text, ids) if not i})
    assert unknown and dm.vocab.chars != module.vocab.chars
    assert notes == [
        (
            f"{int((ids == 0).sum()):,} of {len(ids):,} characters of the test split of {other} "
            f"({(ids == 0).mean():.1%}) are not in the checkpoint's vocabulary: {''.join(unknown)!r}; "
            "they are scored as its unknown id"
        )
    ]
    stream = EvalStream(ids, 5, 64, None)
    expected = evaluate_stream(module.net, (stream[i] for i in range(len(stream))), split_metrics("test"))
    assert row["bpc"] == pytest.approx(float(expected["test/bpc"]), rel=1e-6)


def test_data_keys_given_change_only_those_of_the_runs_data(tiny_run):
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    overrides = ["data.eval_rows=3", "data.val_size=0.1"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt={ckpt}", *overrides])
    data = data_config(cfg, overrides, ckpt, [])
    saved = OmegaConf.load(tiny_run / "config.yaml").data
    assert data.corpus == "text" and data.path == saved["path"] and data.nchars == 32
    assert data.eval_rows == 3 and data.val_size == 0.1 and data.eval_chunk == saved["eval_chunk"]


@pytest.mark.slow
def test_the_real_command(tiny_run, tmp_path):
    result = run_script(ROOT / "eval.py", f"ckpt={tiny_run}/checkpoints/best.ckpt", "out=results.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    with open(tmp_path / "results.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["bpc"]) == pytest.approx(metrics["test/bpc"], rel=1e-6)
    assert re.search(rf"^  bpc +{float(row['bpc']):.4f}  bits/char$", result.stdout, re.MULTILINE), result.stdout
    assert result.stdout.endswith("wrote results.csv\n") and result.stderr == ""

"""The debugging presets (conf/debug/): each runs a tiny job in this process through charlm's own
callbacks, budget and end-of-run code, and does what it says."""

import json

import pytest
import torch

from charlm.config import compose_config
from charlm.module import CharLM
from charlm.training import train


@pytest.fixture
def seen(monkeypatch):
    """The batches each step of a stage read: {"train": [first row of x, ...], "val": [...], "test": [...]}."""
    seen = {"train": [], "val": [], "test": []}
    for stage, hook in (("train", "training_step"), ("val", "validation_step"), ("test", "test_step")):
        original = getattr(CharLM, hook)

        def recorded(self, batch, batch_idx, original=original, stage=stage):
            seen[stage].append(batch[0][0].clone())
            return original(self, batch, batch_idx)

        monkeypatch.setattr(CharLM, hook, recorded)
    return seen


def run(preset, tiny_text, tmp_path, *overrides):
    run_dir = tmp_path / preset
    run_dir.mkdir()
    cfg = compose_config(
        [
            f"debug={preset}",
            "data=text",
            f"data.path={tiny_text}",
            f"data.cache_dir={tmp_path}/cache",
            "data.nchars=16",
            "data.stride=16",
            "data.batch_size=4",
            "data.eval_rows=2",
            "data.eval_chunk=32",
            "model.hidden_size=8",
            "model.embedding_dim=4",
            "trainer.accelerator=cpu",
            "callbacks.samples.length=5",
            "callbacks.surprisal_image.chars=40",
            "callbacks.train_eval.chars=64",
            "callbacks.validation.points=2",
            *overrides,
        ],
        run_dir,
    )
    return run_dir, train(cfg, run_dir)


def test_fdr_runs_one_batch_of_each_stage_and_saves_no_best_checkpoint(tiny_text, tmp_path, seen):
    run_dir, metrics = run("fdr", tiny_text, tmp_path)
    assert [len(seen[stage]) for stage in ("train", "val", "test")] == [1, 1, 1]
    assert metrics["steps"] == 1 and "best/val_bpc" not in metrics  # Lightning's fast_dev_run: no best checkpoint
    assert json.loads((run_dir / "metrics.json").read_text())["test/bpc"] == metrics["test/bpc"]
    assert not (run_dir / "checkpoints" / "best.ckpt").exists() and not list(run_dir.glob("events.out.*"))


def test_overfit_trains_on_the_same_batches_every_epoch(tiny_text, tmp_path, seen):
    # 22 epochs of 2 batches: more than the default max_epochs=20, which the preset lifts
    _, metrics = run("overfit", tiny_text, tmp_path, "trainer.overfit_batches=2", "trainer.max_steps=44")
    assert metrics["steps"] == 44
    first = seen["train"][:2]
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(x, first[i % 2]) for i, x in enumerate(seen["train"]))


@pytest.mark.slow  # a few seconds each: the fast lane keeps fdr and overfit (charlm's own code)
def test_limit_reads_a_few_batches_of_each_split(tiny_text, tmp_path, seen):
    _, metrics = run("limit", tiny_text, tmp_path, "trainer.max_steps=6", "trainer.limit_train_batches=3")
    assert metrics["steps"] == 6 and "test/bpc" in metrics and "best/val_bpc" in metrics
    assert len(seen["test"]) == 4  # of the test split's more chunks
    assert len(seen["val"]) == 2 + 2 * 4  # the sanity check's 2, then 4 at each of the 2 validations


@pytest.mark.slow
def test_profiler_writes_its_report_into_the_run_folder(tiny_text, tmp_path):
    run_dir, metrics = run("profiler", tiny_text, tmp_path, "trainer.max_steps=3")
    assert metrics["steps"] == 3
    report = (run_dir / "fit-profile.txt").read_text()
    assert "run_training_batch" in report and (run_dir / "test-profile.txt").exists()

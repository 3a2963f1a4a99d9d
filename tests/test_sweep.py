"""Hydra multiruns through the real train.py -m: job folders, TensorBoard, the sweep summary, failed jobs."""

import csv
import json
import math
import re
import shlex
import shutil
import sys

import pytest
import torch
from omegaconf import OmegaConf

from charlm.config import job_dirname, swept_keys
from conftest import ROOT, run_script

# Smaller than test_cli.TINY: a sweep trains several models.
TINY = ["model.hidden_size=16", "model.embedding_dim=8", "data.nchars=32", "data.stride=32", "data.batch_size=16",
        "data.val_size=20", "data.test_size=20", "trainer.max_steps=8", "trainer.val_check_interval=4",
        "trainer.log_every_n_steps=2", "callbacks.samples.length=10", "callbacks.samples.temperatures=[0,1]"]
ENV = {"OMP_NUM_THREADS": "1"}  # tiny models: threads only add overhead on a shared CPU


def multirun(sweep_dir, data_path, *overrides):
    """``python train.py -m`` into ``sweep_dir`` with tiny settings."""
    return run_script("train.py", "-m", *overrides, *TINY, f"data.path={data_path}",
                      f"data.cache_dir={sweep_dir.parent / 'cache'}", f"hydra.sweep.dir={sweep_dir}", env=ENV)


def read_csv(path):
    with open(path, newline="") as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def metrics_of(run):
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def sweep(ag_news_test_csv, tmp_path_factory):
    """A finished 2x2 sweep (cell x layers): its folder and the command's result."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "lstm_gru"
    result = multirun(sweep_dir, ag_news_test_csv, "model.cell=lstm,gru", "model.layers=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir, result


def test_job_dirname_drops_config_groups_unless_ambiguous():
    assert job_dirname(["model.cell=gru", "model.layers=2", "model.hidden_size=256", "data.path=x.txt", "sweep=lesson"],
                       ["data.path", "sweep"]) == "cell=gru,layers=2,hidden_size=256"
    assert job_dirname(["model.dropout=0.1", "data.dropout=0", "callbacks.samples.length=9", "data=text"], []) == \
        "model.dropout=0.1,data.dropout=0,samples.length=9,data=text"
    assert job_dirname([], []) == "defaults"


def test_job_dirname_rounds_decimals_when_asked():
    overrides = ["model.hidden_size=256", "optimizer.lr=0.0012345678", "model.dropout=0.2134", "model.cell=gru"]
    assert job_dirname(overrides, [], 2) == "hidden_size=256,lr=0.0012,dropout=0.21,cell=gru"
    assert job_dirname(overrides, []) == "hidden_size=256,lr=0.0012345678,dropout=0.2134,cell=gru"


def test_swept_keys_come_from_the_command_line_and_the_sweeper_params():
    task = ["model.cell=lstm,gru", "model.hidden_size=choice(8,16)", "data.path=x.txt", "trainer.max_steps=150",
            "model.layers=2", "resume=true", "optimizer.lr=0.1,0.2", "optimizer.lr=0.3"]  # the last value wins
    params = {"model.layers": "1,2,3", "optimizer.lr": "tag(log, interval(0.0003, 0.01))", "model.dropout": "0.1"}
    swept, constant = swept_keys(task, params)
    assert swept == {"model.cell", "model.hidden_size"}  # the command line's layers=2 replaces the params' sweep
    assert constant == {"data.path", "trainer.max_steps", "model.layers", "resume", "model.dropout", "optimizer.lr"}


def test_each_job_gets_a_folder_named_after_what_differs(sweep):
    sweep_dir, _ = sweep
    names = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    # the constants (TINY: hidden_size, nchars, max_steps, data.path, ...) are left out
    assert names == ["cell=gru,layers=1", "cell=gru,layers=2", "cell=lstm,layers=1", "cell=lstm,layers=2"]


def test_summary_rows_are_the_jobs_real_metrics(sweep):
    sweep_dir, result = sweep
    rows = read_csv(sweep_dir / "summary.csv")
    assert len(rows) == 4
    for name, row in rows.items():
        run = sweep_dir / name
        metrics = metrics_of(run)
        assert row["status"] == "ok" and row["error"] == ""
        assert math.isclose(float(row["best_val_bpc"]), metrics["best/val_bpc"])
        assert math.isclose(float(row["test_bpc"]), metrics["test/bpc"])
        assert math.isclose(float(row["chars_per_sec"]), metrics["train/chars_per_sec"])
        assert int(row["parameters"]) == metrics["parameters"] > 0
        assert int(row["best_epoch"]) == torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["epoch"]
        cell, layers = name.split(",")[:2]
        assert (f"cell={row['cell']}", f"layers={row['layers']}", row["hidden_size"]) == (cell, layers, "16")
    best = min(rows.values(), key=lambda r: float(r["best_val_bpc"]))
    markdown = (sweep_dir / "summary.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 5 and table[1].startswith(f"| {best['run']} | ")  # header, then rows by best val/bpc
    assert f"{float(best['best_val_bpc']):.4f}" in table[1]
    assert all(f"{line}\n" in result.stdout for line in table)  # printed when the sweep ended
    for plot in ("best_val_bpc.png", "learning_curves.png"):
        assert (sweep_dir / plot).read_bytes().startswith(b"\x89PNG")


def test_tensorboard_reads_scalars_samples_and_hparams_of_every_run(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    sweep_dir, _ = sweep
    for run in (p for p in sweep_dir.iterdir() if p.is_dir()):
        events = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0}).Reload()
        metrics = metrics_of(run)
        scalars = events.Tags()["scalars"]
        assert len(events.Scalars("val/bpc")) >= 2 and "hp_metric" not in scalars

        samples = [tag for tag in events.Tags()["tensors"] if tag.startswith("samples/")]
        assert sorted(samples) == ["samples/T=0/text_summary", "samples/T=1/text_summary"]  # torch's add_text suffix
        assert all(events.SummaryMetadata(tag).plugin_data.plugin_name == "text" for tag in samples)
        text = events.Tensors("samples/T=0/text_summary")[-1].tensor_proto.string_val[0].decode()
        assert text.strip().startswith("today ")

        content = events.PluginTagToContent("hparams")
        assert "_hparams_/experiment" not in content  # TensorBoard builds the experiment from all runs' sessions
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = hparams.session_start_info.hparams
        cell, layers = run.name.split(",")[:2]
        assert hparams["model.cell"].string_value == cell.removeprefix("cell=")
        assert hparams["model.layers"].number_value == int(layers.removeprefix("layers="))
        config = OmegaConf.load(run / "config.yaml")
        assert hparams["optimizer.lr"].number_value == config.optimizer.lr and hparams["data.nchars"].number_value == 32
        assert hparams["parameters"].number_value == metrics["parameters"]
        # HPARAMS' metric columns are the last values of the scalars; no one-point cards besides them
        assert not [tag for tag in scalars if tag == "epoch" or tag.startswith("hparams/")]
        assert math.isclose(events.Scalars("test/bpc")[-1].value, metrics["test/bpc"], rel_tol=1e-6)

        # one step count everywhere: optimizer steps, as in max_steps and the checkpoints
        # (TINY validates every 4 of its 8 steps)
        assert [p.step for p in events.Scalars("val/bpc")] == [4, 8]
        assert [e.step for e in events.Tensors("samples/T=0/text_summary")] == [4, 8]
        assert [p.step for p in events.Scalars("test/bpc")] == [8]
        assert all(p.step % 2 == 0 for p in events.Scalars("train/loss"))  # every log_every_n_steps=2 steps
        best_step = int(read_csv(sweep_dir / "summary.csv")[run.name]["best_step"])
        assert best_step in (4, 8) and any(math.isclose(p.value, metrics["best/val_bpc"], rel_tol=1e-6)
                                           for p in events.Scalars("val/bpc") if p.step == best_step)


def test_summary_command_rebuilds_the_same_table(sweep):
    sweep_dir, _ = sweep
    before = {name: (sweep_dir / name).read_text() for name in ("summary.md", "summary.csv")}
    for name in ("summary.md", "summary.csv", "best_val_bpc.png", "learning_curves.png"):
        (sweep_dir / name).unlink()
    result = run_script("-m", "charlm.summary", sweep_dir, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {name: (sweep_dir / name).read_text() for name in before} == before
    assert before["summary.md"] in result.stdout
    assert (sweep_dir / "best_val_bpc.png").exists() and (sweep_dir / "learning_curves.png").exists()

    missing = run_script("-m", "charlm.summary", sweep_dir / "nope")
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1


def test_summary_without_matplotlib_still_writes_the_tables(sweep, tmp_path, monkeypatch):
    from charlm.summary import summarize

    copy = tmp_path / "copy"
    shutil.copytree(sweep[0], copy, ignore=shutil.ignore_patterns("*.png", "summary.*"))
    for module in ("matplotlib", "matplotlib.figure"):  # importing them now raises ImportError
        monkeypatch.setitem(sys.modules, module, None)
    markdown = summarize(copy)
    assert "plots skipped: matplotlib is not installed" in markdown
    assert len(read_csv(copy / "summary.csv")) == 4 and not list(copy.glob("*.png"))


def test_a_failed_job_is_listed_with_its_error_and_the_others_finish(ag_news_test_csv, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = multirun(sweep_dir, ag_news_test_csv, "model.layers=0,1")
    assert result.returncode == 1  # Hydra's basic sweeper raises the failed job's error after the last job
    assert "model.layers=0 must be a whole number >= 1" in result.stderr
    rows = read_csv(sweep_dir / "summary.csv")
    failed, finished = (rows[n] for n in sorted(rows))
    assert (failed["run"], finished["run"]) == ("layers=0", "layers=1") and failed["status"] == "failed"
    assert failed["error"] == "UserError: model.layers=0 must be a whole number >= 1"
    assert (sweep_dir / failed["run"] / "error.txt").read_text().strip() == failed["error"]
    assert finished["status"] == "ok"
    assert math.isclose(float(finished["test_bpc"]), metrics_of(sweep_dir / finished["run"])["test/bpc"])
    assert "failed: UserError: model.layers=0" in result.stdout  # the summary is printed even so

    # Resuming runs the sweep again into its folder: the finished job is skipped, the failed one retried.
    line = next(line for line in (sweep_dir / "summary.md").read_text().splitlines() if "resume=true" in line)
    command = shlex.split(line)
    assert command[:3] == ["python", "train.py", "-m"] and command[-1] == "resume=true"
    done = sweep_dir / finished["run"]
    finished_metrics = (done / "metrics.json").read_text()
    again = run_script(*command[1:], env=ENV)
    assert again.returncode == 1 and "already finished; skipped" in (done / "train.log").read_text()
    assert (done / "metrics.json").read_text() == finished_metrics


def test_presets_compose():
    from hydra import compose, initialize_config_dir

    from charlm.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        lesson = compose("config", overrides=["sweep=lesson"], return_hydra_config=True)
        assert dict(lesson.hydra.sweeper.params) == {"model.cell": "lstm,gru", "model.layers": "1,2,3",
                                                      "model.hidden_size": "128,256,512"}
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
        optuna = compose("config", overrides=["hparams_search=optuna"], return_hydra_config=True)
        assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper")
        assert optuna.hydra.sweeper.direction == "minimize"
        searched = set(optuna.hydra.sweeper.params)
        assert searched == {"model.hidden_size", "model.layers", "optimizer.lr", "model.dropout"}


def test_optuna_search_runs_trials_with_its_storage_in_the_sweep_folder(ag_news_test_csv, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "optuna"
    result = multirun(sweep_dir, ag_news_test_csv, "hparams_search=optuna", "hydra.sweeper.n_trials=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (sweep_dir / "optuna.db").exists() and (sweep_dir / "optimization_results.yaml").exists()
    rows = read_csv(sweep_dir / "summary.csv")
    assert all(r["status"] == "ok" for r in rows.values())
    # numbered (trials may repeat), then the suggested values only, decimals to 2 significant digits
    pattern = r"[01]-layers=[123],lr=([0-9.e-]+),dropout=([0-9.e-]+)"  # TINY's model.hidden_size=16 replaces its search
    assert sorted(name[:2] for name in rows) == ["0-", "1-"] and all(re.fullmatch(pattern, name) for name in rows), rows
    for name, row in rows.items():
        for text, value in zip(re.fullmatch(pattern, name).groups(), (row["lr"], row["dropout"])):
            assert text == f"{float(value):.2g}"

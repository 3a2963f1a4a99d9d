"""Hydra multiruns through the real train.py -m: job folders, TensorBoard, the sweep summary, failed jobs."""

import csv
import json
import math
import re
import shlex
import shutil
import statistics
import sys

import pytest
import torch
from omegaconf import OmegaConf

from charlm.config import job_dirname, swept_keys

from conftest import ROOT, run_script

# Smaller than test_cli.TINY: a sweep trains several models.
TINY = [
    "model.hidden_size=16",
    "model.embedding_dim=8",
    "data.nchars=32",
    "data.stride=32",
    "data.batch_size=16",
    "data.val_size=20",
    "data.test_size=20",
    "trainer.max_steps=8",
    "trainer.val_check_interval=4",
    "trainer.log_every_n_steps=2",
    "callbacks.samples.length=10",
    "callbacks.samples.temperatures=[0,1]",
]
ENV = {"OMP_NUM_THREADS": "1"}  # tiny models: threads only add overhead on a shared CPU


def multirun(sweep_dir, data_path, *overrides):
    """``python train.py -m`` into ``sweep_dir`` with tiny settings (``overrides`` replace them)."""
    return run_script(
        "train.py",
        "-m",
        *TINY,
        *overrides,
        f"data.path={data_path}",
        f"data.cache_dir={sweep_dir.parent / 'cache'}",
        f"hydra.sweep.dir={sweep_dir}",
        env=ENV,
    )


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


@pytest.fixture(scope="module")
def seeded(ag_news_test_csv, tmp_path_factory):
    """A finished sweep of 2 configurations (LSTM, GRU) x 2 seeds, 20 steps each, validated on the
    budget schedule (10 points); its folder and the summary's jobs and configurations."""
    from charlm.summary import collect

    sweep_dir = tmp_path_factory.mktemp("seeded") / "cells"
    result = multirun(
        sweep_dir,
        ag_news_test_csv,
        "model.cell=lstm,gru",
        "seed=1,2",
        "trainer.max_steps=20",
        "trainer.val_check_interval=null",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return (sweep_dir, *collect(sweep_dir))


def test_jobs_copied_into_another_sweep_folder_keep_their_configuration(seeded, tmp_path):
    """Runs gathered from several sweeps into one folder (some in sub-folders) still group by their
    settings: the paths into the folders they ran in are not settings."""
    from charlm.summary import collect

    sweep_dir, _, _ = seeded
    gathered = tmp_path / "gathered"
    shutil.copytree(sweep_dir, gathered / "first")
    (gathered / "later").mkdir()
    shutil.move(gathered / "first" / "cell=gru,seed=2", gathered / "later" / "cell=gru,seed=2")
    _, configs = collect(gathered)
    assert {c["configuration"]: c["n"] for c in configs} == {"lstm 1×16": 2, "gru 1×16": 2}


def scalars(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload().Scalars(tag)


def test_configurations_group_the_seeds_with_their_mean_and_spread(seeded):
    sweep_dir, _, _ = seeded
    configs = {c["configuration"]: c for c in csv.DictReader(open(sweep_dir / "configurations.csv", newline=""))}
    assert set(configs) == {"lstm 1×16", "gru 1×16"}  # the seed is not part of the configuration
    for cell, config in ((c["configuration"].split()[0], c) for c in configs.values()):
        runs = [sweep_dir / f"cell={cell},seed={seed}" for seed in (1, 2)]
        assert sorted(config["runs"].split()) == sorted(r.name for r in runs) and config["n"] == "2"
        for column, key in (("best_val_bpc", "best/val_bpc"), ("test_bpc", "test/bpc")):
            values = [metrics_of(run)[key] for run in runs]
            assert math.isclose(float(config[f"{column}_mean"]), statistics.fmean(values))
            assert math.isclose(float(config[f"{column}_std"]), statistics.stdev(values))
    best, other = sorted(configs.values(), key=lambda c: float(c["best_val_bpc_mean"]))
    assert best["delta_vs_best"] == "" and best["within_spread"] == ""
    delta = float(other["best_val_bpc_mean"]) - float(best["best_val_bpc_mean"])
    assert math.isclose(float(other["delta_vs_best"]), delta)
    within = delta <= math.hypot(float(other["best_val_bpc_std"]), float(best["best_val_bpc_std"]))
    assert other["within_spread"] == str(within)
    line = next(
        line
        for line in (sweep_dir / "summary.md").read_text().splitlines()
        if line.startswith(f"| {other['configuration']} | 2 | ")
    )
    assert f"| {delta:+.4f}{' (within seed spread)' if within else ''} |" in line
    assert f"| {best['configuration']} | 2 | " in (sweep_dir / "summary.md").read_text()


def fake_run(name, cell, best, seed):
    """A job as charlm.summary.read_run returns it, without curves: for the rules of ``group``."""
    empty = {"step": [], "characters": [], "seconds": [], "value": []}
    return {
        "run": name,
        "cell": cell,
        "layers": 1,
        "hidden_size": 8,
        "seed": seed,
        "parameters": 1,
        "best_val_bpc": best,
        "test_bpc": best,
        "chars_per_sec": 1.0,
        "fit_seconds": 1.0,
        "characters": None,
        "final_train_eval_bpc": None,
        "gap": None,
        "curves": {"val/bpc": empty, "train_eval/bpc": empty},
        "settings": {"model.cell": cell, "model.layers": 1, "model.hidden_size": 8, "model.dropout": 0.0},
    }


def test_a_difference_within_the_seeds_spread_is_flagged_and_a_larger_one_not():
    from charlm.summary import group

    runs = [
        fake_run("a1", "lstm", 1.00, 1),
        fake_run("a2", "lstm", 1.02, 2),  # mean 1.01, std 0.0141
        fake_run("b1", "gru", 1.02, 1),
        fake_run("b2", "gru", 1.04, 2),  # +0.02 <= 0.02: within
        fake_run("c1", "rnn", 1.10, 1),
        fake_run("c2", "rnn", 1.12, 2),  # +0.10: not
        {
            **fake_run("d1", "lstm", 1.5, 1),
            "settings": {**fake_run("", "lstm", 0, 0)["settings"], "model.dropout": 0.2},
        },
    ]
    configs = {c["configuration"]: c for c in group(runs)}
    assert list(configs) == ["lstm 1×8 d=0", "gru 1×8 d=0", "rnn 1×8 d=0", "lstm 1×8 d=0.2"]  # best first
    assert [c["n"] for c in configs.values()] == [2, 2, 2, 1]
    assert configs["gru 1×8 d=0"]["within_spread"] is True and configs["rnn 1×8 d=0"]["within_spread"] is False
    assert configs["lstm 1×8 d=0.2"]["within_spread"] is None  # one seed: no spread to compare with
    assert math.isclose(configs["rnn 1×8 d=0"]["delta_vs_best"], 0.10)
    assert configs["lstm 1×8 d=0"]["within_spread"] is None and configs["lstm 1×8 d=0"]["delta_vs_best"] is None


def test_curves_against_characters_and_seconds_come_from_every_validation(seeded):
    sweep_dir, rows, _ = seeded
    with open(sweep_dir / "curves.csv", newline="") as f:
        points = list(csv.DictReader(f))
    for row in rows:
        run = sweep_dir / row["run"]
        mine = [p for p in points if p["run"] == row["run"]]
        val = scalars(run, "val/bpc")
        assert len(mine) == len(val) == 10  # callbacks.validation.points
        assert [int(p["step"]) for p in mine] == [2 * k for k in range(1, 11)]
        assert [int(p["characters"]) for p in mine] == [int(p["step"]) * 16 * 32 for p in mine]  # batch x nchars
        seconds = [float(p["seconds"]) for p in mine]
        assert 0 < seconds[0] and seconds == sorted(seconds) and seconds[-1] <= metrics_of(run)["fit_seconds"] + 1
        assert [float(p["val_bpc"]) for p in mine] == pytest.approx([p.value for p in val])
        assert {p["configuration"] for p in mine} == {row["configuration"]} and mine[0]["seed"] == str(row["seed"])
    configs = {c["configuration"]: c for c in seeded[2]}
    # equal budgets: every job trained 20 x 512 characters; the value there is the mean of the seeds' last points
    for config in configs.values():
        assert config["equal_chars"] == 20 * 512
        last = [r["curves"]["val/bpc"]["value"][-1] for r in config["members"]]
        assert math.isclose(config["val_bpc_at_equal_chars"], statistics.fmean(last))


def test_train_sample_is_scored_at_every_validation_and_its_gap_is_in_the_tables(seeded):
    sweep_dir, rows, configs = seeded
    csv_rows = read_csv(sweep_dir / "summary.csv")
    for row in rows:
        run = sweep_dir / row["run"]
        val, train = scalars(run, "val/bpc"), scalars(run, "train_eval/bpc")
        assert [p.step for p in train] == [p.step for p in val]
        gap = val[-1].value - train[-1].value
        assert math.isclose(float(csv_rows[row["run"]]["gap"]), gap, rel_tol=1e-6)
        assert train[-1].value != val[-1].value  # another text
    for config in configs:
        assert math.isclose(config["gap"], statistics.fmean(r["gap"] for r in config["members"]))


def test_plots_have_one_colour_and_a_readable_label_per_configuration(seeded):
    from charlm.summary import plot

    sweep_dir, _, configs = seeded
    figures = plot(configs, sweep_dir)
    assert set(figures) == {"best_val_bpc.png", "learning_curves.png", "overfitting.png"}
    labels = [text.get_text() for text in figures["learning_curves.png"].legends[0].get_texts()]
    assert sorted(labels) == ["gru 1×16", "lstm 1×16"]
    sizes = [text.get_text() for text in figures["best_val_bpc.png"].axes[0].get_legend().get_texts()]
    assert sorted(sizes) == ["gru 1 layer", "lstm 1 layer"]  # was "1 layers"
    overfitting = figures["overfitting.png"]  # the dashed line is explained; the title is above the legend
    legend = [text.get_text() for text in overfitting.legends[0].get_texts()]
    assert legend[:2] == ["val/bpc", "training sample,\nscored as val"] and sorted(legend[2:]) == sorted(labels)
    assert overfitting.axes[0].get_title() == "" and "overfitting" in overfitting.get_suptitle()
    for ax in figures["learning_curves.png"].axes:
        thick = {line.get_label(): line.get_color() for line in ax.lines if not line.get_label().startswith("_")}
        assert len(set(map(str, thick.values()))) == len(configs) == 2
        seeds = [line for line in ax.lines if line.get_label().startswith("_")]  # thin, unlabelled, one per seed
        assert len(seeds) == 4 and all(line.get_linewidth() < 1 for line in seeds)
        for config in configs:
            colour = thick[config["configuration"]]
            assert sum(line.get_color() == colour for line in seeds) == config["n"] == 2
            style = {"lstm": "-", "gru": "--"}[config["cell"]]
            assert all(line.get_linestyle() == style for line in ax.lines if line.get_color() == colour)


def test_a_run_in_the_articles_order_has_no_characters_axis_but_its_seconds(seeded, tmp_path):
    """data.order=articles (experiment=lesson) has batches of different sizes: steps say nothing of
    the characters trained, so such a run is left out of the characters views, kept in the others."""
    from charlm.summary import chars_per_step, group, plot

    assert chars_per_step(OmegaConf.create({"data": {"batch_size": 4, "nchars": 8, "order": "articles"}})) is None
    assert chars_per_step(OmegaConf.create({"data": {"batch_size": 4, "nchars": 8, "order": "streams"}})) == 32
    sweep_dir, rows, _ = seeded
    curve = {"step": [5, 10], "characters": [None, None], "seconds": [1.0, 2.0], "value": [3.0, 2.5]}
    lesson = {
        **fake_run("lesson", "lstm", 2.5, 1),
        "curves": {"val/bpc": curve, "train_eval/bpc": curve},
        "settings": {**fake_run("", "lstm", 0, 0)["settings"], "data.order": "articles", "experiment": "lesson"},
    }
    configs = group([*rows, lesson])
    # a preset's runs are named by it, and do not lengthen the others' labels
    assert sorted(c["configuration"] for c in configs) == ["gru 1×16", "lesson (lstm 1×8)", "lstm 1×16"]
    mine = next(c for c in configs if c["configuration"] == "lesson (lstm 1×8)")
    assert mine["val_bpc_at_equal_chars"] is None and mine["val_bpc_at_equal_seconds"] is not None
    assert {c["equal_chars"] for c in configs} == {20 * 512}  # from the other runs
    chars_ax, seconds_ax = plot(configs, tmp_path)["learning_curves.png"].axes[:2]
    label = lambda ax: {line.get_label() for line in ax.lines}
    assert mine["configuration"] in label(seconds_ax) and mine["configuration"] not in label(chars_ax)


def test_the_experiment_preset_of_a_job_is_read_from_its_hydra_record(seeded, tmp_path):
    from charlm.summary import read_run

    sweep_dir, rows, _ = seeded
    job = tmp_path / "job"
    shutil.copytree(sweep_dir / rows[0]["run"], job)
    assert "experiment" not in read_run(job, tmp_path)["settings"]  # experiment=null
    hydra = OmegaConf.load(job / ".hydra" / "hydra.yaml")
    hydra.hydra.runtime.choices.experiment = "lesson"
    OmegaConf.save(hydra, job / ".hydra" / "hydra.yaml")
    assert read_run(job, tmp_path)["settings"]["experiment"] == "lesson"


def test_flops_per_character_is_the_hand_count():
    from charlm.model import matmul_flops_per_char

    # LSTM 2x256, embedding 16, 100 characters: 2*4*256*(16+256) + 2*4*256*(256+256) + head 2*256*100
    assert matmul_flops_per_char("lstm", 256, 2, vocab_size=100, embedding_dim=16) == 557_056 + 1_048_576 + 51_200
    # GRU 1x128, one-hot input (embedding 0): 2*3*128*(100+128) + 2*128*100; RNN: one matrix
    assert matmul_flops_per_char("gru", 128, 1, vocab_size=100) == 175_104 + 25_600
    assert matmul_flops_per_char("rnn", 128, 1, vocab_size=100) == 58_368 + 25_600


def test_the_table_has_parameters_and_flops_of_each_configuration(seeded):
    from charlm.model import matmul_flops_per_char

    sweep_dir, rows, configs = seeded
    for config in configs:
        vocab = len(
            torch.load(sweep_dir / config["runs"][0] / "checkpoints" / "best.ckpt", weights_only=True)[
                "hyper_parameters"
            ]["vocab"]
        )
        flops = matmul_flops_per_char(config["cell"], 16, 1, vocab_size=vocab, embedding_dim=8)
        assert (
            config["flops_per_char"] == flops
            and config["parameters"] == metrics_of(sweep_dir / config["runs"][0])["parameters"]
        )
        assert f"| {flops:,} |" in (sweep_dir / "summary.md").read_text()


def test_a_job_copied_without_its_checkpoints_keeps_its_flops_per_character(seeded, tmp_path):
    from charlm.summary import read_run

    sweep_dir, rows, _ = seeded
    job = tmp_path / "job"
    shutil.copytree(sweep_dir / rows[0]["run"], job)
    with_checkpoints = read_run(job, tmp_path)["flops_per_char"]
    shutil.rmtree(job / "checkpoints")
    assert with_checkpoints and read_run(job, tmp_path)["flops_per_char"] == with_checkpoints


def test_label_names_the_differing_settings_shortly():
    from charlm.summary import label

    settings = {
        "model.cell": "lstm",
        "model.layers": 2,
        "model.hidden_size": 256,
        "model.dropout": 0.2,
        "optimizer.lr": 0.003,
        "trainer.max_time": "00:00:05:00",
    }
    assert label(settings, ["model.dropout", "optimizer.lr", "model.layers"]) == "lstm 2×256 d=0.2 lr=0.003"
    assert label(settings, ["trainer.max_time"]) == "lstm 2×256 max_time=00:00:05:00"


def test_job_dirname_drops_config_groups_unless_ambiguous():
    assert (
        job_dirname(
            ["model.cell=gru", "model.layers=2", "model.hidden_size=256", "data.path=x.txt", "sweep=lesson"],
            ["data.path", "sweep"],
        )
        == "cell=gru,layers=2,hidden_size=256"
    )
    assert (
        job_dirname(["model.dropout=0.1", "data.dropout=0", "callbacks.samples.length=9", "data=text"], [])
        == "model.dropout=0.1,data.dropout=0,samples.length=9,data=text"
    )
    assert job_dirname([], []) == "defaults"


def test_job_dirname_rounds_decimals_when_asked():
    overrides = ["model.hidden_size=256", "optimizer.lr=0.0012345678", "model.dropout=0.2134", "model.cell=gru"]
    assert job_dirname(overrides, [], 2) == "hidden_size=256,lr=0.0012,dropout=0.21,cell=gru"
    assert job_dirname(overrides, []) == "hidden_size=256,lr=0.0012345678,dropout=0.2134,cell=gru"


def test_swept_keys_come_from_the_command_line_and_the_sweeper_params():
    task = [
        "model.cell=lstm,gru",
        "model.hidden_size=choice(8,16)",
        "data.path=x.txt",
        "trainer.max_steps=150",
        "model.layers=2",
        "resume=true",
        "optimizer.lr=0.1,0.2",
        "optimizer.lr=0.3",
    ]  # the last value wins
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
        assert math.isclose(float(row["chars_per_sec"]), metrics["chars_per_sec"])  # the mean over the fit
        assert row["undertrained"] == "undertrained: 8 steps (< 100)"
        assert int(row["parameters"]) == metrics["parameters"] > 0
        assert int(row["best_epoch"]) == torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["epoch"]
        cell, layers = name.split(",")[:2]
        assert (f"cell={row['cell']}", f"layers={row['layers']}", row["hidden_size"]) == (cell, layers, "16")
    best = min(rows.values(), key=lambda r: float(r["best_val_bpc"]))
    markdown = (sweep_dir / "summary.md").read_text()
    jobs = markdown[markdown.index("## Jobs") :]
    table = [line for line in jobs.splitlines() if line.startswith("| ")]
    assert len(table) == 5 and table[1].startswith(f"| {best['run']} | ")  # header, then rows by best val/bpc
    assert f"{float(best['best_val_bpc']):.4f}" in table[1]
    assert all(f"{line}\n" in result.stdout for line in table)  # printed when the sweep ended
    for plot in ("best_val_bpc.png", "learning_curves.png", "overfitting.png"):
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
        # HPARAMS' metric columns are the last values of the scalars; no one-point cards besides them:
        # the test's numbers are columns of the table and rows of the run's text summary
        assert not [tag for tag in scalars if tag == "epoch" or tag.startswith(("hparams/", "test/"))]
        assert hparams["test/bpc"].number_value == pytest.approx(metrics["test/bpc"], rel=1e-6)
        assert hparams["steps"].number_value == metrics["steps"] == 8
        summary = events.Tensors("summary/text_summary")[-1].tensor_proto.string_val[0].decode()
        assert f"| test/bpc | {metrics['test/bpc']:.4g} |" in summary and "| model.cell | " in summary

        # one step count everywhere: optimizer steps, as in max_steps and the checkpoints
        # (TINY validates every 4 of its 8 steps)
        assert [p.step for p in events.Scalars("val/bpc")] == [4, 8]
        assert [e.step for e in events.Tensors("samples/T=0/text_summary")] == [4, 8]
        assert all(p.step % 2 == 0 for p in events.Scalars("train/loss"))  # every log_every_n_steps=2 steps
        best_step = int(read_csv(sweep_dir / "summary.csv")[run.name]["best_step"])
        assert best_step in (4, 8) and any(
            math.isclose(p.value, metrics["best/val_bpc"], rel_tol=1e-6)
            for p in events.Scalars("val/bpc")
            if p.step == best_step
        )


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


@pytest.mark.slow
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
        assert dict(lesson.hydra.sweeper.params) == {
            "model.cell": "lstm,gru,mingru,minlstm",
            "model.layers": "1,2,3",
            "model.hidden_size": "128,256,512",
        }
        seeds = compose("config", overrides=["sweep=lesson_seeds"], return_hydra_config=True)
        assert seeds.hydra.sweeper.params.seed == "1,2" and seeds.trainer.max_time
        chars = compose(
            "config",
            overrides=["sweep=equal_chars", "data.batch_size=16", "data.nchars=32", "train_chars=10000"],
            return_hydra_config=True,
        )
        assert (
            chars.trainer.max_steps == 20 and chars.hydra.sweeper.params["model.cell"] == "lstm,gru"
        )  # ceil(10000/512)
        gpu = compose("config", overrides=["sweep=gpu"], return_hydra_config=True)
        assert gpu.trainer.accelerator == "gpu" and gpu.hydra.sweeper.params.seed == "1,2"
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
        optuna = compose("config", overrides=["hparams_search=optuna"], return_hydra_config=True)
        assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper")
        assert optuna.hydra.sweeper.direction == "minimize"
        searched = set(optuna.hydra.sweeper.params)
        assert searched == {"model.hidden_size", "model.layers", "optimizer.lr", "model.dropout"}


@pytest.mark.slow
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


def test_an_undertrained_run_is_flagged_and_never_the_best():
    """A job stopped after 2 steps scores the uniform guess; neither it nor its rival is crowned on that."""
    from charlm.summary import _config_cells, group, undertrained

    assert undertrained(2, 6.40, 84) == "undertrained: 2 steps (< 100)"
    assert undertrained(1, 6.40, 84) == "undertrained: 1 step (< 100)"
    assert undertrained(500, 6.39, 84) == "undertrained: val 6.39 bpc, the uniform guess is 6.39"
    assert undertrained(500, 2.1, 84) == ""
    short = {**fake_run("lstm", "lstm", 6.40, 1), "undertrained": undertrained(2, 6.40, 84)}
    trained = {
        **fake_run("gru", "gru", 6.45, 1),
        "undertrained": undertrained(900, 6.45, 84),
    }  # 900 steps, still uniform
    good = {**fake_run("rnn", "rnn", 3.0, 1), "undertrained": ""}
    configs = group([short, trained, good])
    for config in configs:
        config["_best"] = configs[0]
    cells = {c["configuration"]: _config_cells(c)[6] for c in configs}
    assert list(cells) == ["rnn 1×8", "lstm 1×8", "gru 1×8"]  # the trained one first, though its val is highest
    assert cells == {
        "rnn 1×8": "best",
        "lstm 1×8": "not ranked (undertrained: 2 steps (< 100))",
        "gru 1×8": "not ranked (undertrained: val 6.45 bpc, the uniform guess is 6.39)",
    }
    configs = group([short, trained])  # all undertrained: compared with the first, which is not the best
    for config in configs:
        config["_best"] = configs[0]
    assert [_config_cells(c)[6] for c in configs] == ["first, not best (all undertrained)", "+0.0500 (n=1: no spread)"]

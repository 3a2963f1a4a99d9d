"""Loggers: every run's scalars in <run>/metrics.csv whatever its loggers (charlm.loggers.MetricsFile), the
sweep summary read from that file, the logger presets (tensorboard, csv, wandb, mlflow, many), and
logger=csv alone through a run, a resume and a sweep with its summary and plots."""

import csv
import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from charlm.config import SweptKeys, compose_config
from charlm.errors import exit_on_user_error
from charlm.loggers import METRICS_FILE, MetricsFile, read_metrics
from charlm.summary import curves, main, resume_command
from charlm.training import build, end_summary, train

from conftest import ROOT, run_script

TINY = [
    "data=text",
    "data.nchars=32",
    "data.stride=32",
    "data.batch_size=16",
    "data.val_size=0.05",
    "data.test_size=0.05",
    "model.hidden_size=8",
    "model.embedding_dim=4",
    "trainer.val_check_interval=3",
    "trainer.log_every_n_steps=1",
    "~callbacks.samples",
    "~callbacks.surprisal_image",
]


def tiny(tiny_text, run_dir, *overrides):
    """A built job on the tiny corpus writing into ``run_dir``."""
    cfg = compose_config(
        [*TINY, f"data.path={tiny_text}", f"data.cache_dir={run_dir.parent / 'cache'}", *overrides], run_dir
    )
    L.seed_everything(0)
    return cfg, *build(cfg)


def rows(run_dir):
    with open(run_dir / METRICS_FILE, newline="") as f:
        return list(csv.DictReader(f))


def points(run_dir, name):
    return [(int(r["step"]), float(r["seconds"]), float(r["value"])) for r in rows(run_dir) if r["name"] == name]


def test_every_logged_scalar_is_a_row_of_metrics_csv_whatever_the_loggers(tiny_text, tmp_path):
    """logger=csv alone: <run>/metrics.csv has step, seconds of the fit, name and value of every scalar,
    and Lightning's CSVLogger writes its own file in a folder of its own (no clash)."""
    run_dir = tmp_path / "run"
    _, datamodule, model, trainer = tiny(tiny_text, run_dir, "logger=csv", "trainer.max_steps=6")
    trainer.fit(model, datamodule=datamodule)
    assert list(rows(run_dir)[0]) == ["step", "seconds", "name", "value"]
    val = points(run_dir, "val/bpc")
    assert [step for step, _, _ in val] == [3, 6]
    assert val[-1][2] == pytest.approx(float(trainer.callback_metrics["val/bpc"]))
    seconds = [float(r["seconds"]) for r in rows(run_dir)]
    assert 0 < seconds[0] and seconds == sorted(seconds)
    assert {"train/loss", "train_eval/bpc", "lr-AdamW"} <= {r["name"] for r in rows(run_dir)}
    assert (run_dir / "csv" / "version_0" / "metrics.csv").exists()  # the CSVLogger's own


def test_a_resumed_fit_drops_the_rows_after_its_checkpoint_and_continues_the_clock(tiny_text, tmp_path):
    """Rows a killed run wrote after its last checkpoint are cut off when the fit resumes from that
    checkpoint; the resumed rows' seconds go on from the checkpoint's fit_seconds; no row is there twice."""
    run_dir = tmp_path / "run"
    _, datamodule, model, trainer = tiny(tiny_text, run_dir, "trainer.max_steps=6")
    trainer.fit(model, datamodule=datamodule)
    first = rows(run_dir)
    with open(run_dir / METRICS_FILE, "a") as f:  # what a killed run logged after its checkpoint at step 6
        f.write("7,99.0,val/bpc,99.0\n7,99.0,train/loss,99.0\n8,99.5,val/b")  # the last row half-written
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    fit_seconds = torch.load(ckpt, weights_only=True)["fit_seconds"]

    _, datamodule, model, trainer = tiny(tiny_text, run_dir, "trainer.max_steps=9")
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    after = rows(run_dir)
    assert after[: len(first)] == first and all(r["value"] != "99.0" for r in after)
    assert [step for step, _, _ in points(run_dir, "val/bpc")] == [3, 6, 9]
    resumed = [float(r["seconds"]) for r in after[len(first) :]]
    assert float(first[-1]["seconds"]) <= fit_seconds < resumed[0] and resumed == sorted(resumed)
    # (not lr-AdamW: Lightning's LearningRateMonitor logs a resumed run's first learning rate a step late, at
    # the step of the next one, in every logger: its on_train_batch_start comes before compat.align_logging_step)
    keys = [(r["step"], r["name"]) for r in after if r["name"] != "lr-AdamW"]
    assert len(keys) == len(set(keys))


def test_a_fit_from_scratch_starts_the_file_over_and_an_old_checkpoint_keeps_rows_to_its_step(tmp_path):
    metrics = MetricsFile(tmp_path / METRICS_FILE)
    metrics.log_metrics({"val/bpc": 3.0}, step=2)
    metrics.log_metrics({"val/bpc": 2.5}, step=4)
    text = (tmp_path / METRICS_FILE).read_text()
    assert metrics.cut(2) == len(text.splitlines(keepends=True)[0]) + len("2,,val/bpc,3.0\n")  # no length recorded
    assert (tmp_path / METRICS_FILE).read_text() == "step,seconds,name,value\n2,,val/bpc,3.0\n"
    assert metrics.cut(0) == 0 and (tmp_path / METRICS_FILE).read_text() == ""  # a fit from scratch
    metrics.log_metrics({"val/bpc": 2.0}, step=1)
    assert read_metrics(tmp_path / METRICS_FILE, ["val/bpc"]) == {"val/bpc": {1: (None, 2.0)}}


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    path = tmp_path / METRICS_FILE
    metrics = MetricsFile(path)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    metrics.log_metrics({"val/bpc": 3.0}, step=2)
    assert not path.exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    metrics.log_metrics({"val/bpc": 3.0}, step=2)
    before = path.read_text()
    metrics.on_train_start(SimpleNamespace(is_global_zero=False, global_step=0), None)  # would start it over
    assert path.read_text() == before


def test_the_sweep_summary_reads_curves_from_metrics_csv(tmp_path):
    """A run without TensorBoard event files (logger=csv) has its curves (before: none, and the
    summary's columns read "val/bpc at 0 chars")."""
    (tmp_path / METRICS_FILE).write_text(
        "step,seconds,name,value\n2,1.5,train/loss,4.0\n4,2.0,val/bpc,3.5\n"
        "4,2.0,train_eval/bpc,3.25\n8,4.0,val/bpc,3.0\n8,4.0,train_eval/bpc,2.5\n"
    )
    found = curves(tmp_path, chars_per_step=100)
    assert found["val/bpc"] == {"step": [4, 8], "characters": [400, 800], "seconds": [2.0, 4.0], "value": [3.5, 3.0]}
    assert found["train_eval/bpc"]["value"] == [3.25, 2.5]


# an override resolved in each job, which the multirun process itself cannot resolve
INTERPOLATED = "logger.csv.save_dir=${hydra:runtime.output_dir}/csvlog"


def test_a_multirun_with_a_hydra_interpolation_on_its_command_line_names_folders_and_summarizes(tmp_path):
    """Before: SweptKeys and the summary's resume command resolved the overrides, and failed with
    "HydraConfig was not set" / "Unsupported interpolation type hydra": job folders named after every
    setting, no summary.md, and python -m charlm.summary ended in a traceback."""
    overrides = {
        "hydra": ["hydra.sweep.dir=/tmp/sweep", "hydra.mode=MULTIRUN"],
        "task": ["logger=csv", INTERPOLATED, "model.cell=lstm,gru"],
    }
    config = OmegaConf.create(
        {
            "hydra": {
                "overrides": overrides,
                "sweeper": {"params": None},
                "job": {"config": {"override_dirname": {"exclude_keys": ["resume"]}}},
            }
        }
    )
    SweptKeys().on_multirun_start(config)
    assert config.hydra.overrides.hydra[-1] == (
        "hydra.job.config.override_dirname.exclude_keys=[resume,logger,logger.csv.save_dir]"
    )
    OmegaConf.save(
        OmegaConf.create({"hydra": {"overrides": overrides, "runtime": {"cwd": str(ROOT)}}}), tmp_path / "multirun.yaml"
    )
    cwd, command = resume_command(tmp_path)
    assert "'logger.csv.save_dir=${hydra:runtime.output_dir}/csvlog'" in command and command.endswith("resume=true")


def run_here(run_dir, overrides, tiny_text):
    cfg = compose_config(
        [
            *TINY,
            f"data.path={tiny_text}",
            f"data.cache_dir={run_dir.parent / 'cache'}",
            "trainer.max_steps=2",
            *overrides,
        ],
        run_dir,
    )
    run_dir.mkdir(parents=True, exist_ok=True)  # as Hydra does
    train(cfg, run_dir)


WANDB_MISSING = (
    'logger=wandb needs the wandb package, which is not installed: pip install -e ".[wandb]" (or use '
    "another logger, e.g. logger=csv)"
)


@pytest.mark.parametrize("preset, module", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_logger_whose_package_is_missing_is_one_line_and_exit_2(
    tiny_text, tmp_path, capsys, monkeypatch, preset, module
):
    """Checked before anything is built (no data prepared, no checkpoint); shown whether or not the
    package is installed here."""
    real = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(SystemExit) as exited, exit_on_user_error():
        run_here(tmp_path / "run", [f"logger={preset}"], tiny_text)
    assert exited.value.code == 2
    message = WANDB_MISSING.replace("wandb", module).replace(f"logger={module}", f"logger={preset}")
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "checkpoints").exists()
    assert f"`error: {message}`" in (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")


def test_a_csv_logger_writing_into_the_run_folder_is_refused(tiny_text, tmp_path, capsys):
    """Lightning's CSVLogger there would write its metrics.csv over the run's own."""
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exited, exit_on_user_error():
        run_here(
            run_dir,
            ["logger=csv", "logger.csv.save_dir=${hydra:runtime.output_dir}", "logger.csv.version=''"],
            tiny_text,
        )
    assert exited.value.code == 2
    message = (
        f"a CSVLogger with save_dir={run_dir} would write its metrics.csv over the run's own "
        f"{run_dir}/metrics.csv; give it a folder of its own, e.g. "
        "logger.csv.save_dir='${hydra:runtime.output_dir}/csv' (logger=csv does)"
    )
    assert capsys.readouterr().err == f"error: {message}\n"
    docs = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert f"`error: {message.replace(str(run_dir), '<run>')}`" in docs


def test_the_end_summary_names_tensorboard_only_for_a_run_that_has_it(tmp_path):
    metrics = {"best/val_bpc": 2.0, "steps": 500, "vocab_size": 50}
    assert "tensorboard --logdir" in end_summary(tmp_path, metrics, "", None)
    assert "tensorboard" not in end_summary(tmp_path, metrics, "", None, tensorboard=False)


def test_the_presets_compose(tmp_path):
    targets = {
        name: {
            key: cfg["_target_"].rsplit(".", 1)[-1]
            for key, cfg in compose_config([f"logger={name}"], tmp_path).logger.items()
        }
        for name in ("tensorboard", "csv", "wandb", "mlflow", "many")
    }
    assert targets == {
        "tensorboard": {"tensorboard": "TensorBoardLogger"},
        "csv": {"csv": "CSVLogger"},
        "wandb": {"wandb": "WandbLogger"},
        "mlflow": {"mlflow": "MLFlowLogger"},
        "many": {"tensorboard": "TensorBoardLogger", "csv": "CSVLogger"},
    }


@pytest.mark.slow  # a fit, and wandb's service started
def test_wandb_offline_logs_into_the_run_folder(tiny_text, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason='wandb is not installed (an extra: pip install -e ".[wandb]")')
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    run_here(run_dir, ["logger=wandb"], tiny_text)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert points(run_dir, "val/bpc")  # metrics.csv all the same
    import wandb

    wandb.finish()


@pytest.mark.slow  # a fit
def test_mlflow_logs_to_a_local_file_store(tiny_text, tmp_path, monkeypatch):
    """MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE is set: charlm sets it for logger=mlflow."""
    pytest.importorskip("mlflow", reason='mlflow is not installed (an extra: pip install -e ".[mlflow]")')
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # unset, and unset again afterwards
    store = tmp_path / "mlruns"
    run_dir = tmp_path / "run"
    run_here(run_dir, ["logger=mlflow", f"logger.mlflow.tracking_uri=file:{store}"], tiny_text)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{store}")
    (run,) = client.search_runs([client.get_experiment_by_name("charlm").experiment_id])
    assert run.data.tags["run_dir"] == str(run_dir)
    assert "val/bpc" in run.data.metrics and float(run.data.params["parameters"]) > 0
    assert "test/bpc" in run.data.params  # the one-number results beside the settings, as in TensorBoard's HPARAMS


# --- logger=csv alone, end to end: a sweep of two jobs, one of them killed after a checkpoint and resumed ---


def multirun(sweep_dir, corpus, *overrides):
    return run_script(
        "train.py",
        "-m",
        *TINY,
        f"data.path={corpus}",
        f"data.cache_dir={sweep_dir.parent / 'cache'}",
        "logger=csv",
        INTERPOLATED,
        "model.cell=lstm,gru",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
        env={"OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def csv_sweep(tmp_path_factory):
    """``logger=csv`` alone: a sweep of two jobs (6 steps); then the LSTM job made a run killed after its
    checkpoint (no metrics.json, rows logged after the checkpoint) and the sweep resumed with 9 steps."""
    root = tmp_path_factory.mktemp("csv_sweep")
    corpus = root / "tiny.txt"
    corpus.write_text("".join(f"line {i:04d}: the quick brown fox jumps over the lazy dog.\n" for i in range(300)))
    sweep_dir = root / "sweep"
    first = multirun(sweep_dir, corpus, "trainer.max_steps=6")
    assert first.returncode == 0, first.stderr[-3000:]
    killed = sweep_dir / "cell=lstm"
    before = rows(killed)
    (killed / "metrics.json").unlink()
    with open(killed / METRICS_FILE, "a") as f:
        f.write("7,99.0,val/bpc,99.0\n")
    resumed = multirun(sweep_dir, corpus, "trainer.max_steps=9", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return sweep_dir, first, resumed, before


@pytest.mark.slow
def test_csv_alone_runs_and_resumes_with_its_rows_kept(csv_sweep):
    sweep_dir, first, resumed, before = csv_sweep
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["cell=gru", "cell=lstm"]
    assert "Traceback" not in first.stderr + resumed.stderr
    killed = sweep_dir / "cell=lstm"
    assert rows(killed)[: len(before)] == before
    assert [step for step, _, _ in points(killed, "val/bpc")] == [3, 6, 9]
    assert all(value != 99.0 for _, _, value in points(killed, "val/bpc"))
    assert json.loads((killed / "metrics.json").read_text())["steps"] == 9
    # the CSVLogger's files: one version per segment, its hparams.yaml with the results
    versions = sorted(p.name for p in (killed / "csvlog").iterdir())
    assert versions == ["version_0", "version_1"]
    assert "test/bpc" in (killed / "csvlog" / "version_1" / "hparams.yaml").read_text()
    assert not list(killed.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_csv_alone_sweep_summary_has_its_curves_and_plots(csv_sweep):
    sweep_dir, _, resumed, _ = csv_sweep
    summary = (sweep_dir / "summary.md").read_text()
    assert "val/bpc at 0 chars" not in summary and "val/bpc at 3,072 chars" in summary  # 6 steps x 16 x 32
    with open(sweep_dir / "curves.csv", newline="") as f:
        curve = list(csv.DictReader(f))
    assert sorted((r["run"], int(r["step"])) for r in curve) == [
        ("cell=gru", 3),
        ("cell=gru", 6),
        ("cell=lstm", 3),
        ("cell=lstm", 6),
        ("cell=lstm", 9),
    ]
    assert all(r["val_bpc"] and r["train_eval_bpc"] and float(r["seconds"]) > 0 for r in curve)
    for name in ("best_val_bpc.png", "learning_curves.png", "overfitting.png"):
        assert (sweep_dir / name).stat().st_size > 10_000
    # the command that rebuilds it (in this process; it reads the interpolated override for its resume command)
    (sweep_dir / "summary.md").unlink()
    main([str(sweep_dir)])
    assert (sweep_dir / "summary.md").read_text() == summary

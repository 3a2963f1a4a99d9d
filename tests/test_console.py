"""What a person sees: the progress line against the run's budget, the validation schedule, the end summary."""

import re
import shlex
import time
from types import SimpleNamespace

import lightning as L
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from charlm.config import compose_config
from charlm.progress import BudgetProgressBar
from charlm.training import build, end_summary, override_arg

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def tiny(tiny_text, tmp_path, *overrides):
    """A built job on the tiny corpus (about 30 training batches per epoch), no text samples."""
    cfg = compose_config(
        [
            "data=text",
            f"data.path={tiny_text}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.nchars=32",
            "data.stride=32",
            "data.batch_size=16",
            "data.val_size=0.05",
            "data.test_size=0.05",
            "model.hidden_size=8",
            "model.embedding_dim=4",
            "callbacks.progress_bar.refresh_rate=1",
            "~callbacks.samples",
            *overrides,
        ],
        tmp_path,
    )
    L.seed_everything(0)
    return build(cfg)


class Record(L.Callback):
    """The progress bar's (position, total) after every step and as the fit ends, and the steps
    validated at."""

    def __init__(self):
        self.bar, self.validated, self.last = [], [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = trainer.progress_bar_callback.train_progress_bar
        self.bar.append((trainer.global_step, bar.n, bar.total))

    def on_train_end(self, trainer, pl_module):
        bar = trainer.progress_bar_callback.train_progress_bar
        self.last = (bar.n, bar.total)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated.append(trainer.global_step)


def fit(datamodule, model, trainer, ckpt_path=None):
    record = Record()
    trainer.callbacks.append(record)  # after the bar: it sees the bar as drawn for that step
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return record


def test_bar_counts_the_step_budget_and_validates_ten_times(tiny_text, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")  # tqdm's width where stdout is not a terminal
    record = fit(*tiny(tiny_text, tmp_path, "trainer.max_steps=20"))
    assert record.bar == [(step, step, 20) for step in range(1, 21)]
    assert record.validated == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    lines = [ANSI.sub("", line) for line in re.split(r"[\r\n]", capsys.readouterr().out) if line.strip()]
    assert any(line.startswith("step 20/20 100%|") and "val " in line and " bpc" in line for line in lines)
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)


def test_bar_counts_the_epoch_budget(tiny_text, tmp_path):
    datamodule, model, trainer = tiny(tiny_text, tmp_path, "trainer.max_epochs=2")
    record = fit(datamodule, model, trainer)
    total = 2 * trainer.num_training_batches
    assert trainer.global_step == total > 20
    assert record.bar == [(step, step, total) for step in range(1, total + 1)]
    assert record.validated == [-(-k * total // 10) for k in range(1, 11)]  # ceil(k * total / 10)


def test_bar_counts_the_time_budget(tiny_text, tmp_path):
    # the schedule alone: a tiny model's validation is costly next to its steps, so no cap on its share
    datamodule, model, trainer = tiny(
        tiny_text,
        tmp_path,
        "trainer.max_time=00:00:00:02",
        "trainer.max_epochs=-1",
        "callbacks.validation.max_share=null",
    )
    record = fit(datamodule, model, trainer)
    steps = trainer.global_step
    # ends full: 100% (drawn as the fit ends; the last step may end before the time does, e.g. when the
    # validation after it uses the rest)
    assert steps > 20 and record.last == (steps, steps)
    # the total is the steps that fit in the time at the pace so far, so it is never below the position
    # (unknown at the first step: the clock starts when it ends)
    assert all(step == n and (n <= total if step > 1 else total is None or n <= total) for step, n, total in record.bar)
    # ten points of the time; a step slower than a tenth of it (a busy machine) passes over a point
    assert 6 <= len(record.validated) <= 11 and record.validated[-1] == steps


class SlowValidation(L.Callback):
    """Each validation takes ``seconds`` longer (a large model's scoring, on a short budget)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            time.sleep(self.seconds)


@pytest.mark.parametrize("max_share", [0.1, None])
def test_validation_takes_at_most_its_share_of_a_time_budget(tiny_text, tmp_path, max_share):
    datamodule, model, trainer = tiny(
        tiny_text,
        tmp_path,
        "trainer.max_time=00:00:00:03",
        "trainer.max_epochs=-1",
        f"callbacks.validation.max_share={'null' if max_share is None else max_share}",
    )
    trainer.callbacks.append(SlowValidation(0.15))  # 10 points would spend half the budget validating
    record = fit(datamodule, model, trainer)
    steps = trainer.global_step
    assert record.validated[-1] == steps  # the last step is validated either way
    if max_share is None:  # more than the cap below allows (10 on an idle machine; fewer when steps are slow)
        assert len(record.validated) > 0.1 * 3 / 0.15 + 2
    else:  # within 10% of the 3 s, plus the validation that may overrun it and the one when the time ends
        assert 2 <= len(record.validated) <= 0.1 * 3 / 0.15 + 2
        assert steps > 3 * len(record.validated)  # the budget went on training


def test_explicit_val_check_interval_wins(tiny_text, tmp_path):
    record = fit(*tiny(tiny_text, tmp_path, "trainer.max_steps=20", "trainer.val_check_interval=7"))
    assert record.validated == [7, 14, 20]  # 20: ValidateLastStep


def test_resumed_run_validates_at_the_same_steps(tiny_text, tmp_path):
    straight = fit(*tiny(tiny_text, tmp_path / "straight", "trainer.max_steps=30"))

    class StopAt(L.Callback):  # as Ctrl-C does: stop after a step, validate, save last.ckpt
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 10:
                trainer.should_stop = True

    datamodule, model, trainer = tiny(tiny_text, tmp_path / "cut", "trainer.max_steps=30")
    trainer.callbacks.insert(0, StopAt())
    first = fit(datamodule, model, trainer)
    assert first.validated == [3, 6, 9, 10]
    resumed = fit(
        *tiny(tiny_text, tmp_path / "cut", "trainer.max_steps=30"),
        ckpt_path=tmp_path / "cut" / "checkpoints" / "last.ckpt",
    )
    assert straight.validated == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert resumed.validated == [step for step in straight.validated if step > 10]
    assert resumed.bar[0][1:] == (11, 30)


def test_progress_line_fits_80_columns_with_everything_in_it():
    trainer = SimpleNamespace(
        callback_metrics={"train/loss": 12.3456, "val/bpc": 10.98765, "train/chars_per_sec": 1234567.0}
    )
    postfix = BudgetProgressBar().postfix(trainer)
    assert postfix == ", loss 12.346, val 10.988 bpc, 1.23M chars/s"
    line = BudgetProgressBar.BAR_FORMAT  # the longest: a six-digit budget, hours left
    line = (
        BudgetProgressBar()
        .init_train_tqdm()
        .format_meter(
            n=99999, total=100000, elapsed=3600 * 99, ncols=80, prefix="step", bar_format=line, postfix=postfix[2:]
        )
    )
    assert len(line) <= 80 and line.endswith(postfix) and "|" in line


@pytest.mark.parametrize("prompt", ["today ", 'say "hi"', "a,b", "${x}", "back\\", "1.5", "it's"])
def test_end_summary_commands_give_sample_py_the_prompt(prompt, tmp_path):
    summary = end_summary(
        tmp_path / "my run",
        {"best/val_bpc": 2.5, "test/bpc": 2.6},
        str(tmp_path / "my run" / "checkpoints" / "best.ckpt"),
        prompt,
    )
    lines = summary.splitlines()
    assert lines[0] == f"finished: {tmp_path / 'my run'} | best val bpc 2.5000, test bpc 2.6000"
    sample = shlex.split(lines[1].split(":", 1)[1])
    assert sample[:2] == ["python", "sample.py"]
    parsed = dict((o.key_or_group, o.value()) for o in OverridesParser.create().parse_overrides(sample[2:]))
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(OmegaConf.create(parsed), resolve=True) == {
        "ckpt": str(tmp_path / "my run" / "checkpoints" / "best.ckpt"),
        "prompt": prompt,
    }
    assert shlex.split(lines[2].split(":", 1)[1]) == ["tensorboard", "--logdir", str(tmp_path / "my run")]
    if prompt == "today ":
        assert "'prompt=\"today \"'" in lines[1]


def test_override_arg_leaves_plain_values_bare():
    assert override_arg("ckpt", "outputs/runs/x/checkpoints/best.ckpt") == "ckpt=outputs/runs/x/checkpoints/best.ckpt"
    assert override_arg("prompt", "today ", quote=True) == "'prompt=\"today \"'"


class SlowSteps(L.Callback):
    """Training steps ``steps`` (0-based) take ``seconds`` longer: a busy machine's slow start."""

    def __init__(self, seconds, steps):
        self.seconds, self.steps, self.lrs = seconds, steps, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.steps:
            time.sleep(self.seconds)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])  # the step's learning rate


def test_a_slow_first_step_does_not_come_out_of_the_time_budget(tiny_text, tmp_path):
    datamodule, model, trainer = tiny(
        tiny_text,
        tmp_path,
        "trainer.max_time=00:00:00:02",
        "trainer.max_epochs=-1",
        "callbacks.validation.max_share=null",
    )
    slow = SlowSteps(3.0, steps={0})  # the first step alone takes longer than the whole budget
    trainer.callbacks.insert(0, slow)
    record = fit(datamodule, model, trainer)
    assert trainer.global_step >= 5  # before: the budget ended after the first step
    assert record.validated[-1] == trainer.global_step


def test_the_learning_rate_peaks_after_a_slow_warm_up(tiny_text, tmp_path):
    # warm-up steps 1-4 take 0.3 s each of a 3 s budget; the cosine decays over the time left after them
    datamodule, model, trainer = tiny(
        tiny_text,
        tmp_path,
        "trainer.max_time=00:00:00:03",
        "trainer.max_epochs=-1",
        "callbacks.lr_decay.warmup_steps=5",
        "optimizer.lr=0.01",
        "callbacks.validation.max_share=null",
    )
    slow = SlowSteps(0.3, steps={1, 2, 3, 4})
    trainer.callbacks.insert(0, slow)
    fit(datamodule, model, trainer)
    lrs = slow.lrs
    assert len(lrs) > 5 and max(lrs) == pytest.approx(0.01)  # before: 0.01 * 0.81 (0.4 of the time was used)
    assert lrs[-1] < 0.01  # and then decays


def test_run_folders_start_with_the_settings_given_and_need_no_quoting():
    """TensorBoard shortens run names from the end (``runs/2026-12-0…`` for every run before): the
    settings come first. The folder still goes into ``ckpt=`` and ``resume=`` without Hydra quotes."""
    from charlm.config import run_dir, run_name

    assert (
        run_name(
            [
                "model.layers=3",
                "model.cell=gru",
                "data.path=../shared/data/ag_news/test.csv",
                "resume=false",
                "hydra.job.chdir=false",
            ]
        )
        == "layers-3+cell-gru+path-test.csv"
    )
    assert run_name(["data.seed=1", "seed=2"]) == "data.seed-1+seed-2"  # same short key: the full keys
    assert run_name([]) == "" and len(run_name([f"model.hidden_size={'9' * 30}", "model.layers=2" * 9])) <= 60
    folder = run_dir("false", ["model.layers=3", "trainer.max_time=00:00:05:00"])
    assert re.fullmatch(r"outputs/runs/layers-3\+max_time-00_00_05_00_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+", folder)
    assert re.fullmatch(r"outputs/runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+", run_dir("false", []))
    assert run_dir("outputs/runs/old", ["model.layers=3"]) == "outputs/runs/old"  # resume=<run folder>
    path = f"{folder}/checkpoints/best.ckpt"
    assert OverridesParser.create().parse_override(f"ckpt={path}").value() == path
    assert override_arg("ckpt", path) == f"ckpt={path}"


def test_an_error_during_training_starts_on_a_line_of_its_own(tiny_text, tmp_path, capsys):
    """The bar redraws its line with carriage returns; a run that stops with an error (a full disk)
    ends that line first, so the error line that follows is not glued to the bar."""
    from charlm.errors import UserError

    class Fail(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                raise UserError("the disk is full")

    datamodule, model, trainer = tiny(tiny_text, tmp_path, "trainer.max_steps=20")
    trainer.callbacks.append(Fail())
    capsys.readouterr()
    with pytest.raises(UserError):
        trainer.fit(model, datamodule=datamodule)
    out = capsys.readouterr().out
    assert "step 3/20" in out and out.endswith("\n")  # before: the bar's line, unterminated


def test_a_csv_logger_alone_trains_with_samples_and_images(tiny_text, tmp_path):
    """Text samples, the surprisal image and the run summary go to the loggers that take them; with
    Lightning's CSVLogger alone (scalars only) the run trains, validates and logs its scalars
    (before: AttributeError 'ExperimentWriter' object has no attribute 'add_text' at the first validation)."""
    from charlm.training import log_hparams

    cfg = compose_config(
        [
            "data=text",
            f"data.path={tiny_text}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.nchars=32",
            "data.stride=32",
            "data.batch_size=16",
            "data.val_size=0.05",
            "data.test_size=0.05",
            "model.hidden_size=8",
            "model.embedding_dim=4",
            "trainer.max_steps=6",
            "callbacks.samples.length=10",
            "logger=csv",
            f"logger.csv.save_dir={tmp_path / 'csv'}",
        ],
        tmp_path,
    )
    L.seed_everything(0)
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    log_hparams(trainer, cfg, {"parameters": 1, "test/bpc": 2.0})
    rows = (next((tmp_path / "csv").rglob("metrics.csv"))).read_text()
    assert "val/bpc" in rows.splitlines()[0] and len(rows.splitlines()) > 2


def test_lightnings_note_on_a_resumed_runs_checkpoint_folder_is_quiet():
    """resume= writes into the run's own checkpoints/: Lightning's warning that the folder is not empty
    reached the console of every resumed run; other warnings still come through."""
    import warnings

    from charlm.config import quiet_known_noise

    with warnings.catch_warnings(record=True) as caught:
        quiet_known_noise()
        warnings.warn("Checkpoint directory /runs/r/checkpoints exists and is not empty.", UserWarning, stacklevel=1)
        warnings.warn("a warning charlm does not know", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning charlm does not know"]

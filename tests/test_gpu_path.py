"""The GPU path, tested on the CPU: precision chosen by trying it (failures simulated), no host-device
sync per training step, data cut on the device, and a checkpoint written on a GPU loading on the CPU."""

import collections
import json
import logging
import sys
import weakref

import lightning as L
import pytest
import torch

from charlm import precision
from charlm.callbacks import NonFiniteLoss, StopOnNonFiniteLoss
from charlm.config import compose_config
from charlm.errors import UserError
from charlm.training import build

from conftest import tiny_job_settings

MODEL = dict(cell="lstm", hidden_size=8, layers=2, dropout=0.1, embedding_dim=0)


def tiny_config(tiny_text, tmp_path, *overrides):
    return compose_config(
        [
            *tiny_job_settings(tiny_text, tmp_path),
            *overrides,
        ],
        tmp_path / "run",
    )


# --- precision


@pytest.fixture
def no_half_rnn(monkeypatch):
    """An RNN layer that raises, as a cuDNN without bfloat16 (or fp16) RNNs does, under ``dtypes`` autocast."""

    def simulate(*dtypes):
        real = torch.nn.LSTM.forward

        def forward(self, *args, **kwargs):
            if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in dtypes:
                raise RuntimeError(f"\"_cudnn_rnn\" not implemented for '{str(torch.get_autocast_dtype('cpu'))[6:]}'")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(torch.nn.LSTM, "forward", forward)

    return simulate


def test_the_probe_runs_one_real_training_step_and_reports_a_failing_one(no_half_rnn):
    cpu = torch.device("cpu")
    assert precision.try_precision(MODEL, "bf16-mixed", cpu) is None
    assert precision.try_precision(MODEL, "64-true", cpu) is None
    no_half_rnn(torch.bfloat16)
    assert precision.try_precision(MODEL, "bf16-mixed", cpu) == "\"_cudnn_rnn\" not implemented for 'bfloat16'"
    assert precision.try_precision(MODEL, "32-true", cpu) is None


@pytest.mark.parametrize(
    "failing, expected", [((), "bf16-mixed"), (("bf16-mixed",), "16-mixed"), (("bf16-mixed", "16-mixed"), "32-true")]
)
def test_auto_takes_the_first_precision_that_runs_with_one_line_on_a_fallback(monkeypatch, caplog, failing, expected):
    tried = []

    def fake_try(model_args, name, device):
        tried.append(name)
        return "not implemented for 'BFloat16'" if name in failing else None

    monkeypatch.setattr(precision, "try_precision", fake_try)
    monkeypatch.setattr(precision, "training_device", lambda accelerator: torch.device("cuda", 0))
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    matmul = torch.get_float32_matmul_precision()
    try:
        with caplog.at_level(logging.WARNING, logger="charlm.precision"):
            assert precision.choose_precision("auto", "auto", MODEL) == expected
        assert tried == list(precision.AUTO_ORDER[: len(failing) + 1])
        lines = [r.getMessage() for r in caplog.records]
        if failing:
            assert lines == [
                f"precision: {'; '.join(f'{n} failed (not implemented for {chr(39)}BFloat16{chr(39)})' for n in failing)}"
                f" on cuda:0; training with {expected}" + (" (TF32 matmuls)" if expected == "32-true" else "")
            ]
        else:
            assert lines == []
        assert torch.get_float32_matmul_precision() == ("high" if expected == "32-true" else matmul)
    finally:
        torch.set_float32_matmul_precision(matmul)


def test_auto_skips_bf16_on_a_gpu_without_native_bf16_and_is_32_true_on_the_cpu(monkeypatch):
    tried = []
    monkeypatch.setattr(precision, "try_precision", lambda m, name, d: tried.append(name))
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert precision.choose_precision("auto", "cpu", MODEL) == "32-true" and tried == []  # the CPU: nothing tried
    monkeypatch.setattr(precision, "training_device", lambda accelerator: torch.device("cuda", 0))
    assert precision.choose_precision("auto", "gpu", MODEL) == "16-mixed" and tried == ["16-mixed"]


def test_a_simulated_gpu_without_half_rnns_trains_in_32_true_through_build(
    tiny_text, tmp_path, monkeypatch, no_half_rnn
):
    """The whole decision as train.py makes it: on a 'GPU' (the CPU, through the GPU code path)
    whose RNN kernels refuse both half types, the Trainer is built with 32-true."""
    no_half_rnn(torch.bfloat16, torch.float16)
    monkeypatch.setattr(precision, "on_gpu", lambda device: True)
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.setattr(
        precision,
        "precision_plugin",  # fp16 autocast as on a GPU (Lightning swaps it on the CPU)
        lambda name, device: (
            L.pytorch.plugins.precision.MixedPrecision(name, "cpu")
            if name.endswith("mixed")
            else L.pytorch.plugins.precision.Precision()
        ),
    )
    matmul = torch.get_float32_matmul_precision()
    try:
        _, _, trainer = build(tiny_config(tiny_text, tmp_path, "trainer.max_steps=1"))
        assert trainer.precision == "32-true"
    finally:
        torch.set_float32_matmul_precision(matmul)


def test_an_explicit_precision_the_device_cannot_run_is_one_line(tiny_text, tmp_path, no_half_rnn):
    no_half_rnn(torch.bfloat16)
    with pytest.raises(
        UserError,
        match=r"^trainer\.precision=bf16-mixed cannot train this model on cpu "
        r"\(\"_cudnn_rnn\" not implemented for 'bfloat16'\); use trainer\.precision=auto",
    ):
        build(tiny_config(tiny_text, tmp_path, "trainer.precision=bf16-mixed"))
    _, _, trainer = build(tiny_config(tiny_text, tmp_path, "trainer.precision=64-true"))  # honoured as asked
    assert trainer.precision == "64-true"


# --- no host-device sync per step

SYNC_CALLS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__format__")
# Calls that read tensors kept on the host also when training on a GPU, so they do not wait for it:
HOST_READS = {
    "torch/optim/optimizer.py:_get_value",  # Adam's step counter: a CPU tensor unless capturable=True
}


class SyncRecorder:
    """Counts, per training step, the calls that make the host wait for the GPU (a read of a device
    tensor's value, or a copy of it to the host), by the code that made them. On the CPU every
    tensor is on the host; a tensor produced by ``.cpu()`` (and its copies) counts as a host copy,
    as it would be on a GPU."""

    def __init__(self, monkeypatch):
        self.calls = collections.defaultdict(collections.Counter)
        self.step, self.inside, self._host = None, False, {}  # id -> weakref (a WeakSet would compare tensors)
        for name in SYNC_CALLS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        for name in ("clone", "detach", "squeeze"):  # what Lightning does to a logged value
            monkeypatch.setattr(torch.Tensor, name, self._propagate(getattr(torch.Tensor, name)))

    def is_host(self, tensor) -> bool:
        ref = self._host.get(id(tensor))
        return ref is not None and ref() is tensor

    def mark_host(self, tensor) -> None:
        self._host[id(tensor)] = weakref.ref(tensor)

    def _propagate(self, method):
        def wrapper(tensor, *args, **kwargs):
            out = method(tensor, *args, **kwargs)
            if self.is_host(tensor):
                self.mark_host(out)
            return out

        return wrapper

    def _wrap(self, name, method):
        def wrapper(tensor, *args, **kwargs):
            if self.inside or self.step is None or self.is_host(tensor):
                return method(tensor, *args, **kwargs)
            self.inside = True
            try:
                frame = sys._getframe(1)
                where = f"{frame.f_code.co_filename.split('site-packages/')[-1]}:{frame.f_code.co_name}"
                if where not in HOST_READS:
                    self.calls[self.step][f"{name} at {where}"] += 1
                out = method(tensor, *args, **kwargs)
                if name == "cpu":
                    out = out.view_as(out)  # a new tensor on a GPU; here one to mark as the host copy
                    self.mark_host(out)
                return out
            finally:
                self.inside = False

        return wrapper


class StepTracker(L.Callback):
    def __init__(self, recorder):
        self.recorder = recorder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.recorder.step = trainer.global_step + 1

    def on_validation_start(self, trainer, pl_module):
        self.recorder.step = None  # validation reads its metrics once; not a training step

    def on_validation_end(self, trainer, pl_module):
        self.recorder.step = trainer.global_step


def test_training_steps_between_logging_steps_make_no_host_device_sync(tiny_text, tmp_path, monkeypatch):
    """Only logging steps (every trainer.log_every_n_steps) and the last step (validation,
    checkpoints) may read device values on the host; a per-step .item(), bool(tensor), .cpu() or
    print of a device tensor in the step, a callback or Lightning's loop fails this test."""
    log_every, steps = 10, 30
    cfg = tiny_config(
        tiny_text,
        tmp_path,
        f"trainer.max_steps={steps}",
        f"trainer.log_every_n_steps={log_every}",
        "callbacks.progress_bar.refresh_rate=3",  # the bar redraws between logging steps too
        "callbacks.validation.points=1",
    )  # validation (a sync point of its own) at the end only
    L.seed_everything(0)
    datamodule, model, trainer = build(cfg)
    recorder = SyncRecorder(monkeypatch)
    trainer.callbacks.insert(0, StepTracker(recorder))
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == steps
    syncing = {step: dict(calls) for step, calls in recorder.calls.items() if step % log_every and step != steps}
    assert syncing == {}
    assert any(step % log_every == 0 for step in recorder.calls)  # the recorder does see the logging steps' reads


def nan_at_step_25(tiny_text, tmp_path, validations: int):
    """A 40-step job (logging every 20 steps, ``validations`` validations) whose loss is NaN at step 25."""
    cfg = tiny_config(
        tiny_text,
        tmp_path,
        "trainer.max_steps=40",
        "trainer.log_every_n_steps=20",
        "callbacks.last_checkpoint.every_n_train_steps=100",
        f"callbacks.validation.points={validations}",
    )
    L.seed_everything(0)
    datamodule, model, trainer = build(cfg)
    real_step = model.training_step
    model.training_step = lambda batch, batch_idx: (
        real_step(batch, batch_idx) * (torch.nan if trainer.global_step == 24 else 1)
    )
    return datamodule, model, trainer


def test_the_nan_check_reads_the_loss_on_logging_steps_and_before_a_checkpoint_only(tiny_text, tmp_path):
    """A NaN between logging steps is caught at the next check, naming its step; with no
    checkpoint in between, none is written from the broken weights."""
    datamodule, model, trainer = nan_at_step_25(tiny_text, tmp_path, validations=1)
    check = next(c for c in trainer.callbacks if isinstance(c, StopOnNonFiniteLoss))
    checked_at = []
    real_check = check.check
    check.check = lambda trainer, module: checked_at.append(trainer.global_step) or real_check(trainer, module)
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 25; .*none saved yet"):
        trainer.fit(model, datamodule=datamodule)
    assert checked_at == [20, 40]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_nan_before_a_validation_is_caught_before_it(tiny_text, tmp_path):
    """Validation (and its text samples) never runs on broken weights: the check runs first."""
    datamodule, model, trainer = nan_at_step_25(tiny_text, tmp_path, validations=4)
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 25; .*checkpoints keep the last good weights"):
        trainer.fit(model, datamodule=datamodule)  # validation at step 30 would have sampled from NaN weights


# --- the training windows on the device (simulated: the CPU through the on-device code path)


def data_module(path, tmp_path, on_device, **kwargs):
    from charlm.data import CharDataModule

    dm = CharDataModule(
        corpus="ag_news",
        path=str(path),
        val_size=5,
        test_size=5,
        nchars=16,
        stride=4,
        batch_size=8,
        cache_dir=str(tmp_path / "cache"),
        on_device=on_device,
        **kwargs,
    )
    dm.setup("fit")
    return dm


def as_rank(dm, rank, world_size):
    from types import SimpleNamespace

    dm.trainer = SimpleNamespace(
        global_rank=rank, world_size=world_size, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    return dm


def batches_of(dm, epoch):
    loader = dm.train_dataloader()
    loader.batch_sampler.position = epoch * len(loader.batch_sampler)  # the start of that epoch
    return loader, list(loader)


@pytest.mark.parametrize("rank, world_size", [(0, 1), (0, 2), (1, 2)])
def test_windows_on_the_device_are_the_host_paths_batches_in_the_same_order(tiny_csv, tmp_path, rank, world_size):
    from charlm.windows import DeviceWindows, WindowDataset

    host = as_rank(data_module(tiny_csv, tmp_path, False, num_workers=1, pin_memory=True), rank, world_size)
    device = as_rank(data_module(tiny_csv, tmp_path, True, num_workers=1, pin_memory=True), rank, world_size)
    for epoch in (0, 1):
        host_loader, host_batches = batches_of(host, epoch)
        device_loader, device_batches = batches_of(device, epoch)
        assert isinstance(device_loader.dataset, DeviceWindows) and not isinstance(host_loader.dataset, DeviceWindows)
        assert device_loader.num_workers == 0 and not device_loader.pin_memory  # nothing prepared on the host
        assert len(device_batches) == len(host_batches) > 1
        for (hx, hy), (dx, dy) in zip(host_batches, device_batches):
            assert dx.dtype == hx.dtype == torch.int64 and torch.equal(dx, hx) and torch.equal(dy, hy)
    # auto on the CPU: the host path
    assert isinstance(data_module(tiny_csv, tmp_path, "auto").train_dataloader().dataset, WindowDataset)


class RecordInputs(L.Callback):
    def __init__(self):
        self.inputs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.inputs.append(batch[0].clone())


def fit_and_resume(tiny_text, tmp_path, on_device):
    """Batches of a run stopped after 5 steps and resumed to 9 from its last.ckpt (mid-epoch)."""
    from charlm.windows import DeviceWindows

    recorded = []
    for steps, ckpt in ((5, None), (9, tmp_path / "run" / "checkpoints" / "last.ckpt")):
        cfg = tiny_config(
            tiny_text,
            tmp_path,
            f"data.on_device={str(on_device).lower()}",
            f"trainer.max_steps={steps}",
            "~callbacks.progress_bar",
            "+trainer.enable_progress_bar=false",
        )
        L.seed_everything(0)
        datamodule, model, trainer = build(cfg)
        recorder = RecordInputs()
        trainer.callbacks.append(recorder)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        recorded.append(recorder.inputs)
        assert isinstance(trainer.train_dataloader.dataset, DeviceWindows) == on_device
    assert len(recorded[0]) == 5 and len(recorded[1]) == 4 and trainer.num_training_batches > 9
    return recorded


def test_a_run_on_device_resumes_mid_epoch_with_the_host_paths_batches(tiny_text, tmp_path):
    host = fit_and_resume(tiny_text, tmp_path / "host", False)
    device = fit_and_resume(tiny_text, tmp_path / "device", True)
    for host_part, device_part in zip(host, device):
        assert all(torch.equal(h, d) for h, d in zip(host_part, device_part))


# --- several sweep jobs side by side


@pytest.mark.slow
def test_two_jobs_side_by_side_give_the_results_of_the_same_jobs_one_after_another(ag_news_test_csv, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from conftest import run_script

    tiny = [
        "model.hidden_size=16,24",
        "model.embedding_dim=8",
        "data.nchars=32",
        "data.stride=32",
        "data.batch_size=16",
        "data.val_size=20",
        "data.test_size=20",
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        "callbacks.samples.length=10",
        f"data.path={ag_news_test_csv}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
    ]
    results = {}
    for launcher in ("basic", "parallel"):
        sweep = tmp_path / launcher
        result = run_script(
            "train.py",
            "-m",
            f"hydra/launcher={launcher}",
            *tiny,
            f"hydra.sweep.dir={sweep}",
            env={"OMP_NUM_THREADS": "1"},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").exists())
        assert len(jobs) == 2
        results[launcher] = {
            job.name: (
                json.loads((job / "metrics.json").read_text()),
                torch.load(job / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"],
            )
            for job in jobs
        }
    assert results["basic"].keys() == results["parallel"].keys()
    for name, (metrics, weights) in results["basic"].items():
        parallel_metrics, parallel_weights = results["parallel"][name]
        for key in ("best/val_bpc", "test/bpc", "steps"):
            assert parallel_metrics[key] == metrics[key], (name, key)
        assert all(torch.equal(parallel_weights[k], w) for k, w in weights.items())


# --- a checkpoint written on a GPU, read on the CPU


def test_a_checkpoint_written_on_a_gpu_samples_and_resumes_on_the_cpu(tiny_text, tmp_path, monkeypatch):
    """Every tensor of the file tagged as CUDA memory (as torch.save writes it on a GPU), with the
    CUDA random states a GPU run saves: read_checkpoint, sampling and resuming still work here."""
    import torch.serialization

    from charlm.module import load_checkpoint
    from charlm.sampling import generate_text

    quiet = ["~callbacks.progress_bar", "+trainer.enable_progress_bar=false"]
    L.seed_everything(0)
    datamodule, model, trainer = build(tiny_config(tiny_text, tmp_path, "trainer.max_steps=3", *quiet))
    trainer.fit(model, datamodule=datamodule)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["rng_states"]["cuda"] = [
        torch.cuda.default_generators[0].get_state() if torch.cuda.is_available() else torch.get_rng_state()
    ]
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(checkpoint, last)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(last, weights_only=True)  # the file really says cuda:0
    sampled = load_checkpoint(last)
    assert len(generate_text(sampled.net, sampled.vocab, "line", 20)[0]) == 24
    L.seed_everything(0)
    datamodule, model, trainer = build(tiny_config(tiny_text, tmp_path, "trainer.max_steps=5", *quiet))
    trainer.fit(model, datamodule=datamodule, ckpt_path=last, weights_only=True)
    assert trainer.global_step == 5


def test_the_gpu_preset_scales_the_learning_rate_with_the_square_root_of_the_batch(tmp_path):
    for batch in (256, 1024):
        cfg = compose_config(["experiment=gpu", f"data.batch_size={batch}"], tmp_path)
        assert cfg.data.batch_size == batch and cfg.trainer.precision == "auto"
        assert cfg.optimizer.lr == pytest.approx(0.006 * (batch / 16) ** 0.5)


@pytest.mark.slow
def test_the_gpu_benchmark_says_in_one_line_that_it_needs_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run benchmarks/gpu.py itself")
    from conftest import run_script

    result = run_script("benchmarks/gpu.py", timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: benchmarks/gpu.py measures the GPU path") and result.stderr.count("\n") == 1

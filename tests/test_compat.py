"""charlm.compat on the installed libraries: each private name still exists and still means what charlm
relies on. A failure here names the library change to adapt to."""

import ast
import importlib
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from charlm import compat


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.trainer.global_step, compat.logs_this_step(self.trainer)))
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(64, 2)), batch_size=4)


def trainer(**kwargs):
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        **kwargs,
    )


def test_the_launchers_tell_spawned_and_relaunched_ranks_apart():
    assert compat.spawns_ranks(trainer(strategy="ddp_spawn", devices=2))
    assert not compat.spawns_ranks(trainer(devices=1))
    assert compat.relaunches_script(trainer(strategy="ddp", devices=2))
    assert not compat.relaunches_script(trainer(strategy="ddp_spawn", devices=2))


class ValidateAt(L.Callback):
    """Validates after the batches of ``steps`` only, through compat (as BudgetValidation does)."""

    def __init__(self, steps):
        self.steps, self.validated = steps, []

    def on_fit_start(self, trainer, pl_module):
        trainer.check_val_every_n_epoch, trainer.val_check_interval = None, compat.NEVER

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        compat.validate_after_this_batch(trainer, trainer.global_step in self.steps)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated.append(trainer.global_step)


def test_validation_after_a_chosen_batch_and_the_logging_steps():
    module, validate = Tiny(), ValidateAt({3, 7})
    fit = trainer(max_steps=10, log_every_n_steps=3, callbacks=[validate], num_sanity_val_steps=0)
    fit.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    assert validate.validated == [3, 7]  # before the step that reached them ended: not at every step, not never
    assert [step for step, logs in module.seen if logs] == [2, 5, 8]  # Lightning writes after steps 3, 6, 9
    fit.fit_loop.epoch_loop._batches_that_stepped = 0
    compat.align_logging_step(fit)
    assert fit.fit_loop.epoch_loop._batches_that_stepped == fit.global_step == 10


def test_checkpoint_and_progress_bar_attributes():
    assert compat.saves_on_train_epoch_end(ModelCheckpoint(save_on_train_epoch_end=False)) is False
    assert compat.saves_on_train_epoch_end(ModelCheckpoint()) is None
    assert compat.progress_bar_line(TQDMProgressBar()) is None


def test_hydra_names():
    from hydra.core.utils import JobReturn, JobStatus

    module, name = compat.HYDRA_BASIC_LAUNCHER.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name).__name__ == "BasicLauncher"
    error = ValueError("bad")
    job = JobReturn(status=JobStatus.FAILED, _return_value=error)
    with pytest.raises(ValueError):
        _ = job.return_value  # the public property raises, hence compat.job_error
    assert compat.job_error(job) is error


def test_dataset_fingerprint_and_tensorboard_writer(tmp_path):
    datasets = pytest.importorskip("datasets")
    from torch.utils.tensorboard import SummaryWriter

    a, b = (datasets.Dataset.from_dict({"text": [text]}) for text in ("one", "two"))
    assert isinstance(compat.dataset_fingerprint(a), str) and compat.dataset_fingerprint(
        a
    ) != compat.dataset_fingerprint(b)
    writer = SummaryWriter(str(tmp_path))
    assert hasattr(compat.tensorboard_file_writer(writer), "add_summary")
    writer.close()


LIBRARIES = ("lightning", "pytorch_lightning", "hydra", "omegaconf", "torch", "torchmetrics", "datasets", "tensorboard")
ROOT = Path(__file__).resolve().parents[1]


def private_library_names(path: Path) -> list[str]:
    """``line: name`` of each private (single-underscore) name of a library that ``path`` imports, or
    reaches as an attribute of an imported library module (``torch._dynamo``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, modules = [], set()

    def private(dotted: str) -> bool:
        return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    modules.add(alias.asname or alias.name.split(".")[0])
                    if private(alias.name):
                        found.append(f"{node.lineno}: {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            for alias in node.names:
                if private(f"{node.module}.{alias.name}"):
                    found.append(f"{node.lineno}: {node.module}.{alias.name}")
                elif not alias.name[0].isupper():  # a submodule imported by name (from torch import nn)
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_private_library_name_outside_compat():
    """Every private name of a library lives in charlm/compat.py, where its reason and its test are."""
    files = [
        *sorted((ROOT / "charlm").glob("*.py")),
        *sorted(ROOT.glob("*.py")),
        *sorted((ROOT / "benchmarks").glob("*.py")),
    ]
    found = {
        str(path.relative_to(ROOT)): names
        for path in files
        if path.name != "compat.py" and (names := private_library_names(path))
    }
    assert found == {}
    assert private_library_names(ROOT / "charlm" / "compat.py")  # the check finds them where they are


def test_the_check_finds_each_form_of_private_name(tmp_path):
    code = tmp_path / "code.py"
    code.write_text(
        "import torch\nimport torch._dynamo\nfrom torch import nn\n"
        "from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher\n"
        "from hydra._internal.utils import run_and_report\n"
        "x = torch._C\ny = nn._reduction\nz = torch.nn.functional.relu\nclass A:\n    def f(self):\n        self._g()\n"
    )
    assert [line.split(":")[0] for line in private_library_names(code)] == ["2", "4", "5", "6", "7"]


def test_pytest_xdist_keeps_each_group_on_one_worker(request):
    """Under pytest-xdist with --dist loadgroup (pyproject), a test's node id carries its group, which is
    how the scheduler keeps a module's shared runs on one worker; a pytest that ignores the renamed id
    (9.2 with xdist 3.8) would make every worker repeat them, at twice the cost."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None or request.config.getvalue("dist") != "no":
        pytest.skip("runs in a pytest-xdist worker (the default: -n auto --dist loadgroup)")
    if not request.config.getvalue("loadgroup"):
        pytest.skip("another --dist than loadgroup")
    assert request.node.nodeid.endswith("@test_compat")

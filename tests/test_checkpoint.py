import errno
import io
import os
from pathlib import Path

import pytest
import torch

import charlm.module
from charlm.config import compose_config
from charlm.errors import UserError, exit_on_user_error
from charlm.module import CharLM, load_checkpoint
from charlm.sampling import generate_text
from charlm.training import train
from charlm.vocabulary import Vocabulary

from conftest import tiny_job_settings


def save_like_lightning(module: CharLM, path):
    """The two keys of a Lightning checkpoint that sampling needs."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)


@pytest.fixture
def module():
    torch.manual_seed(0)
    vocab = Vocabulary.from_text("hello world, how are you?")
    return CharLM(
        vocab=vocab.chars,
        model=dict(cell="gru", hidden_size=16, layers=2, embedding_dim=4),
        optimizer={"_target_": "torch.optim.AdamW", "lr": 0.003},
    )


def test_checkpoint_round_trip_with_weights_only(module, tmp_path):
    path = tmp_path / "model.ckpt"
    save_like_lightning(module, path)
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw["hyper_parameters"]["vocab"], list)
    loaded = load_checkpoint(path)
    assert loaded.vocab.chars == module.vocab.chars
    assert generate_text(loaded.net, loaded.vocab, "how", 40) == generate_text(module.net, module.vocab, "how", 40)


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_object_in_a_checkpoint_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    Payload.marker = marker
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"vocab": Payload()}}, path)
    with pytest.raises(UserError, match="cannot be loaded safely"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


def test_a_kill_while_saving_leaves_the_previous_checkpoint_whole(module, tmp_path):
    import subprocess
    import sys

    path = tmp_path / "last.ckpt"
    script = f"""
import os, signal, torch
from charlm.module import AtomicCheckpointIO
io = AtomicCheckpointIO()
io.save_checkpoint({{"step": 1, "w": torch.ones(1000)}}, {str(path)!r})

def dies_half_way(obj, f):
    f.write(b"PK" + b"x" * 5000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = dies_half_way
io.save_checkpoint({{"step": 2, "w": torch.zeros(1000)}}, {str(path)!r})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9
    assert torch.load(path, weights_only=True)["step"] == 1


class FillsUp(io.FileIO):
    """A file on a disk with ``room`` bytes left: the write that reaches the end writes what fits,
    the next one fails with ENOSPC (as the OS does)."""

    def __init__(self, *args, room=20_000):
        super().__init__(*args)
        self.room = room

    def write(self, data):
        if not self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = super().write(bytes(data)[: self.room])
        self.room -= written
        return written


def test_a_full_disk_stops_in_one_line_keeps_the_last_checkpoint_and_resumes(tiny_text, tmp_path, monkeypatch, capsys):
    """The disk fills while a checkpoint is written: its temporary file goes (it would hold the
    space a resume needs), the checkpoints before it stay whole, the run stops with one line naming
    the full folder and the resume command, and that resume then finishes the run."""
    run = tmp_path / "run"
    run.mkdir()  # as Hydra makes it
    overrides = [
        *tiny_job_settings(tiny_text, tmp_path),
        "trainer.max_steps=30",
        "trainer.val_check_interval=10",
        "test=false",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
    ]
    written = []

    def filling_open(file, mode="r", *args, **kwargs):
        if "w" in mode:
            written.append(Path(file))
            if len(written) > 2:  # best.ckpt and last.ckpt of the first validation fit; then the disk is full
                return io.BufferedWriter(FillsUp(file, "wb"))  # what open(file, "wb") gives
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(charlm.module, "open", filling_open, raising=False)  # the open of AtomicCheckpointIO
    with pytest.raises(SystemExit) as stopped, exit_on_user_error():
        train(compose_config(overrides, run), run)
    assert stopped.value.code != 0
    failed = written[2].name.split(".")[1] + ".ckpt"  # .best.ckpt.<pid>.tmp
    assert [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()] == [
        f"error: the folder {run / 'checkpoints'} is full (No space left on device) writing {failed}; the checkpoints "
        f"saved before are kept: free space there, then continue from the last good one with python train.py ... "
        f"resume={run}"
    ]
    assert written[2].parent == run / "checkpoints" and not list((run / "checkpoints").glob(".*"))  # no temp file
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10

    monkeypatch.undo()  # space freed: the resume (as train.py resume=<run> does it) finishes the run
    metrics = train(compose_config([*overrides, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], run), run)
    assert metrics["steps"] == 30
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30


def test_a_full_disk_leaves_no_empty_error_txt(tmp_path, monkeypatch):
    """A sweep job's error.txt is written whole or not at all: an empty one would hide the error."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from charlm.sweep import SweepCallback

    def no_room(path, text, *args, **kwargs):
        path.touch()  # the file is made, then its first write fails
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", no_room)
    job = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("the disk is full"))
    SweepCallback().on_job_end(OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}}), job)
    assert list(tmp_path.iterdir()) == []

import os

import pytest
import torch

from charlm.errors import UserError
from charlm.module import FORMAT_VERSION, CharLM, load_checkpoint
from charlm.sampling import generate_text
from charlm.vocabulary import Vocabulary


def save_like_lightning(module: CharLM, path):
    """The two keys of a Lightning checkpoint that sampling needs."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)


@pytest.fixture
def module():
    torch.manual_seed(0)
    vocab = Vocabulary.from_text("hello world, how are you?")
    return CharLM(vocab=vocab.chars, model=dict(cell="gru", hidden_size=16, layers=2, embedding_dim=4),
                  optimizer={"_target_": "torch.optim.AdamW", "lr": 0.003})


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


def test_truncated_and_missing_checkpoints_are_refused(module, tmp_path):
    path = tmp_path / "model.ckpt"
    save_like_lightning(module, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="truncated, corrupt"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_checkpoint_of_another_format_version_is_refused(module, tmp_path):
    path = tmp_path / "model.ckpt"
    module.hparams["format_version"] = FORMAT_VERSION + 1
    save_like_lightning(module, path)
    with pytest.raises(UserError, match=f"format_version={FORMAT_VERSION + 1}"):
        load_checkpoint(path)


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

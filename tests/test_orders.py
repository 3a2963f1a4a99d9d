"""The training step over the streams order: the state carried across batches is the state of one
long forward pass over each row, and it travels in checkpoints."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charlm.data import CharDataModule
from charlm.module import CharLM


def streams(tiny_csv, tmp_path, **kwargs):
    dm = CharDataModule(
        corpus="ag_news",
        path=str(tiny_csv),
        val_size=5,
        test_size=5,
        nchars=16,
        batch_size=3,
        eval_rows=4,
        eval_chunk=32,
        cache_dir=str(tmp_path / "cache"),
        order="streams",
        **kwargs,
    )
    dm.setup("fit")
    return dm


def attached(module):
    """``module`` as a Trainer would hold it, for calling its training step directly."""
    module._trainer = SimpleNamespace(
        _logger_connector=SimpleNamespace(should_update_logs=False), world_size=1, global_rank=0
    )
    return module


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_carried_state_is_that_of_one_long_forward_pass_over_each_row(tiny_csv, tmp_path, cell):
    dm = streams(tiny_csv, tmp_path)
    module = attached(CharLM(dm.vocab.chars, {"cell": cell, "hidden_size": 12, "layers": 2}))
    loader = dm.train_dataloader()
    losses = [module.training_step(batch, k).detach() for k, batch in enumerate(loader)]
    chunks = len(losses)
    assert chunks > 3

    tokens = torch.from_numpy(np.load(dm.cache_path / "train.npy").astype(np.int64))
    starts = loader.batch_sampler.row_starts(0)
    rows = torch.stack([tokens[s : s + chunks * 16 + 1] for s in starts])  # each row's text, read whole
    with torch.no_grad():
        logits, state = module.net(rows[:, :-1])
    expected = [
        F.cross_entropy(
            logits[:, k * 16 : (k + 1) * 16].flatten(0, 1), rows[:, k * 16 + 1 : (k + 1) * 16 + 1].flatten()
        )
        for k in range(chunks)
    ]
    torch.testing.assert_close(torch.stack(losses), torch.stack(expected))
    carried = module._state_tensors(module._train_state)
    for a, b in zip(carried, module._state_tensors(state)):
        torch.testing.assert_close(a, b)
    assert not any(t.requires_grad for t in carried)  # detached: the graph ends at the batch

    # the next epoch starts its rows over: the state does not carry into its first chunk
    loader.batch_sampler.position = chunks
    first = next(iter(loader))
    fresh = module.training_step(first, 0).detach()
    with torch.no_grad():
        alone, _ = module.net(first[0])
    torch.testing.assert_close(fresh, F.cross_entropy(alone.flatten(0, 1), first[1].flatten()))


def test_the_carried_state_travels_in_the_checkpoint_and_windows_carry_none(tiny_csv, tmp_path):
    dm = streams(tiny_csv, tmp_path)
    module = attached(CharLM(dm.vocab.chars, {"hidden_size": 12}))
    batches = iter(dm.train_dataloader())
    for k in range(3):
        module.training_step(next(batches), k)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    path = tmp_path / "state.ckpt"
    torch.save(checkpoint, path)
    restored = attached(CharLM(dm.vocab.chars, {"hidden_size": 12}))
    restored.load_state_dict(module.state_dict())
    restored.on_load_checkpoint(torch.load(path, weights_only=True))
    for a, b in zip(module._state_tensors(module._train_state), restored._state_tensors(restored._train_state)):
        assert torch.equal(a, b)
    nxt = next(batches)
    assert torch.equal(module.training_step(nxt, 3), restored.training_step(nxt, 3))

    x, y, _ = nxt
    module.training_step((x, y), 4)  # a batch of the windows order carries nothing
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert module._train_state is None and "train_state" not in checkpoint


def test_streams_cut_on_the_device_are_the_host_paths_batches(tiny_csv, tmp_path):
    """``data.on_device`` (simulated: the CPU through the on-device code path) cuts the same chunks."""
    from charlm.windows import DeviceWindows

    host, device = (streams(tiny_csv, tmp_path, on_device=flag).train_dataloader() for flag in (False, True))
    assert isinstance(device.dataset.windows, DeviceWindows) and not isinstance(host.dataset.windows, DeviceWindows)
    pairs = list(zip(host, device))
    assert len(pairs) == len(host) > 3
    for (hx, hy, he), (dx, dy, de) in pairs:
        assert torch.equal(hx, dx) and torch.equal(hy, dy) and he == de

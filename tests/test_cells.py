"""The cells (charlm.cells): checkpoints of the classic cells written before the cell classes still
load and compute the same; the minimal cells' scans agree with their sequential form, outputs and
gradients, from a zero or a carried state; a long sequence stays finite; and mingru/minlstm train in
every data order, carry the streams' state, generate by seed, inspect and load with weights_only."""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from charlm.activations import layer_states
from charlm.cells import CELLS, SCANS
from charlm.config import compose_config
from charlm.inspect import run as inspect_run
from charlm.model import CharRNN, matmul_flops_per_char
from charlm.module import load_checkpoint
from charlm.sampling import generate_text
from charlm.training import train

DATA = Path(__file__).parent / "data"
MINIMAL = ["mingru", "minlstm"]
BLOCKS = {
    "plain": dict(residual=False, norm=False),
    "block": dict(residual=True, norm=True),
    "expanded": dict(residual=True, norm=True, expansion=1.5),
}
# float64 agreement of every scan with the step-by-step loop (the parallel forms reorder sums and, for
# log, go through exp/log): outputs and gradients within this
TOLERANCE = dict(rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_a_checkpoint_written_by_the_code_before_the_cell_classes_loads_and_computes_the_same(name):
    """tests/data/main_<cell>.ckpt were written by main's code at 6d246f0 (before charlm/cells.py): their
    weights keep their names (``net.rnn.weight_ih_l0`` ...) and give the same logits (the LSTM's with
    topic_mode=state: the topic's initial state keeps its layout)."""
    path = DATA / f"main_{name}.ckpt"
    saved = torch.load(path, weights_only=True)
    module = load_checkpoint(path)
    assert "expansion" not in saved["hyper_parameters"]["model"]  # written before the block settings
    with torch.no_grad():
        topic = torch.tensor([1]) if module.net.topics else None
        logits, _ = module.net(saved["ids"], topic=topic)
    torch.testing.assert_close(logits, saved["expected_logits"], rtol=0, atol=0)


def test_every_cell_is_found_by_name_and_owns_its_numbers():
    assert list(CELLS) == ["lstm", "gru", "rnn", "mingru", "minlstm"]
    for name, kind in CELLS.items():
        assert kind.name == name and kind.states in (1, 2) and kind.parallel == (name in MINIMAL)
    # a minimal cell has no recurrent product: fewer FLOPs than the GRU of the same width
    args = dict(hidden_size=512, layers=2, vocab_size=100, embedding_dim=16)
    flops = {name: matmul_flops_per_char(name, **args) for name in CELLS}
    assert flops["mingru"] < flops["minlstm"] < flops["gru"] < flops["lstm"]
    assert flops["mingru"] == 2 * 2 * 512 * (16 + 512) + 2 * 512 * 100


def minimal_net(cell, layers, block, seed=0):
    torch.manual_seed(seed)
    net = CharRNN(13, cell=cell, hidden_size=6, layers=layers, embedding_dim=4, dropout=0.0, **BLOCKS[block])
    return net.double()


@pytest.mark.parametrize("carried", [False, True], ids=["zero-state", "carried-state"])
@pytest.mark.parametrize("block", list(BLOCKS))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", MINIMAL)
def test_every_scan_gives_the_sequential_forms_outputs_and_gradients(cell, layers, block, carried):
    net = minimal_net(cell, layers, block)
    ids = torch.randint(0, 13, (3, 41), generator=torch.Generator().manual_seed(1))
    state = None
    if carried:  # a state some other text left (any sign: a topic's initial state may be negative)
        width = net.rnn.state_size(6, **net.rnn.settings)
        state = torch.randn(layers, 3, width, dtype=torch.float64, requires_grad=True)

    def run(scan):
        logits, last = net.rnn(net.embedding(ids).double(), state, scan=scan)
        loss = logits.square().mean() + last.sum()
        inputs = [*net.rnn.parameters(), *([state] if carried else [])]
        return logits, last, torch.autograd.grad(loss, inputs)

    reference = run("step")
    for scan in set(SCANS) - {"step"}:
        out, last, grads = run(scan)
        torch.testing.assert_close(out, reference[0], **TOLERANCE)
        torch.testing.assert_close(last, reference[1], **TOLERANCE)
        for g, r in zip(grads, reference[2]):
            torch.testing.assert_close(g, r, **TOLERANCE)


@pytest.mark.parametrize("cell", ["lstm", *MINIMAL])
def test_one_pass_equals_chunks_with_the_state_carried_and_one_character_at_a_time(cell):
    """What evaluation (chunks, state carried) and generation (one character per call) compute is
    the training forward pass over the whole text, in float32, with the default scan (the LSTM's
    one character: torch.lstm_cell per layer, not oneDNN)."""
    torch.manual_seed(0)
    net = CharRNN(13, cell=cell, hidden_size=8, layers=2, embedding_dim=4).eval()
    ids = torch.randint(0, 13, (2, 30))
    with torch.no_grad():
        whole, end = net(ids)
        first, state = net(ids[:, :17])
        second, chunked_end = net(ids[:, 17:], state)
        torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(chunked_end, end, rtol=1e-5, atol=1e-5)
        state, steps = None, []
        for t in range(ids.shape[1]):
            logits, state = net(ids[:, t : t + 1], state)
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=1e-5, atol=1e-5)


def test_an_lstm_generates_one_character_without_onednns_per_call_weight_packing(monkeypatch):
    """On a CPU nn.LSTM runs on oneDNN, which prepares every layer's weights at each call: a 2x512
    LSTM generated half as fast (benchmarks/cells.py). Generation's one-character calls
    therefore go through torch.lstm_cell; training and whole sequences keep nn.LSTM's kernel."""
    torch.manual_seed(0)
    net = CharRNN(13, cell="lstm", hidden_size=8, layers=3, embedding_dim=4)
    calls = []
    original = torch.nn.LSTM.forward
    monkeypatch.setattr(torch.nn.LSTM, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    ids = torch.randint(0, 13, (2, 5))
    net.eval()
    with torch.no_grad():
        _, state = net(ids)  # a prompt: nn.LSTM
        assert len(calls) == 1
        net(ids[:, :1], state)  # a character: per-layer cells
        assert len(calls) == 1
    net.train()
    net(ids[:, :1])  # training keeps nn.LSTM (and its dropout between layers)
    assert len(calls) == 2


@pytest.mark.parametrize("topic_mode", ["input", "state"])
@pytest.mark.parametrize("cell", MINIMAL)
def test_the_inspectors_per_step_states_are_the_forward_passes(cell, topic_mode):
    """Each layer's h after character t (the inspector's, one character at a time) is the state the
    forward pass ends in after reading the text up to t; its gates are in (0, 1)."""
    torch.manual_seed(0)
    net = CharRNN(13, cell=cell, hidden_size=8, layers=2, embedding_dim=4, topics=2, topic_mode=topic_mode).eval()
    ids = torch.randint(0, 13, (25,))
    states = layer_states(net, ids, topic=1)
    assert set(states[0]["gates"]) == set(CELLS[cell].gates)
    for gate in states[0]["gates"].values():
        assert ((gate > 0) & (gate < 1)).all()
    with torch.no_grad():
        for t in (0, 11, 24):
            _, end = net(ids[None, : t + 1], topic=torch.tensor([1]))
            for k in range(2):
                torch.testing.assert_close(states[k]["h"][t], end[k, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scan", ["log", "loop"])  # the paper's reference and the CPU default
@pytest.mark.parametrize("cell", MINIMAL)
def test_a_sequence_of_10000_steps_stays_finite_forward_and_backward(cell, scan):
    torch.manual_seed(0)
    net = CharRNN(13, cell=cell, hidden_size=16, layers=2, embedding_dim=8, scan=scan)
    ids = torch.randint(0, 13, (2, 10_000))
    logits, state = net(ids)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten())
    loss.backward()
    assert torch.isfinite(logits).all() and torch.isfinite(state).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert math.log(13) - 1 < loss.item() < math.log(13) + 1


@pytest.mark.parametrize("cell", MINIMAL)
def test_bf16_autocast_keeps_the_scan_in_float32(cell):
    """precision=auto trains in bf16 on a GPU: the projections run in bf16, the scan and its state in float32."""
    torch.manual_seed(0)
    net = CharRNN(13, cell=cell, hidden_size=8, layers=2, embedding_dim=4)
    ids = torch.randint(0, 13, (2, 50))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = net(ids)
    assert state.dtype == torch.float32
    reference, _ = net(ids)
    torch.testing.assert_close(logits.float(), reference, rtol=0.05, atol=0.05)


@pytest.fixture(scope="module")
def cell_runs(tmp_path_factory):
    """``{(cell, order): run folder}``: each minimal cell trained 3 steps in each data order."""
    folder = tmp_path_factory.mktemp("cells")
    corpus = folder / "tiny.csv"
    corpus.write_text(
        "".join(f'"{i % 4 + 1}","Title {i:03d}","article {i:03d} says hello world, the fox jumps"\n' for i in range(80))
    )
    made = {}
    for cell in MINIMAL:
        for order in ("windows", "streams", "articles"):
            run_dir = folder / f"{cell}-{order}"
            run_dir.mkdir()
            cfg = compose_config(
                [
                    f"data.path={corpus}",
                    f"data.cache_dir={folder}/cache",
                    "data.val_size=8",
                    "data.test_size=8",
                    "data.nchars=24",
                    "data.batch_size=4",
                    f"data.order={order}",
                    f"model.cell={cell}",
                    "model.hidden_size=12",
                    "model.layers=2",
                    "model.dropout=0.1",
                    "trainer.max_steps=3",
                    "trainer.val_check_interval=3",
                    "trainer.max_time=null",
                    "trainer.accelerator=cpu",
                    "callbacks.samples.length=5",
                    "callbacks.surprisal_image.chars=40",
                ],
                run_dir,
            )
            train(cfg, run_dir)
            made[cell, order] = run_dir
    return made


@pytest.mark.parametrize("order", ["windows", "streams", "articles"])
@pytest.mark.parametrize("cell", MINIMAL)
def test_a_minimal_cell_trains_in_every_order_and_its_checkpoint_loads_safely(cell_runs, cell, order):
    checkpoint = torch.load(cell_runs[cell, order] / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert checkpoint["hyper_parameters"]["model"]["cell"] == cell
    if order == "streams":  # the state carried into the next batch travels in the checkpoint: h only
        assert len(checkpoint["train_state"]) == 1 and checkpoint["train_state"][0].shape == (1, 2, 4, 12)
    module = load_checkpoint(cell_runs[cell, order] / "checkpoints" / "best.ckpt")
    assert isinstance(module.net.rnn, CELLS[cell])


@pytest.mark.parametrize("cell", MINIMAL)
def test_generation_with_a_minimal_cell_is_the_same_for_the_same_seed(cell_runs, cell):
    module = load_checkpoint(cell_runs[cell, "windows"] / "checkpoints" / "best.ckpt")
    texts = [
        generate_text(module.net, module.vocab, "article ", 40, temperature=1.0, seed=seed, num_samples=2)
        for seed in (7, 7, 8)
    ]
    assert texts[0] == texts[1] != texts[2]
    assert all(len(t) == len("article ") + 40 for t in texts[0])


def test_the_inspector_page_of_a_mingru_shows_its_update_gate(cell_runs, tmp_path):
    cfg = OmegaConf.create(
        dict(
            ckpt=str(cell_runs["mingru", "windows"] / "checkpoints" / "best.ckpt"),
            text="article 007 says hello world",
            text_file=None,
            topic=None,
            out=str(tmp_path / "page.html"),
            max_chars=1000,
            top_units=3,
            device="cpu",
        )
    )
    out, inspection = inspect_run(cfg)
    assert [set(layer["gates"]) for layer in inspection.layers] == [{"update"}, {"update"}]
    assert "update" in Path(out).read_text()

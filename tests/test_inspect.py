"""charlm.inspect: the step-by-step recurrence equals torch's, the page's data equals the model's
own scores and guesses, mean bits equal the evaluation loss, units are ranked by the properties
they track, long texts are refused, the command writes a page a browser renders, and the
SurprisalImage callback writes its TensorBoard image at validation (rank 0 only)."""

import base64
import math
import re
import shutil
import subprocess
import types

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from charlm import activations
from charlm.activations import (
    SCORE_CHUNK,
    _inputs,
    cut_note,
    inspect_text,
    layer_states,
    page_chars,
    rank_units,
    surprisal,
    text_properties,
)
from charlm.callbacks import SurprisalImage
from charlm.data import CharDataModule
from charlm.errors import UserError
from charlm.inspect import run as inspect_run
from charlm.model import CharRNN
from charlm.module import CharLM
from charlm.page import page_html, read_page_data, surprisal_image
from charlm.vocabulary import Vocabulary

from conftest import ROOT, run_script

TEXT = 'He said "look (there)" and left.\nShe said "no".\n' * 4
VOCAB = Vocabulary.from_text(TEXT)


def ids_of(text: str) -> torch.Tensor:
    return torch.from_numpy(VOCAB.encode(text).astype(np.int64))


@pytest.mark.parametrize("embedding_dim", [0, 4], ids=["one-hot", "embedding"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_step_by_step_states_equal_torchs(cell, layers, embedding_dim):
    """Every layer's hidden (and LSTM cell) states at every step equal those of the torch module:
    layer k against a torch module of the first k + 1 layers with the same weights."""
    torch.manual_seed(0)
    net = CharRNN(len(VOCAB), cell=cell, hidden_size=10, layers=layers, embedding_dim=embedding_dim, dropout=0.5).eval()
    ids = ids_of(TEXT)
    states = layer_states(net, ids)
    x = _inputs(net, ids)[None]
    with torch.no_grad():
        for k in range(layers):
            first = type(net.rnn)(x.shape[-1], 10, k + 1, 0.0)  # the cell class: its first k + 1 layers
            first.load_state_dict({n: p for n, p in net.rnn.state_dict().items() if int(n[-1]) <= k})
            out, state = first(x)
            torch.testing.assert_close(states[k]["h"], out[0], rtol=1e-5, atol=1e-6)
            if cell == "lstm":
                torch.testing.assert_close(states[k]["c"][-1], state[1][k, 0], rtol=1e-5, atol=1e-6)
                gates = states[k]["gates"]
                torch.testing.assert_close(states[k]["h"], gates["output"] * torch.tanh(states[k]["c"]))
    assert (
        set(states[0]["gates"])
        == {"lstm": {"input", "forget", "output"}, "gru": {"reset", "update"}, "rnn": set()}[cell]
    )
    for gate in states[0]["gates"].values():
        assert ((gate > 0) & (gate < 1)).all()


@pytest.mark.parametrize("topic", [None, 2], ids=["topic-unknown", "topic-2"])
@pytest.mark.parametrize("topic_mode", ["input", "state"])
@pytest.mark.parametrize("cell, layers", [("lstm", 2), ("gru", 1)])
def test_topic_models_states_and_surprisal_equal_the_forward(cell, layers, topic_mode, topic):
    """A topic-conditioned model (the topic at every input, or in the initial state): every layer's last
    state and the last layer's states at every step equal those of ``CharRNN.forward`` under the same
    topic (``None``: the unknown topic), and so do the bits; the topic changes them."""
    torch.manual_seed(0)
    net = CharRNN(
        len(VOCAB),
        cell=cell,
        hidden_size=10,
        layers=layers,
        embedding_dim=4,
        topics=4,
        topic_dim=3,
        topic_mode=topic_mode,
    ).eval()
    ids = ids_of(TEXT[:60])
    seen = {}
    net.rnn.register_forward_hook(lambda _, __, out: seen.update(out=out))
    with torch.no_grad():
        logits, state = net(ids[None], topic=None if topic is None else torch.tensor([topic]))
    states = layer_states(net, ids, topic)
    torch.testing.assert_close(states[-1]["h"], seen["out"][0][0], rtol=1e-5, atol=1e-6)
    for k in range(layers):
        torch.testing.assert_close(
            states[k]["h"][-1], (state[0] if cell == "lstm" else state)[k, 0], rtol=1e-5, atol=1e-6
        )
        if cell == "lstm":
            torch.testing.assert_close(states[k]["c"][-1], state[1][k, 0], rtol=1e-5, atol=1e-6)
    logp = torch.log_softmax(logits[0, :-1], dim=-1)
    bits = -logp[torch.arange(len(ids) - 1), ids[1:]] / math.log(2)
    np.testing.assert_allclose(surprisal(net, ids, topic=topic)[1:], bits.numpy(), rtol=1e-5)
    other = surprisal(net, ids, topic=1)
    assert not np.allclose(other[1:], bits.numpy())


@pytest.fixture
def module():
    torch.manual_seed(1)
    module = CharLM(vocab=VOCAB.chars, model=dict(cell="lstm", hidden_size=16, layers=2, embedding_dim=4))
    with torch.no_grad():
        module.net.head.weight.mul_(8)  # confident guesses: distinct top-5 probabilities
    return module.eval()


def test_page_data_equals_the_model(module):
    """Characters, surprisal and top-5 guesses on the page are what the model computes (one
    forward pass over the text, scored here independently), and the states decode to the states."""
    text = TEXT[:150]
    inspection = inspect_text(module.net, module.vocab, text)
    data = read_page_data(page_html(inspection, module.vocab, "test", dict(module.hparams["model"])))
    assert data["chars"] == list(text)
    with torch.no_grad():
        logits, _ = module(ids_of(text)[None])
    logp = torch.log_softmax(logits[0, :-1], dim=-1)
    bits = -logp[torch.arange(len(text) - 1), ids_of(text)[1:]] / math.log(2)
    assert data["bits"][0] is None
    np.testing.assert_allclose(data["bits"][1:], bits.numpy(), atol=1e-4)
    top = logp.topk(5, dim=-1)
    assert data["top_ids"][1:] == top.indices.tolist()
    np.testing.assert_allclose(data["top_probs"][1:], top.values.exp().numpy(), atol=1e-5)
    assert data["vocab"] == VOCAB.chars and data["mean_bits"] == pytest.approx(bits.mean().item(), abs=1e-4)
    assert [(s["layer"], s["kind"]) for s in data["states"]] == [(0, "h"), (0, "c"), (1, "h"), (1, "c")]
    state = data["states"][3]
    q = np.frombuffer(base64.b64decode(state["q"]), dtype=np.int8).reshape(len(text), 16)
    decoded = q / 127 * np.array(state["scale"])
    np.testing.assert_allclose(decoded, inspection.layers[1]["c"], atol=max(state["scale"]) / 127)


def test_mean_bits_equal_the_evaluation_loss(module, tmp_path, tiny_text):
    """The test split scored by trainer.test (one row, one chunk: the same zero-state context) and
    by inspect_text: mean bits equal test/bpc up to float rounding."""
    dm = CharDataModule(
        corpus="text",
        path=str(tiny_text),
        val_size=200,
        test_size=300,
        nchars=16,
        stride=16,
        batch_size=4,
        eval_rows=1,
        eval_chunk=1000,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("fit")
    torch.manual_seed(2)
    model = CharLM(vocab=dm.vocab.chars, model=dict(cell="gru", hidden_size=12, embedding_dim=0))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.test(model, datamodule=dm, verbose=False)
    text = dm.vocab.decode(np.load(dm.cache_path / "test.npy"))
    inspection = inspect_text(model.net, dm.vocab, text)
    assert np.nanmean(inspection.bits) == pytest.approx(trainer.callback_metrics["test/bpc"].item(), rel=1e-5)


def test_text_properties():
    props = text_properties('a "b" (c)\nDe')
    assert props["inside quotes"].tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert props["inside brackets"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert props["position in line"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert props["start of word"].tolist() == [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0]
    assert props["upper case"].tolist() == [0] * 10 + [1, 0]


def test_a_unit_that_tracks_quotes_ranks_first():
    text = 'x "quoted words here" and then (some bracketed) more\n' * 20
    props = text_properties(text)
    rng = np.random.default_rng(0)
    layers = [{"h": rng.normal(size=(len(text), 8)), "c": rng.normal(size=(len(text), 8))} for _ in range(2)]
    layers[1]["c"][:, 5] = -props["inside quotes"] + 0.3 * rng.normal(size=len(text))  # tracks quotes, negatively
    layers[0]["h"][:, 2] = props["position in line"] / 50 + 0.1 * rng.normal(size=len(text))
    ranking = rank_units(layers, props, top=3)
    best = ranking["inside quotes"]["units"][0]
    assert (best["layer"], best["kind"], best["unit"]) == (1, "c", 5) and best["r"] < -0.8
    assert len({(u["layer"], u["kind"], u["unit"]) for u in ranking["inside quotes"]["units"]}) == 3
    assert ranking["position in line"]["units"][0]["unit"] == 2 and ranking["position in line"]["units"][0]["r"] > 0.9
    assert len(ranking["upper case"]["units"]) == 0 and "does not vary" in ranking["upper case"]["note"]


def test_long_texts_are_refused_with_one_line(module):
    with pytest.raises(UserError, match=r"^text has 12 characters, more than max_chars=10; inspect a part of it"):
        inspect_text(module.net, module.vocab, "a" * 12, max_chars=10)
    with pytest.raises(UserError, match="give at least 2"):
        inspect_text(module.net, module.vocab, "a")


def test_a_long_text_is_scored_in_chunks_as_in_one_pass(module):
    """Memory does not grow with the text: the network never reads more than SCORE_CHUNK characters at
    once (the state carried, as evaluation does), and the numbers are those of one pass."""
    text = (TEXT * 40)[: 2 * SCORE_CHUNK + 123]
    read = []
    hook = module.net.register_forward_hook(lambda net, args, output: read.append(args[0].shape[1]))
    try:
        inspection = inspect_text(module.net, module.vocab, text)
    finally:
        hook.remove()
    assert max(read) == SCORE_CHUNK and sum(read) == len(text) - 1
    one_pass = surprisal(module.net, ids_of(text), 5, chunk=len(text))
    np.testing.assert_allclose(inspection.whole["mean_bits"], np.nanmean(one_pass[0]), rtol=1e-5)
    np.testing.assert_allclose(inspection.bits[1:], one_pass[0][1 : len(inspection.text)], atol=1e-4)
    chunked = surprisal(module.net, ids_of(text), 5, top_chars=200, chunk=64)
    np.testing.assert_allclose(chunked[0][1:], one_pass[0][1:], atol=1e-4)
    assert (chunked[1][1:] == one_pass[1][1:200]).all() and chunked[1].shape == (200, 5)


def test_the_page_of_a_long_text_is_cut_with_a_note(module, tmp_path, monkeypatch, capsys):
    """A page shows at most page_chars characters (with every unit's activation at each): a longer
    text is scored whole, its page cut, and one note says so; the mean bits are of the whole text."""
    assert page_chars(CharRNN(100, "lstm", hidden_size=384)) == 21_845  # the default model: docs/inspect.md
    note = f"`note: {cut_note(21_845, 5_000_000)}`"
    assert note in (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    monkeypatch.setattr(activations, "PAGE_VALUES", 300 * 2 * 16 * 2)  # 2 layers of 16, h and c: 300 characters
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    (tmp_path / "long.txt").write_text(TEXT * 6)  # 1,152 characters
    out, inspection = inspect_run(
        types.SimpleNamespace(
            ckpt=str(ckpt),
            topic=None,
            text=None,
            text_file=str(tmp_path / "long.txt"),
            out=str(tmp_path / "page.html"),
            max_chars=20_000,
            top_units=5,
            device="cpu",
        )
    )
    assert capsys.readouterr().err == f"note: {cut_note(300, len(TEXT) * 6)}\n"
    data = read_page_data(out.read_text(encoding="utf-8"))
    assert (
        len(data["chars"]) == len(data["bits"]) == len(data["top_ids"]) == 300 and data["total_chars"] == len(TEXT) * 6
    )
    assert len(base64.b64decode(data["states"][0]["q"])) == 300 * 16
    bits = surprisal(module.net, ids_of(TEXT * 6))
    assert data["mean_bits"] == pytest.approx(np.nanmean(bits), abs=1e-4)


@pytest.mark.slow
def test_command_writes_a_page_a_browser_renders(tmp_path):
    """python -m charlm.inspect on a checkpoint of a Korean and English model, with a text file;
    then, where Chromium is installed, the page as a browser builds it: one span per character and
    the tooltip of #char=N showing the top guess."""
    text = '서울의 시장은 "오늘" 말했다 (월요일).\nThe market fell.\n' * 3
    vocab = Vocabulary.from_text(text)
    torch.manual_seed(0)
    module = CharLM(vocab=vocab.chars, model=dict(cell="lstm", hidden_size=8, embedding_dim=4))
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    (tmp_path / "ko.txt").write_text(text, encoding="utf-8")
    result = run_script(
        "-m",
        "charlm.inspect",
        f"ckpt={ckpt}",
        f"text_file={tmp_path / 'ko.txt'}",
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    page = ckpt.parent / "inspect.html"
    assert re.match(rf"wrote {re.escape(str(page))} \(\d+\.\d MB\): {len(text)} characters, mean \d", result.stdout)
    data = read_page_data(page.read_text(encoding="utf-8"))
    assert "".join(data["chars"]) == text and data["unknown"] == 0
    assert "http" not in page.read_text().replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium here to render the page")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", f"file://{page}#char=3"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert dom.count("data-i=") == len(text)
    tip = dom[dom.index('id="tip"') :]
    top1 = vocab.chars[data["top_ids"][3][0]]
    assert "#3</b>" in tip and f'<span class="g">{top1}</span>' in tip.split("</table>")[0]


def test_surprisal_image_is_written_at_validation_by_rank_0(tmp_path, tiny_text):
    dm = CharDataModule(
        corpus="text",
        path=str(tiny_text),
        val_size=400,
        test_size=200,
        nchars=16,
        stride=16,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("fit")
    model = CharLM(
        vocab=dm.vocab.chars,
        model=dict(hidden_size=8, embedding_dim=4),
        optimizer={"_target_": "torch.optim.AdamW", "lr": 0.01},
    )
    callback = SurprisalImage(chars=300, columns=48)
    trainer = L.Trainer(
        max_steps=4,
        val_check_interval=2,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name="", version=""),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=dm)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("inspect/surprisal")
    assert [i.step for i in images] == [2, 4]
    assert images[0].width <= 500 and images[0].encoded_image_string.startswith(b"\x89PNG")

    # other ranks draw nothing; without matplotlib the image is skipped with one info line
    not_zero = types.SimpleNamespace(sanity_checking=False, is_global_zero=False, loggers=[object()])
    SurprisalImage().on_validation_epoch_end(not_zero, model)  # would fail if it used the logger


def test_without_matplotlib_the_image_is_skipped_with_one_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    written = []
    logger = types.SimpleNamespace(experiment=types.SimpleNamespace(add_image=lambda *a, **k: written.append(a)))
    callback = SurprisalImage()
    callback._ids = ids_of(TEXT)
    trainer = types.SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[logger], global_step=1)
    with caplog.at_level("INFO", logger="charlm.callbacks"):
        callback.on_validation_epoch_end(trainer, None)
        callback.on_validation_epoch_end(trainer, None)
    assert not written and len([r for r in caplog.records if "matplotlib" in r.message]) == 1


def test_image_is_readable_size():
    image = surprisal_image(list(TEXT * 3), np.linspace(0, 9, len(TEXT) * 3), caption="step 1")
    assert image.dtype == np.uint8 and image.shape[2] == 3 and image.shape[1] <= 500

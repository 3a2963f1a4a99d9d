"""Every feature with both kinds of checkpoint: sample, inspect, classify and the TensorBoard surprisal
image, each on an unconditioned model and on a topic-conditioned one (model.topics=true). The two tiny
runs are trained once, in this process, on the same small AG News-format corpus, under one
``outputs/runs`` (the topic run first, so the unconditioned one is the newest run)."""

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from test_topics import write_corpus

from charlm.activations import surprisal
from charlm.classify import run as classify_run
from charlm.config import CONF_DIR, compose_config
from charlm.errors import UserError
from charlm.inspect import run as inspect_run
from charlm.module import load_checkpoint, newest_checkpoint
from charlm.training import train

from conftest import ROOT

KINDS = ["plain", "topics"]
TOPICS = ["World", "Sports", "Business", "Sci/Tech"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(folder, {kind: best.ckpt})``: two runs of a few steps each in ``folder/outputs/runs``."""
    folder = tmp_path_factory.mktemp("combinations")
    path = write_corpus(folder, n=120)
    ckpts = {}
    for kind in reversed(KINDS):  # the unconditioned run last: the newest
        run_dir = folder / "outputs" / "runs" / kind
        run_dir.mkdir(parents=True)
        cfg = compose_config(
            [
                f"data.path={path}",
                "data.val_size=20",
                "data.test_size=20",
                "data.nchars=32",
                "data.stride=16",
                "data.batch_size=16",
                f"data.cache_dir={folder}/cache",
                "model.hidden_size=16",
                "model.embedding_dim=4",
                "trainer.max_steps=4",
                "trainer.val_check_interval=2",
                "trainer.max_time=null",
                "trainer.accelerator=cpu",
                "callbacks.samples.length=10",
                "callbacks.surprisal_image.chars=60",
                *(["model.topics=true"] if kind == "topics" else []),
            ],
            run_dir,
        )
        train(cfg, run_dir)
        ckpts[kind] = run_dir / "checkpoints" / "best.ckpt"
    return folder, ckpts


def config(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)


def sample_module():
    """sample.py, imported from the checkout (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("charlm_sample_script", ROOT / "sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", KINDS)
def test_sample(runs, kind, capsys):
    _, ckpts = runs
    sample = sample_module().sample
    sample(config("sample", [f"ckpt={ckpts[kind]}", "prompt=aa", "length=8", "seed=0"]))
    assert capsys.readouterr().out.startswith("aa")
    if kind == "plain":
        with pytest.raises(UserError, match="^topic=Sports needs a model trained with topics"):
            sample(config("sample", [f"ckpt={ckpts[kind]}", "topic=Sports"]))
        return
    sample(config("sample", [f"ckpt={ckpts[kind]}", "prompt=aa", "length=8", "seed=0", "topic=all"]))
    out = capsys.readouterr().out
    assert [f"(topic {name})" in out for name in TOPICS] == [True] * 4


@pytest.mark.parametrize("kind", KINDS)
def test_inspect(runs, kind, tmp_path):
    """The page of each kind; a topic model reads the text under the topic given (the bits are those
    of its forward pass under that topic) or, by default, with the topic unknown."""
    _, ckpts = runs
    text = "aaa bb cccc dd aa"
    topics = [None, "sports"] if kind == "topics" else [None]
    for topic in topics:
        out = tmp_path / f"{topic}.html"
        page, inspection = inspect_run(
            config("inspect", [f"ckpt={ckpts[kind]}", f"text={text}", f"out={out}", f"topic={topic or 'null'}"])
        )
        assert page == out and out.stat().st_size > 0
        module = load_checkpoint(ckpts[kind])
        ids = torch.from_numpy(module.vocab.encode(text).astype(np.int64))
        with torch.no_grad():
            logits, _ = module.net(ids[None], topic=None if topic is None else torch.tensor([1]))
        logp = torch.log_softmax(logits[0, :-1], dim=-1)
        bits = (-logp[torch.arange(len(ids) - 1), ids[1:]] / math.log(2)).numpy()
        np.testing.assert_allclose(inspection.bits[1:], bits, rtol=1e-5)
        assert inspection.topic == (None if kind == "plain" else "Sports" if topic else "unknown")
        assert (f"topic {inspection.topic}" in out.read_text(encoding="utf-8")) == (kind == "topics")
    if kind == "topics":
        unknown, sports = (surprisal(load_checkpoint(ckpts[kind]).net, ids, topic=t) for t in (None, 1))
        assert not np.allclose(unknown[1:], sports[1:])  # the topic is read
        for topic, message in [
            (
                "all",
                "topic=all is one topic at a time here; pass one of this model's topics: "
                "World, Sports, Business, Sci/Tech (or null: the topic unknown)",
            ),
            (
                "Cooking",
                "topic=Cooking is not one of this model's topics: World, Sports, Business, "
                "Sci/Tech (or null: the topic unknown)",
            ),
        ]:
            with pytest.raises(UserError) as refused:
                inspect_run(config("inspect", [f"ckpt={ckpts[kind]}", f"text={text}", f"topic={topic}"]))
            assert str(refused.value) == message
    else:
        with pytest.raises(UserError, match="^topic=Sports needs a model trained with topics"):
            inspect_run(config("inspect", [f"ckpt={ckpts[kind]}", f"text={text}", "topic=Sports"]))


@pytest.mark.parametrize("kind", KINDS)
def test_classify(runs, kind):
    _, ckpts = runs
    cfg = config("classify", [f"ckpt={ckpts[kind]}", "text=bbb bb bbbb"])
    if kind == "plain":
        with pytest.raises(UserError) as refused:
            classify_run(cfg)
        assert str(refused.value) == (
            f"ckpt={ckpts[kind]} has no topics; classify needs a model trained with model.topics=true"
        )
        return
    probabilities = classify_run(cfg)
    assert sorted(probabilities) == sorted(TOPICS) and sum(probabilities.values()) == pytest.approx(1)


@pytest.mark.parametrize("kind", KINDS)
def test_surprisal_image(runs, kind):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, ckpts = runs
    events = EventAccumulator(str(ckpts[kind].parents[1]), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("inspect/surprisal")
    assert [image.step for image in images] == [2, 4]
    assert images[0].encoded_image_string.startswith(b"\x89PNG")


def test_classify_takes_the_newest_topic_run_by_default(runs, tmp_path):
    folder, ckpts = runs
    assert newest_checkpoint(folder / "outputs") == ckpts["plain"]  # sample.py's default: the newest run
    assert newest_checkpoint(folder / "outputs", topics=True) == ckpts["topics"]
    notes = []
    probabilities = classify_run(config("classify", [f"runs_dir={folder / 'outputs'}", "text=ccc"]), notes)
    assert len(probabilities) == 4
    assert notes == [f"no ckpt given: using the newest topic run's {ckpts['topics']}"]
    (tmp_path / "runs" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "checkpoints" / "best.ckpt").write_bytes(b"not a checkpoint")  # passed over
    with pytest.raises(UserError) as refused:
        classify_run(config("classify", [f"runs_dir={tmp_path}", "text=ccc"]))
    assert str(refused.value) == (
        f"no checkpoints/best.ckpt of a model trained with topics under runs_dir={tmp_path}; "
        "train one (python train.py model.topics=true) or pass ckpt=PATH"
    )


def test_text_with_commas_and_apostrophes_as_typed(runs, monkeypatch, capsys):
    """The commands' own entry points (``python -m charlm.classify`` / ``charlm.inspect`` run them), with
    the command line as the shell passes it: classify's default checkpoint, and texts that Hydra alone
    would refuse (a comma: a sweep; an apostrophe: a lexer error), inspect's text and topic."""
    from charlm import classify, inspect

    folder, ckpts = runs
    monkeypatch.chdir(folder)
    monkeypatch.setattr("sys.argv", ["classify", "text=Oil prices rise, dollar weakens"])
    classify._main()
    out, err = capsys.readouterr()
    # (the tiny test corpus lacks most of these letters: classify says so in a warning line first)
    assert (
        err.splitlines()[-1]
        == f"note: no ckpt given: using the newest topic run's {ckpts['topics'].relative_to(folder)}"
    )
    assert sorted(line.split()[0] for line in out.splitlines()) == sorted(TOPICS)
    text = "Sudan's talks, again"
    monkeypatch.setattr(
        "sys.argv",
        ["inspect", f"ckpt={ckpts['topics']}", f"text={text}", "topic=Sports", f"out={folder / 'page.html'}"],
    )
    inspect._main()
    out = capsys.readouterr().out
    assert f"{len(text)} characters" in out and "(topic Sports)" in out


def test_sample_py_takes_paths_and_topics_as_typed(runs, monkeypatch, capsys):
    """sample.py as run from the shell (its ``__main__``): a checkpoint path with a comma and an
    apostrophe, and a topic with a slash, reach it as typed."""
    import runpy
    import shutil

    folder, ckpts = runs
    ckpt = folder / "Sudan's, copy.ckpt"
    shutil.copy(ckpts["topics"], ckpt)
    monkeypatch.setattr("sys.argv", ["sample.py", f"ckpt={ckpt}", "topic=Sci/Tech", "prompt=ab ab", "length=5"])
    runpy.run_path(str(ROOT / "sample.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out.startswith("ab ab") and len(out) == len("ab ab") + 5 + 1

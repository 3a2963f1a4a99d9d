"""Topic conditioning and the generative classifier (model.topics=true)."""

import csv
import json

import numpy as np
import pytest
import torch

from charlm.classify import classify
from charlm.config import compose_config
from charlm.data import CharDataModule
from charlm.errors import UserError
from charlm.module import load_checkpoint
from charlm.sampling import generate_text, topic_ids
from charlm.sources import SEPARATOR
from charlm.training import train

from conftest import run_script

LETTERS = "abcd"


def write_corpus(folder, n=120):
    """Articles whose topic k is written only with the letter LETTERS[k]: trivially separable."""
    rng = np.random.default_rng(0)
    path = folder / "news.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        for _ in range(n):
            k = int(rng.integers(4))
            words = [LETTERS[k] * int(rng.integers(2, 6)) for _ in range(int(rng.integers(3, 8)))]
            writer.writerow([str(k + 1), " ".join(words[:2]), " ".join(words[2:])])
    (folder / "classes.txt").write_text("World\nSports\nBusiness\nSci/Tech\n")
    return path


def test_every_character_carries_its_articles_label(tmp_path):
    path = write_corpus(tmp_path)
    dm = CharDataModule(
        path=str(path),
        val_size=10,
        test_size=10,
        nchars=16,
        stride=5,
        batch_size=4,
        eval_rows=3,
        eval_chunk=7,
        cache_dir=str(tmp_path / "cache"),
    )
    assert dm.use_topics() == ["World", "Sports", "Business", "Sci/Tech"]
    separators = 0
    for split in ("train", "val", "test"):
        tokens, labels = dm.held_out_topics(split)
        assert len(tokens) == len(labels) and labels.dtype == np.uint8
        text = dm.vocab.decode(tokens)
        # each letter is written by its topic only; a separator belongs to the article it starts
        for i, ch in enumerate(text):
            if ch in LETTERS:
                assert labels[i] == LETTERS.index(ch), (split, i)
            elif ch == SEPARATOR:
                separators += 1
                assert labels[i] == LETTERS.index(text[i + 1])
    x, y, topic = dm.train_set.__getitems__(list(range(len(dm.train_set))))
    letters = torch.tensor([dm.vocab.chars.index(c) for c in LETTERS])
    is_letter = (x[..., None] == letters).any(-1)
    assert torch.equal(topic[is_letter], (x[..., None] == letters).int().argmax(-1)[is_letter])
    stream = dm.eval_stream("test")
    for i in range(len(stream)):
        x, y, topic = stream[i]
        is_letter = (x[..., None] == letters).any(-1)
        assert torch.equal(topic[is_letter], (x[..., None] == letters).int().argmax(-1)[is_letter])
    assert separators >= 3 * 9  # the separator rule above was checked, in every split


def test_unconditioned_batches_are_unchanged(tmp_path):
    dm = CharDataModule(
        path=str(write_corpus(tmp_path)),
        val_size=10,
        test_size=10,
        nchars=16,
        stride=5,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup()
    assert len(dm.train_set[0]) == 2 and len(dm.eval_stream("val")[0]) == 2


def test_hub_labels_and_names(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    names = ["World", "Sports", "Business", "Sci/Tech"]
    feature = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    train = [LETTERS[i % 4] * 5 for i in range(40)]
    test = [LETTERS[i % 4] * 3 for i in range(8)]
    fake = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": train, "label": [i % 4 for i in range(40)]}, features=feature),
            "test": datasets.Dataset.from_dict({"text": test, "label": [i % 4 for i in range(8)]}, features=feature),
        }
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda name: fake)
    dm = CharDataModule(path=None, val_size=4, nchars=8, stride=8, batch_size=2, cache_dir=str(tmp_path))
    assert dm.use_topics() == names
    tokens, labels = dm.held_out_topics("test")
    text = dm.vocab.decode(tokens)
    assert all(labels[i] == LETTERS.index(c) for i, c in enumerate(text) if c in LETTERS)
    assert dm.meta["topic_counts"] == [9, 9, 9, 9]


def test_topics_on_text_corpus_is_one_line(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("some text to read. " * 50)
    dm = CharDataModule(corpus="text", path=str(path), nchars=8, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError, match="model.topics=true needs a corpus with topics"):
        dm.use_topics()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small topic-conditioned model trained on the separable corpus (with topic dropout)."""
    folder = tmp_path_factory.mktemp("topics")
    path = write_corpus(folder, n=200)
    run_dir = folder / "run"
    run_dir.mkdir()
    cfg = compose_config(
        [
            f"data.path={path}",
            "data.val_size=20",
            "data.test_size=40",
            "data.nchars=32",
            "data.stride=16",
            "data.batch_size=16",
            f"data.cache_dir={folder}/cache",
            "model.topics=true",
            "model.hidden_size=32",
            "model.topic_dropout=0.3",
            "trainer.max_steps=60",
            "trainer.max_time=null",
            "optimizer.lr=0.01",
            "trainer.accelerator=cpu",
            "callbacks.samples.length=20",
        ],
        run_dir,
    )
    metrics = train(cfg, run_dir)
    return run_dir, metrics


def test_generative_classifier_separates_trivial_topics(trained):
    run_dir, metrics = trained
    assert metrics["test/topic_acc"] >= 0.95
    confusion = json.loads((run_dir / "metrics.json").read_text())["test/topic_confusion"]
    assert np.trace(confusion) / np.sum(confusion) == pytest.approx(metrics["test/topic_acc"])
    # trained with topic dropout, the model scores both ways, and knowing the topic is worth bits
    assert np.isfinite(metrics["test/bpc"]) and np.isfinite(metrics["test/bpc_uncond"])
    assert metrics["test/bpc"] < metrics["test/bpc_uncond"]
    assert metrics["test/topic_bits"] == pytest.approx(metrics["test/bpc_uncond"] - metrics["test/bpc"], abs=1e-4)


def test_eval_reproduces_the_topic_models_test(trained):
    """eval.py on the topic run's best checkpoint: every test number training recorded, the topic's worth and
    the classifier's accuracy included (charlm.evaluation, in this process)."""
    from hydra import compose, initialize_config_dir

    from charlm.config import CONF_DIR
    from charlm.evaluation import run

    run_dir, metrics = trained
    overrides = [f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        row = run(compose("eval", overrides=overrides), overrides)
    for key in ("loss", "bpc", "ppl", "bpc_uncond", "topic_bits", "topic_acc"):
        assert row[key] == pytest.approx(metrics[f"test/{key}"], rel=1e-6, abs=1e-7), key


def test_checkpoint_is_weights_only_with_topic_names_and_samples_per_topic(trained):
    run_dir, _ = trained
    ckpt = next((run_dir / "checkpoints").glob("*.ckpt"))
    raw = torch.load(ckpt, weights_only=True)
    assert raw["hyper_parameters"]["topics"] == ["World", "Sports", "Business", "Sci/Tech"]
    module = load_checkpoint(ckpt)
    sports = generate_text(
        module.net, module.vocab, SEPARATOR, 30, temperature=0.5, seed=0, topic=topic_ids(module.topics, "sports")
    )[0]
    letters = [c for c in sports if c in LETTERS]
    assert letters and max(LETTERS, key=letters.count) == "b"  # Sports is written in b
    assert max(classify(module, "bbbb bb bbb").items(), key=lambda kv: kv[1])[0] == "Sports"
    with pytest.raises(UserError, match="topic=Cooking is not one of this model's topics: World, Sports"):
        topic_ids(module.topics, "Cooking")


def test_topic_on_unconditioned_model_is_one_line():
    with pytest.raises(UserError, match="topic=Sports needs a model trained with topics"):
        topic_ids(None, "Sports")


def test_cli_sample_all_topics_and_classify(trained):
    run_dir, _ = trained
    ckpt = next((run_dir / "checkpoints").glob("*.ckpt"))
    out = run_script("sample.py", f"ckpt={ckpt}", "topic=all", "num_samples=2", "length=10", "prompt=a")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("(topic Sci/Tech)") == 2
    out = run_script("-m", "charlm.classify", f"ckpt={ckpt}", 'text="cccc cc ccc"')
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "Business"
    out = run_script("-m", "charlm.classify", f"ckpt={ckpt}")
    assert out.returncode == 2 and out.stderr.strip().startswith("error: give the text to classify")

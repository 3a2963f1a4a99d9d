"""Orders and sources as plug-ins (``charlm.orders``, ``charlm.sources``): found by name in their
registries, an unknown name refused in one line, a new one added as one class; and the source that
proves the seam, ``data=folder`` (a folder of .txt files, one article each), with every order.
Its bad-input rows are in tests/test_bad_input.py's table."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from charlm.data import CharDataModule
from charlm.errors import UserError
from charlm.orders import ORDERS, Articles, Streams, Windows, order_class
from charlm.sources import FILE_SEPARATOR, SOURCES, AgNewsCsv, HubAgNews, TextFile, TextFolder, source_for
from charlm.windows import ShuffledBatches


def test_an_order_and_a_source_are_found_by_name(tmp_path):
    assert [order_class(name) for name in ("windows", "streams", "articles")] == [Windows, Streams, Articles]
    found = {name: type(source_for(name, tmp_path / "x", 0.1, 0.1, "fancyzhx/ag_news")) for name in SOURCES}
    assert found == {"ag_news": AgNewsCsv, "text": TextFile, "folder": TextFolder}
    assert type(source_for("ag_news", None, 0.1, 0.1, "fancyzhx/ag_news")) is HubAgNews  # no data.path: the Hub
    dm = CharDataModule(corpus="folder", path=str(tmp_path), order="streams", cache_dir=str(tmp_path / "cache"))
    assert isinstance(dm.order, Streams) and isinstance(dm.source, TextFolder)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("order", "shuffled", "data.order='shuffled' is not known; use windows, streams, articles"),
        ("corpus", "web", "data.corpus='web' is not known; use ag_news, text, folder"),
        ("corpus", None, "data.corpus=None is not known; use ag_news, text, folder"),
    ],
)
def test_an_unknown_name_is_refused_in_one_line_listing_the_known_ones(tmp_path, key, value, message):
    with pytest.raises(UserError) as refused:
        CharDataModule(path=str(tmp_path), cache_dir=str(tmp_path / "cache"), **{key: value})
    assert str(refused.value) == message


def test_a_new_order_is_one_registered_class(tiny_text, tmp_path, monkeypatch):
    """The data module knows no order by name: one registered class is all a new order takes."""

    class EveryOtherWindow(Windows):
        name = "every_other"

        def make_sampler(self, rank, world_size, position):
            return ShuffledBatches(len(self.windows) // 2, self.batch_size, self.seed, rank, world_size, position)

    monkeypatch.setitem(ORDERS, EveryOtherWindow.name, EveryOtherWindow)
    dm = CharDataModule(
        corpus="text",
        path=str(tiny_text),
        val_size=500,
        test_size=500,
        nchars=16,
        stride=16,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
        order="every_other",
    )
    dm.setup("fit")
    assert len(dm.train_dataloader()) == len(dm.train_set) // 2 // 4
    assert dm.state_dict()["data_order"] == "every_other"


# --- data=folder

ARTICLES = [
    f"article {i:02d}\nline two of article {i:02d}: {'lorem ipsum ' * (i % 5 + 3)}\nthe end.\n" for i in range(20)
]


@pytest.fixture
def folder(tmp_path):
    """20 .txt files (with newlines of their own), named so that name order is not creation order,
    and a file that is not a .txt, which is left out."""
    path = tmp_path / "articles"
    path.mkdir()
    for i in reversed(range(len(ARTICLES))):
        (path / f"{i:02d}.txt").write_text(ARTICLES[i], encoding="utf-8")
    (path / "README.md").write_text("not an article")
    return path


def folder_dm(path, tmp_path, **kwargs):
    args = dict(
        corpus="folder",
        path=str(path),
        val_size=3,
        test_size=0.1,
        nchars=16,
        stride=8,
        batch_size=4,
        eval_rows=4,
        eval_chunk=32,
        cache_dir=str(tmp_path / "cache"),
    )
    dm = CharDataModule(**{**args, **kwargs})
    dm.setup("fit")
    return dm


def test_a_folder_is_split_by_file_in_name_order_with_a_separator_between_files(folder, tmp_path):
    dm = folder_dm(folder, tmp_path)
    decode = lambda split: dm.vocab.decode(np.load(dm.cache_path / f"{split}.npy"))  # noqa: E731
    assert decode("train") == FILE_SEPARATOR.join(ARTICLES[:15])  # 20 files: 3 val, round(0.1 * 20) = 2 test
    assert decode("val") == FILE_SEPARATOR + FILE_SEPARATOR.join(ARTICLES[15:18])
    assert decode("test") == FILE_SEPARATOR + FILE_SEPARATOR.join(ARTICLES[18:])
    assert dm.separator_id == dm.vocab.chars.index(FILE_SEPARATOR) and dm.meta["separator"] == FILE_SEPARATOR
    assert dm.topics is None
    with pytest.raises(UserError, match=r"needs a corpus with topics \(data=ag_news\); data.corpus=folder has none"):
        dm.use_topics()
    # held-out rows start at files, not at the files' own lines
    stream = dm.eval_stream("val")
    tokens = np.load(dm.cache_path / "val.npy")
    assert {int(tokens[s]) for s, n in zip(stream.starts, stream.lengths) if n} == {dm.separator_id}


def test_one_training_file_still_has_the_separator_in_the_vocabulary(folder, tmp_path):
    """It starts each held-out article, so it must not be scored as an unknown character."""
    dm = folder_dm(folder, tmp_path, val_size=0.9, test_size=1)  # 18 val, 1 test: 1 training file
    val = dm.vocab.decode(np.load(dm.cache_path / "val.npy"))
    assert val.count(FILE_SEPARATOR) == 18 and dm.meta["unknown"]["val"] == sum(c not in ARTICLES[0] for c in val) - 18
    assert len(list(dm.train_dataloader())) > 0


def train_some(dm, steps):
    """The batches of an epoch, the first ``steps`` of them counted as trained (as a Trainer does)."""
    batches = list(dm.train_dataloader())
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1)
    for batch in batches[:steps]:
        dm.on_after_batch_transfer(batch, 0)
    dm.trainer = None
    return batches


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for one, other in zip(a, b) for x, y in zip(one[:2], other[:2]))


@pytest.mark.parametrize("order", list(ORDERS))
def test_a_folder_trains_in_every_order_and_resumes_where_it_stood(folder, tmp_path, order):
    dm = folder_dm(folder, tmp_path, order=order)
    batches = train_some(dm, 3)
    x, y, *extras = batches[0]
    assert torch.equal(x[:, 1:], y[:, :-1]) and x.shape[1] == 16
    if order == "articles":  # one batch per training file, of every window in it
        assert len(batches) == 15 and [len(b[0]) for b in batches] == [len(a) - 16 for a in ARTICLES[:15]]
        assert dm.vocab.decode(x[:, 0].numpy()) + dm.vocab.decode(x[-1, 1:].numpy()) == ARTICLES[0][:-1]
    else:
        assert len(x) == 4
    state = dm.state_dict()
    assert state["position"] == 3 and state["data_order"] == order
    resumed = folder_dm(folder, tmp_path, order=order)  # a new process: the same cache, the saved position
    resumed.load_state_dict(state)
    assert same_batches(list(resumed.train_dataloader()), batches[3:])


def test_the_cache_follows_a_change_to_any_file_of_the_folder(folder, tmp_path):
    first = folder_dm(folder, tmp_path).cache_path
    assert folder_dm(folder, tmp_path).cache_path == first  # unchanged: the same cache
    (folder / "07.txt").write_text(ARTICLES[7].upper(), encoding="utf-8")  # the same size, a new time
    edited = folder_dm(folder, tmp_path)
    assert edited.cache_path != first and "ARTICLE 07" in edited.vocab.decode(np.load(edited.cache_path / "train.npy"))
    (folder / "20.txt").write_text("one more article\n")
    assert folder_dm(folder, tmp_path).cache_path not in (first, edited.cache_path)


def test_a_folder_with_too_many_held_out_files_is_refused(folder, tmp_path):
    with pytest.raises(UserError, match=r"^data.val_size \+ data.test_size = 20 leaves nothing of 20 to train on"):
        folder_dm(folder, tmp_path, val_size=10, test_size=10)


@pytest.mark.slow
def test_train_py_trains_and_tests_on_a_folder_in_the_articles_order(folder, tmp_path):
    """``conf/data/folder.yaml`` as a user runs it: a tiny run to its test score."""
    import json

    from conftest import ROOT, run_script

    run = tmp_path / "run"
    result = run_script(
        ROOT / "train.py",
        "data=folder",
        f"data.path={folder}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.order=articles",
        "data.nchars=16",
        "data.val_size=3",
        "data.test_size=2",
        "model.hidden_size=16",
        "model.embedding_dim=8",
        "trainer.max_steps=6",
        "callbacks.samples.length=5",
        f"hydra.run.dir={run}",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["test/bpc"] > 0

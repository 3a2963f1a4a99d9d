import csv

import numpy as np
import pytest
import torch

from charlm.data import IGNORE, SEPARATOR, CharDataModule, read_ag_news_csv
from charlm.errors import UserError


def make_dm(path, tmp_path, **kwargs):
    args = dict(corpus="ag_news", path=str(path), val_size=5, test_size=5, nchars=16, stride=4, batch_size=8,
                eval_rows=4, eval_chunk=32, cache_dir=str(tmp_path / "cache"))
    args.update(kwargs)
    dm = CharDataModule(**args)
    dm.setup("fit")
    return dm


def test_every_window_target_is_input_shifted_by_one(tiny_csv, tmp_path):
    dm = make_dm(tiny_csv, tmp_path)
    tokens = np.load(dm.cache_path / "train.npy")
    x, y = dm.train_set.__getitems__(list(range(len(dm.train_set))))
    assert torch.equal(x[:, 1:], y[:, :-1])
    starts = np.arange(len(dm.train_set)) * dm.stride
    assert torch.equal(x, torch.from_numpy(tokens[starts[:, None] + np.arange(16)].astype(np.int64)))
    assert torch.equal(y[:, -1], torch.from_numpy(tokens[starts + 16].astype(np.int64)))
    assert starts[-1] + 17 <= len(tokens) < starts[-1] + 17 + dm.stride  # no window runs past the end


def test_batches_have_equal_size_and_a_new_order_each_epoch(tiny_csv, tmp_path):
    dm = make_dm(tiny_csv, tmp_path)
    loader = dm.train_dataloader()

    def epoch(e):
        loader.batch_sampler.set_epoch(e)
        return [x for x, _ in loader]

    first, second = epoch(0), epoch(1)
    assert all(x.shape == (8, 16) for x in first + second)
    assert len(first) == len(second) == len(dm.train_set) // 8
    assert not torch.equal(torch.cat(first), torch.cat(second))
    assert torch.equal(torch.cat(epoch(0)), torch.cat(first))  # the order depends on seed and epoch only
    # each epoch is a permutation: no window twice, none missing beyond the dropped last partial batch
    indices = [i for batch in loader.batch_sampler for i in batch]
    assert len(set(indices)) == len(indices) == len(first) * 8 > len(dm.train_set) - 8


def test_resumed_loader_continues_with_the_batches_not_yet_seen(tiny_csv, tmp_path):
    dm = make_dm(tiny_csv, tmp_path)
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(3)
    full = [x for x, _ in loader]
    dm.load_state_dict({"epoch": 3, "batches": 5})
    resumed = [x for x, _ in dm.train_dataloader()]
    assert len(resumed) == len(full) - 5 and all(torch.equal(a, b) for a, b in zip(resumed, full[5:]))


def test_ranks_get_disjoint_batches_that_cover_the_epoch(tiny_csv, tmp_path):
    from charlm.data import ShuffledBatches

    n, size, world = 203, 8, 3
    per_rank = [list(ShuffledBatches(n, size, seed=1, rank=r, world_size=world)) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1 and all(len(b) == n // (size * world) for b in per_rank)
    indices = [i for batches in per_rank for batch in batches for i in batch]
    assert len(indices) == len(set(indices)) == (n // (size * world)) * size * world


def test_held_out_articles_never_reach_training(tiny_csv, tmp_path):
    dm = make_dm(tiny_csv, tmp_path)
    train_text = dm.vocab.decode(np.load(dm.cache_path / "train.npy"))
    articles = read_ag_news_csv(tiny_csv)
    assert train_text == SEPARATOR.join(articles[:50])
    for held_out in articles[50:]:
        assert held_out[:20] not in train_text  # "Title 050 article..." is unique to its article
    assert dm.meta["characters"]["test"] == len(SEPARATOR + SEPARATOR.join(articles[55:]))


def test_text_file_holds_out_its_tail_in_characters(tiny_text, tmp_path):
    dm = make_dm(tiny_text, tmp_path, corpus="text", val_size=500, test_size=0.1)
    text = tiny_text.read_text()
    n_test = round(0.1 * len(text))
    assert dm.meta["characters"] == {"train": len(text) - 500 - n_test, "val": 500, "test": n_test}
    assert dm.vocab.decode(np.load(dm.cache_path / "test.npy")) == text[-n_test:]


def test_eval_stream_scores_every_held_out_character_once_in_order(tiny_csv, tmp_path):
    dm = make_dm(tiny_csv, tmp_path)
    tokens = np.load(dm.cache_path / "val.npy")
    rows = {r: [] for r in range(dm.val_set.rows.shape[0])}
    for x, y in dm.val_set:
        assert x.shape == y.shape
        for r in rows:
            rows[r] += [t for t in y[r].tolist() if t != IGNORE]
    scored = sum(rows.values(), [])
    # rows start at article separators; every other held-out token is a target, in stream order
    starts = np.cumsum([0] + [len(v) + 1 for v in rows.values()])[:-1]
    assert all(tokens[s] == dm.separator_id for s in starts)
    assert scored == np.delete(tokens, starts).tolist()


def test_cache_is_reused_by_later_runs(tiny_csv, tmp_path, monkeypatch):
    first = make_dm(tiny_csv, tmp_path)
    monkeypatch.setattr("charlm.data.read_ag_news_csv", lambda path: pytest.fail("re-read a cached corpus"))
    second = make_dm(tiny_csv, tmp_path)
    assert second.cache_path == first.cache_path and second.vocab.chars == first.vocab.chars
    assert np.load(first.cache_path / "train.npy", mmap_mode="r").dtype == np.uint8


def test_hub_path_uses_test_split_and_a_tail_of_train_for_val(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    train = [f"train articles {i}" for i in range(40)]
    test = [f"test article {i}" for i in range(10)]
    fake = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": train, "label": [0] * 40}),
        "test": datasets.Dataset.from_dict({"text": test, "label": [0] * 10}),
    })
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name: calls.append(name) or fake)
    dm = CharDataModule(path=None, val_size=4, nchars=8, stride=8, batch_size=2, cache_dir=str(tmp_path))
    dm.setup("fit")
    assert calls == ["fancyzhx/ag_news"]
    decode = lambda split: dm.vocab.decode(np.load(dm.cache_path / f"{split}.npy"))
    assert decode("train") == SEPARATOR.join(train[:36])
    assert decode("val") == SEPARATOR + SEPARATOR.join(train[36:])
    assert decode("test") == SEPARATOR + SEPARATOR.join(test)


def test_hub_unreachable_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(name):
        raise ConnectionError("Couldn't reach 'fancyzhx/ag_news' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"Couldn't reach.*data\.path=/path/to/ag_news"):
        CharDataModule(cache_dir=str(tmp_path)).setup("fit")


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"short", "fewer than one window"),
    (b"caf\xe9 au lait " * 20, "is not UTF-8"),
    (b"\x00\x01\x02binary" * 20, "looks binary"),
])
def test_bad_text_corpus_is_refused_with_the_reason(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        make_dm(path, tmp_path, corpus="text", val_size=0.1, test_size=0.1)


def test_csv_not_in_ag_news_format_is_refused_with_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["1", "title", "description"])
        writer.writerow(["name", "age"])
    with pytest.raises(UserError, match="line 2 is not AG News CSV"):
        make_dm(path, tmp_path)


@pytest.mark.parametrize("key, value", [("nchars", 0), ("stride", -1), ("batch_size", 0)])
def test_bad_window_settings_are_refused(tmp_path, key, value):
    with pytest.raises(UserError, match=f"data.{key}={value}"):
        CharDataModule(path="x.csv", **{key: value})


def test_ag_news_folder_uses_its_test_csv_and_a_tail_of_train_for_val(tiny_csv, tmp_path):
    folder = tmp_path / "ag_news"
    folder.mkdir()
    lines = tiny_csv.read_text().splitlines(keepends=True)
    (folder / "train.csv").write_text("".join(lines[:50]))
    (folder / "test.csv").write_text("".join(lines[50:]))
    dm = make_dm(folder, tmp_path, val_size=0.1)
    articles = read_ag_news_csv(tiny_csv)
    decode = lambda split: dm.vocab.decode(np.load(dm.cache_path / f"{split}.npy"))  # noqa: E731
    assert decode("train") == SEPARATOR.join(articles[:45])
    assert decode("val") == SEPARATOR + SEPARATOR.join(articles[45:50])
    assert decode("test") == SEPARATOR + SEPARATOR.join(articles[50:])

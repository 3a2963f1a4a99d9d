import os
import time

import numpy as np
import pytest
import torch

from charlm.data import CharDataModule
from charlm.errors import UserError
from charlm.sources import SEPARATOR, read_ag_news_csv
from charlm.windows import IGNORE, ORDER_VERSION

from conftest import started_together


def make_dm(path, tmp_path, **kwargs):
    args = dict(
        corpus="ag_news",
        path=str(path),
        val_size=5,
        test_size=5,
        nchars=16,
        stride=4,
        batch_size=8,
        eval_rows=4,
        eval_chunk=32,
        cache_dir=str(tmp_path / "cache"),
    )
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
        loader.batch_sampler.position = e * len(loader.batch_sampler)
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
    per_epoch = len(loader.batch_sampler)
    loader.batch_sampler.position = 3 * per_epoch
    full = [x for x, _ in loader]
    dm.load_state_dict({"position": 3 * per_epoch + 5, "order": ORDER_VERSION})
    resumed = [x for x, _ in dm.train_dataloader()]
    assert len(resumed) == len(full) - 5 and all(torch.equal(a, b) for a, b in zip(resumed, full[5:]))
    dm.load_state_dict({"epoch": 3, "batches": 5, "order": ORDER_VERSION})  # a checkpoint from before "position"
    assert all(torch.equal(a, b) for (a, _), b in zip(dm.train_dataloader(), full[5:]))


def test_the_position_counts_batches_that_reach_training_not_batches_drawn_ahead(tiny_csv, tmp_path):
    """Checkpoints save how many batches were trained; the loader draws some ahead of training."""
    from types import SimpleNamespace

    dm = make_dm(tiny_csv, tmp_path)
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(3)]  # drawn, not trained
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1)
    dm.on_after_batch_transfer(batches[0], 0)
    assert dm.state_dict()["position"] == 1
    dm.trainer = SimpleNamespace(training=False, global_rank=0, world_size=1)  # validation batches do not count
    dm.on_after_batch_transfer(batches[1], 0)
    assert dm.state_dict() == {"position": 1, "epoch": 0, "batches": 1, "order": ORDER_VERSION, "data_order": "windows"}


def test_ranks_get_disjoint_batches_that_cover_the_epoch(tiny_csv, tmp_path):
    from charlm.windows import ShuffledBatches

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


def scored_rows(stream):
    """The scored targets of each row of an EvalStream, in the order it serves them."""
    rows = [[] for _ in stream.starts]
    for x, y in stream:
        assert x.shape == y.shape == (len(rows), x.shape[1])
        for r, row in enumerate(rows):
            row += [t for t in y[r].tolist() if t != IGNORE]
    return rows


def test_eval_stream_scores_every_held_out_character_once_in_order(tiny_csv, tmp_path):
    dm = make_dm(tiny_csv, tmp_path)
    tokens = np.load(dm.cache_path / "val.npy")
    rows = scored_rows(dm.eval_stream("val"))
    # rows start at article separators; every other held-out token is a target, in stream order
    starts = np.cumsum([0] + [len(r) + 1 for r in rows])[:-1]
    assert len(rows) > 1 and all(tokens[s] == dm.separator_id for s in starts)
    assert sum(rows, []) == np.delete(tokens, starts).tolist()


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_ranks_score_disjoint_rows_that_make_up_the_whole_stream(tiny_csv, tmp_path, world_size):
    from charlm.windows import EvalStream

    dm = make_dm(tiny_csv, tmp_path)
    tokens = np.load(dm.cache_path / "val.npy", mmap_mode="r")
    whole = EvalStream(tokens, 4, 32, dm.separator_id)
    shards = [EvalStream(tokens, 4, 32, dm.separator_id, rank, world_size) for rank in range(world_size)]
    assert {len(s) for s in shards} == {len(whole)}  # every rank runs the same number of steps
    rows = scored_rows(whole)
    shard_rows = [scored_rows(s) for s in shards]
    for i, row in enumerate(rows):  # row i is on rank i % world_size; padding rows score nothing
        assert shard_rows[i % world_size][i // world_size] == row
    assert sum(map(len, sum(shard_rows, []))) == sum(map(len, rows)) == len(tokens) - len(rows)


def test_cache_is_reused_by_later_runs(tiny_csv, tmp_path, monkeypatch):
    first = make_dm(tiny_csv, tmp_path)
    monkeypatch.setattr("charlm.sources.read_ag_news_csv", lambda *a: pytest.fail("re-read a cached corpus"))
    second = make_dm(tiny_csv, tmp_path)
    assert second.cache_path == first.cache_path and second.vocab.chars == first.vocab.chars
    assert np.load(first.cache_path / "train.npy", mmap_mode="r").dtype == np.uint8


def test_hub_path_uses_test_split_and_a_tail_of_train_for_val(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    train = [f"train articles {i}" for i in range(40)]
    test = [f"test article {i}" for i in range(10)]
    fake = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": train, "label": [0] * 40}),
            "test": datasets.Dataset.from_dict({"text": test, "label": [0] * 10}),
        }
    )
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name: calls.append(name) or fake)
    monkeypatch.setattr("charlm.sources.hub_unreachable", lambda: None)  # the Hub answers
    dm = CharDataModule(path=None, val_size=4, nchars=8, stride=8, batch_size=2, cache_dir=str(tmp_path))
    dm.setup("fit")
    assert calls == ["fancyzhx/ag_news"]
    decode = lambda split: dm.vocab.decode(np.load(dm.cache_path / f"{split}.npy"))
    assert decode("train") == SEPARATOR.join(train[:36])
    assert decode("val") == SEPARATOR + SEPARATOR.join(train[36:])
    assert decode("test") == SEPARATOR + SEPARATOR.join(test)

    # a second run finds the cache by the fingerprint alone: no article is read into Python lists
    def read_column(self, key):
        raise AssertionError(f"column {key!r} read although the cache exists")

    monkeypatch.setattr(datasets.Dataset, "__getitem__", read_column)
    again = CharDataModule(path=None, val_size=4, nchars=8, stride=8, batch_size=2, cache_dir=str(tmp_path))
    again.setup("fit")
    assert again.cache_path == dm.cache_path and calls == ["fancyzhx/ag_news"] * 2


def test_hub_unreachable_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(name):
        raise ConnectionError("Couldn't reach 'fancyzhx/ag_news' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr("charlm.sources.hub_unreachable", lambda: None)  # the Hub answers, the dataset fails
    with pytest.raises(UserError, match=r"Couldn't reach.*data\.path=/path/to/ag_news"):
        CharDataModule(cache_dir=str(tmp_path)).setup("fit")


@pytest.mark.parametrize("local_copy", [True, False])
def test_a_hub_that_does_not_answer_is_found_by_one_request_then_datasets_runs_offline(
    tmp_path, monkeypatch, local_copy
):
    """One request to an endpoint that refuses it; then ``datasets`` loads its local copy in offline mode
    (or fails at once without one) instead of trying each file 6 times over 30 s."""
    datasets = pytest.importorskip("datasets")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    fake = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict({"text": [f"{split} article {i}" for i in range(20)]})
            for split in ("train", "test")
        }
    )
    modes = []

    def load_dataset(name):
        modes.append((constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE))
        if local_copy:
            return fake
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    dm = CharDataModule(val_size=4, nchars=8, stride=8, batch_size=2, cache_dir=str(tmp_path))
    if local_copy:
        dm.setup("fit")
        assert dm.vocab.decode(np.load(dm.cache_path / "train.npy")) == SEPARATOR.join(fake["train"]["text"][:16])
    else:
        with pytest.raises(
            UserError,
            match=r"^could not load fancyzhx/ag_news from the Hugging Face Hub \(no answer "
            r"from http://127\.0\.0\.1:9: .*Connection refused\); offline\? use a local copy",
        ):
            dm.setup("fit")
    assert modes == [(True, True)]
    assert (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == (False, False)  # put back


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


def test_text_is_read_in_pieces_and_decoded_across_piece_boundaries(tmp_path):
    from charlm.sources import read_text_chunks

    text = "naïve café — 日本語 ✓\n" * 500
    path = tmp_path / "utf8.txt"
    path.write_text(text, encoding="utf-8")
    pieces = list(read_text_chunks(path, chunk_bytes=7))  # cuts through multi-byte characters
    assert len(pieces) > 1000 and "".join(pieces) == text


@pytest.mark.parametrize("chunk_bytes, val_size, test_size", [(1000, 0.1, 3000), (1 << 23, 10, 10)])
def test_a_streamed_text_corpus_encodes_as_the_whole_text_would(
    tmp_path, monkeypatch, chunk_bytes, val_size, test_size
):
    import charlm.sources
    from charlm.vocabulary import Vocabulary

    text = "".join(f"{i}: ünïcode and ascii, row {i * 7919 % 1000}.\n" for i in range(2000))
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    original = charlm.sources.read_text_chunks
    monkeypatch.setattr(charlm.sources, "read_text_chunks", lambda p: original(p, chunk_bytes=chunk_bytes))
    dm = make_dm(path, tmp_path, corpus="text", val_size=val_size, test_size=test_size)
    n_val = val_size if isinstance(val_size, int) else round(val_size * len(text))
    n_train = len(text) - n_val - test_size
    vocab = Vocabulary.from_text(text[:n_train])
    assert dm.vocab.chars == vocab.chars
    whole = vocab.encode(text)
    for split, (a, b) in {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, None),
    }.items():
        assert np.array_equal(np.load(dm.cache_path / f"{split}.npy"), whole[a:b]), split


def _prepare_together(path, cache_dir, barrier, built_log):
    import charlm.data

    original = charlm.data.CharDataModule._write_cache

    def slow_write(self, cache, corpus):
        with open(built_log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # a build long enough that the other process arrives while it runs
        original(self, cache, corpus)

    charlm.data.CharDataModule._write_cache = slow_write
    dm = CharDataModule(corpus="ag_news", path=str(path), val_size=5, test_size=5, nchars=16, cache_dir=str(cache_dir))
    barrier.wait()
    dm.prepare_data()


def test_processes_starting_together_build_the_cache_once(tiny_csv, tmp_path):
    built_log = tmp_path / "built.txt"
    assert started_together(_prepare_together, tiny_csv, tmp_path / "cache", built_log) == [0, 0, 0]
    assert len(built_log.read_text().split()) == 1  # one encoded, the others waited and read its cache
    dm = make_dm(tiny_csv, tmp_path)
    assert dm.meta["characters"]["val"] > 0


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_index_permutation_is_a_shuffle_of_every_index(n):
    from charlm.windows import IndexPermutation

    orders = [IndexPermutation(n, seed)(np.arange(n)) for seed in (0, 1)]
    assert all(sorted(order.tolist()) == list(range(n)) for order in orders)
    if n >= 64:
        assert not np.array_equal(orders[0], orders[1])  # another seed (epoch), another order
        # no trace of the original order: |correlation| with it as small as for random permutations
        correlations = [np.corrcoef(np.arange(n), IndexPermutation(n, seed)(np.arange(n)))[0, 1] for seed in range(20)]
        assert np.mean(np.abs(correlations)) < 1.5 * np.sqrt(2 / np.pi / (n - 1))


def test_a_bad_byte_is_reported_at_its_offset_in_the_file(tmp_path):
    from charlm.sources import read_text_chunks

    path = tmp_path / "bad.txt"
    path.write_bytes("é".encode() * 10 + b"\xff" + b"x" * 10)  # the bad byte is byte 20
    for chunk_bytes in (3, 7, 1 << 20):  # pieces that cut "é" in two before it, and one piece
        with pytest.raises(UserError, match=r"not UTF-8 \(byte 20\)"):
            list(read_text_chunks(path, chunk_bytes=chunk_bytes))


def test_a_finished_cache_is_read_without_writing_or_locking(tiny_csv, tmp_path, monkeypatch):
    """So a cache built once and shared read-only (e.g. on a cluster) works."""
    first = make_dm(tiny_csv, tmp_path)
    monkeypatch.setattr("charlm.data.writable_dir", lambda *a: pytest.fail("checked a finished cache for writing"))
    monkeypatch.setattr("charlm.data.FileLock", lambda *a: pytest.fail("locked a finished cache"))
    assert make_dm(tiny_csv, tmp_path).cache_path == first.cache_path


def test_a_leading_bom_is_dropped_and_line_ends_read_as_newlines_in_any_pieces(tmp_path):
    """Windows editors save with a BOM and \\r\\n: the text read is that of the same file saved with
    \\n, also when a piece ends inside the BOM or between \\r and \\n. A BOM inside the text is kept."""
    from charlm.sources import read_text_chunks

    path = tmp_path / "windows.txt"
    path.write_bytes("\ufeffnaïve\r\ncafé\rend \ufeff\r\n\r\n".encode())
    for chunk_bytes in (1, 2, 3, 4, 5, 8, 1 << 20):
        pieces = list(read_text_chunks(path, chunk_bytes=chunk_bytes))
        assert "".join(pieces) == "naïve\ncafé\nend \ufeff\n\n", chunk_bytes


def test_a_windows_text_file_gives_the_corpus_of_its_unix_copy(tmp_path, monkeypatch):
    """Same vocabulary (no BOM, no \\r), same split sizes and tokens, also read in small pieces
    whose ends fall between \\r and \\n (sizes come from one pass, tokens from another)."""
    import charlm.sources

    text = "".join(f"line {i}: héllo wörld\n" for i in range(400))
    unix, windows = tmp_path / "unix.txt", tmp_path / "windows.txt"
    unix.write_text(text, encoding="utf-8", newline="\n")
    windows.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    original = charlm.sources.read_text_chunks
    monkeypatch.setattr(charlm.sources, "read_text_chunks", lambda p: original(p, chunk_bytes=97))
    a, b = (make_dm(p, tmp_path, corpus="text", val_size=0.1, test_size=0.1) for p in (unix, windows))
    assert b.vocab.chars == a.vocab.chars and "\r" not in b.vocab.chars and "\ufeff" not in b.vocab.chars
    assert b.meta["characters"] == a.meta["characters"]
    for split in ("train", "val", "test"):
        assert np.array_equal(np.load(b.cache_path / f"{split}.npy"), np.load(a.cache_path / f"{split}.npy"))


def test_an_ag_news_csv_with_a_bom_is_read(tiny_csv, tmp_path):
    with_bom = tmp_path / "bom.csv"
    with_bom.write_bytes(b"\xef\xbb\xbf" + tiny_csv.read_bytes())
    assert read_ag_news_csv(with_bom) == read_ag_news_csv(tiny_csv)


# --- data.order=streams and data.order=articles


def stream_epoch(dm, epoch):
    """The training batches of epoch ``epoch`` of ``dm``'s loader (streams: ``(x, y, extras)``)."""
    loader = dm.train_dataloader()
    loader.batch_sampler.position = epoch * len(loader.batch_sampler)
    return list(loader)


@pytest.mark.parametrize("nchars, batch_size", [(16, 8), (7, 3), (40, 1)])
def test_streams_serve_each_target_at_most_once_an_epoch_and_leave_out_less_than_a_round(
    tiny_csv, tmp_path, nchars, batch_size
):
    dm = make_dm(tiny_csv, tmp_path, order="streams", nchars=nchars, batch_size=batch_size)
    tokens = torch.from_numpy(np.load(dm.cache_path / "train.npy").astype(np.int64))
    sampler = dm.train_dataloader().batch_sampler
    offsets = set()
    for epoch in range(3):
        batches = stream_epoch(dm, epoch)
        assert [b[2]["carry"] for b in batches] == [False] + [True] * (len(batches) - 1)  # a new start each epoch
        o = sampler.offset(epoch)
        offsets.add(o)
        starts = sampler.row_starts(epoch)
        targets = np.zeros(len(tokens), dtype=np.int64)  # how often each position is a target
        for k, (x, y, _) in enumerate(batches):
            assert x.shape == y.shape == (batch_size, nchars) and torch.equal(x[:, 1:], y[:, :-1])
            for r, start in enumerate(starts + k * nchars):  # row r continues where its last chunk ended
                assert torch.equal(x[r], tokens[start : start + nchars]) and torch.equal(
                    y[r], tokens[start + 1 : start + nchars + 1]
                )
                targets[start + 1 : start + nchars + 1] += 1
        assert targets.max() == 1
        missed = len(tokens) - 1 - targets.sum()  # target positions are 1 .. n-1
        assert targets[1 : o + 1].sum() == 0 and missed < (batch_size + 1) * nchars
    assert len(offsets) > 1  # the rows start at other offsets: chunk boundaries move


def test_streams_ranks_take_disjoint_rows_and_the_order_resumes_mid_epoch():
    from charlm.windows import StreamBatches

    n, nchars, size, world = 5003, 10, 4, 3
    per_rank = [StreamBatches(n, nchars, size, seed=2, rank=r, world_size=world) for r in range(world)]
    assert len({len(s) for s in per_rank}) == 1 and len(per_rank[0]) == (n - nchars) // (size * world * nchars)
    targets = [
        np.concatenate([starts[:, None] + np.arange(1, nchars + 1) for starts, _ in s]).ravel() for s in per_rank
    ]
    everything = np.concatenate(targets)
    assert len(set(everything)) == len(everything)  # each rank its own rows: no target on two ranks
    full = list(per_rank[1])
    resumed = StreamBatches(n, nchars, size, seed=2, rank=1, world_size=world, position=len(full) * 4 + 7)
    again = StreamBatches(n, nchars, size, seed=2, rank=1, world_size=world, position=len(full) * 4)
    assert [s.tolist() for s, _ in resumed] == [s.tolist() for s, _ in list(again)[7:]]
    assert [c["carry"] for _, c in resumed] == [True] * (len(full) - 7)


@pytest.mark.parametrize("on_device", [False, True])
def test_articles_are_one_batch_each_of_every_window_in_file_order(tiny_csv, tmp_path, on_device):
    dm = make_dm(tiny_csv, tmp_path, order="articles", nchars=30, on_device=on_device)
    articles = [a for a in read_ag_news_csv(tiny_csv)[:50]]
    batches = list(dm.train_dataloader())
    kept = [a for a in articles if len(a) > 30]
    assert len(batches) == len(kept) == len(dm.train_dataloader())
    for (x, y), text in zip(batches, kept):
        ids = torch.tensor(dm.vocab.encode(text))
        assert x.shape == (len(text) - 30, 30)  # a window at every start whose target fits
        assert all(
            torch.equal(x[i], ids[i : i + 30]) and torch.equal(y[i], ids[i + 1 : i + 31]) for i in (0, 7, len(x) - 1)
        )
    dm.load_state_dict(
        {"position": len(kept) + 3, "order": ORDER_VERSION, "data_order": "articles"}
    )  # epoch 1, article 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(dm.train_dataloader(), batches[3:]))


def test_articles_of_a_short_article_are_skipped_and_ranks_take_turns(tmp_path):
    from charlm.windows import ArticleBatches, article_bounds

    tokens = np.array([5, 5, 0, 5, 5, 5, 5, 0, 0, 5, 5, 5, 5, 5], dtype=np.uint8)  # articles of 2, 4, 0, 5 tokens
    bounds = article_bounds(tokens, 0, block=3)
    assert bounds.tolist() == [[0, 2], [3, 7], [8, 8], [9, 14]]
    assert [b.tolist() for b in ArticleBatches(bounds, nchars=2)] == [[3, 4], [9, 10, 11]]
    assert [b.tolist() for b in ArticleBatches(bounds, nchars=2, rank=1, world_size=2)] == [[9, 10, 11]]
    assert len(ArticleBatches(bounds, nchars=2, rank=0, world_size=3)) == 0

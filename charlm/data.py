"""Corpus -> cached token arrays -> shuffled, equal-size batches of character windows.

Sources: AG News from the Hugging Face Hub (default), a local AG News copy in the
authors' CSV format (one file, or a folder with train.csv and test.csv), or any UTF-8
plain-text file. Each split is encoded once into a ``.npy`` token array (uint8 when the
vocabulary fits) under ``cache_dir``, keyed by the source and the split sizes, and
memory-mapped by every later run and sweep job.

Training windows are index arithmetic on the shared token array; validation and test
run over the held-out stream in a fixed order with the recurrent state carried, so every
held-out character is scored with its full left context (see ``EvalStream``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from charlm.config import writable_dir
from charlm.errors import UserError
from charlm.vocabulary import Vocabulary

log = logging.getLogger(__name__)

SEPARATOR = "\n"  # joins AG News articles into one stream; AG News text has no real newlines
CACHE_VERSION = 1
IGNORE = -100  # target id of padding, skipped by the loss
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- reading sources


def read_ag_news_csv(path: Path) -> list[str]:
    """Articles (title + " " + description) of an AG News CSV in the dataset authors' format.

    The text is kept exactly as the Hub's ``text`` column has it (backslash escapes
    included), so a local copy and the Hub give the same vocabulary."""
    articles = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = csv.reader(f, quotechar='"', delimiter=",", quoting=csv.QUOTE_ALL, skipinitialspace=True)
            for row in rows:
                if len(row) != 3 or row[0] not in ("1", "2", "3", "4"):
                    raise UserError(
                        f"data.path={path}: line {rows.line_num} is not AG News CSV (class index 1-4, title, "
                        f"description), got {str(row)[:60]}; for plain text use data=text"
                    )
                articles.append(row[1] + " " + row[2])
    except UnicodeDecodeError as err:
        raise UserError(f"data.path={path} is not UTF-8 (byte {err.start}); convert it, e.g. iconv -t utf-8") from None
    return articles


def read_text_file(path: Path) -> str:
    """The whole file as text; refuses binary and non-UTF-8 files."""
    raw = path.read_bytes()
    if b"\x00" in raw[:1 << 20]:
        raise UserError(f"data.path={path} looks binary (it has NUL bytes); pass a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"data.path={path} is not UTF-8 (byte {err.start}); convert it, e.g. iconv -t utf-8") from None


def load_hub_ag_news(name: str):
    """AG News train and test articles from the Hugging Face Hub (cached by ``datasets``)."""
    import datasets

    for library in ("datasets", "huggingface_hub"):  # their console handlers print retries to stderr:
        logging.getLogger(library).handlers.clear()   # send them through the root logger to the run's log
    try:
        ds = datasets.load_dataset(name)
    except Exception as err:  # offline, unknown name, Hub down: all fixed the same way
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"could not load {name} from the Hugging Face Hub ({reason}); offline? use a local copy: "
            "data.path=/path/to/ag_news (a folder with train.csv and test.csv, or one CSV file)"
        ) from None
    fingerprint = ds["train"]._fingerprint + ds["test"]._fingerprint
    return list(ds["train"]["text"]), list(ds["test"]["text"]), fingerprint


def count(size: int | float, total: int, key: str) -> int:
    """An absolute count from ``size``: an int as is, a float in (0, 1) as a fraction of ``total``."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0 or (isinstance(size, float) and size >= 1):
        raise UserError(f"{key}={size!r} must be a count >= 1 or a fraction in (0, 1)")
    return int(size) if isinstance(size, int) else max(1, round(size * total))


def split_off(items, size, key: str):
    """Split a sequence into (head, tail) with ``size`` items (count or fraction) in the tail."""
    n = count(size, len(items), key)
    if n >= len(items):
        raise UserError(f"{key}={size!r} leaves nothing of {len(items)} to train on; lower it")
    return items[:-n], items[-n:]


def split_tail(items, val_size, test_size):
    """Split a sequence into (train, val, test): test is its tail, val the part before it."""
    n = len(items)
    n_val, n_test = count(val_size, n, "data.val_size"), count(test_size, n, "data.test_size")
    if n_val + n_test >= n:
        raise UserError(f"data.val_size + data.test_size = {n_val + n_test} leaves nothing of {n} to train on; lower them")
    return items[: n - n_val - n_test], items[n - n_val - n_test : n - n_test], items[n - n_test :]


# ----------------------------------------------------------------------------- datasets


class WindowDataset(Dataset):
    """Every ``stride``-th window of ``nchars + 1`` tokens: input = first ``nchars``, target = last ``nchars``.

    ``__getitems__`` cuts a whole batch with one fancy index into the memory-mapped array,
    so no Python code runs per window or per character. The array is opened lazily, so
    DataLoader workers share the page cache instead of each receiving a pickled copy."""

    def __init__(self, path: Path, nchars: int, stride: int):
        self.path, self.nchars, self.stride = Path(path), nchars, stride
        self._tokens = None
        self._offsets = np.arange(nchars + 1)
        self._len = (len(self.tokens) - nchars - 1) // stride + 1

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.load(self.path, mmap_mode="r")
        return self._tokens

    def __getstate__(self):
        return {**self.__dict__, "_tokens": None}

    def __len__(self) -> int:
        return self._len

    def __getitems__(self, indices):
        starts = np.asarray(indices, dtype=np.int64) * self.stride
        windows = torch.from_numpy(self.tokens[starts[:, None] + self._offsets].astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    def __getitem__(self, index):
        x, y = self.__getitems__([index])
        return x[0], y[0]


class ShuffledBatches(Sampler[list[int]]):
    """Batches of ``batch_size`` window indices in a new random order each epoch.

    The order depends only on ``seed`` and the epoch (set by Lightning through
    ``set_epoch``), not on the global random state, and ``skip`` batches of the epoch can be
    passed over, so a run resumed mid-epoch continues with exactly the batches it would have
    seen. Under data parallelism rank ``rank`` of ``world_size`` takes every
    ``world_size``-th batch: the ranks' batches are disjoint and cover the epoch except the
    last incomplete round. (torch's ``RandomSampler`` can do neither, and Lightning's
    ``DistributedSampler`` replaces the sampler without resumable state.)"""

    def __init__(self, num_windows: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.num_windows, self.batch_size, self.seed = num_windows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_windows // (self.batch_size * self.world_size)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_windows, generator=generator)
        batches = order[: len(self) * self.batch_size * self.world_size].view(-1, self.world_size, self.batch_size)
        for batch in batches[skip:, self.rank]:
            yield batch.tolist()


def as_batch(batch):
    """Collate function for ``__getitems__`` datasets: the batch is already built."""
    return batch


class EvalStream(Dataset):
    """A held-out token stream laid out as ``rows`` parallel rows, served in order as chunks
    of ``chunk`` characters. The model carries its recurrent state from one chunk to the
    next (``CharLM.validation_step``), so each character is scored with all the text before
    it in its row. Rows are cut at separators (article starts) when ``separator_id`` is
    given, so no article is split; padding carries the target ``IGNORE``."""

    def __init__(self, tokens: np.ndarray, rows: int, chunk: int, separator_id: int | None):
        n = len(tokens)
        cuts = np.linspace(0, n, min(rows, max(1, n // 2)) + 1).astype(np.int64)
        if separator_id is not None:
            starts = np.flatnonzero(np.asarray(tokens) == separator_id)
            if len(starts):
                inner = starts[np.minimum(np.searchsorted(starts, cuts[1:-1]), len(starts) - 1)]
                cuts = np.unique(np.concatenate([[0], inner, [n]]))
        lengths = np.diff(cuts)
        self.lengths = torch.from_numpy(lengths)
        self.rows = torch.zeros(len(lengths), int(lengths.max()), dtype=torch.int64)
        for r, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):  # one copy per row, not per character
            self.rows[r, : b - a] = torch.from_numpy(np.asarray(tokens[a:b], dtype=np.int64))
        self.chunk = chunk
        self.scored = int((lengths - 1).sum())

    def __len__(self) -> int:
        return (self.rows.shape[1] - 1 + self.chunk - 1) // self.chunk

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        a, b = i * self.chunk, min((i + 1) * self.chunk, self.rows.shape[1] - 1)
        x, y = self.rows[:, a:b], self.rows[:, a + 1 : b + 1].clone()
        positions = torch.arange(a + 1, b + 1)
        y[positions[None, :] >= self.lengths[:, None]] = IGNORE
        return x, y


# ----------------------------------------------------------------------------- data module


class CharDataModule(L.LightningDataModule):
    """AG News (Hub or local CSV) or a plain-text file as shuffled equal-size window batches.

    Args:
        corpus: ``ag_news`` or ``text``.
        path: local AG News CSV file or folder (train.csv + test.csv), or the text file;
            ``None`` with ``ag_news`` downloads ``hub_dataset`` from the Hugging Face Hub.
        hub_dataset: the Hub name of AG News.
        val_size, test_size: held-out sizes, a count (articles for AG News, characters for
            text) or a fraction in (0, 1). Val is cut from the tail of the training data
            and test from the tail of the file; a source with its own test split uses it
            and ignores ``test_size``.
        nchars: window length in characters; stride: characters between window starts.
        batch_size: windows per training batch (every batch has exactly this many).
        eval_rows, eval_chunk: rows and chunk length of the held-out streams.
        num_workers, pin_memory: DataLoader settings for training.
        cache_dir: where encoded token arrays are kept and shared between runs.
        seed: seeds the order of the training windows (a new order each epoch).
    """

    def __init__(
        self,
        corpus: str = "ag_news",
        path: str | None = None,
        hub_dataset: str = "fancyzhx/ag_news",
        val_size: int | float = 0.05,
        test_size: int | float = 0.05,
        nchars: int = 100,
        stride: int = 100,
        batch_size: int = 16,
        eval_rows: int = 64,
        eval_chunk: int = 512,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_dir: str = "outputs/cache",
        seed: int = 0,
    ):
        super().__init__()
        if corpus not in ("ag_news", "text"):
            raise UserError(f"data.corpus={corpus!r} is not known; use ag_news or text")
        if corpus == "text" and not path:
            raise UserError("data=text needs a file: data.path=/path/to/file.txt")
        for key, value, low in (("nchars", nchars, 1), ("stride", stride, 1), ("batch_size", batch_size, 1),
                                ("eval_rows", eval_rows, 1), ("eval_chunk", eval_chunk, 1), ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"data.{key}={value!r} must be a whole number >= {low}")
        self.corpus, self.hub_dataset = corpus, hub_dataset
        self.path = Path(path).expanduser().resolve() if path else None
        self.val_size, self.test_size = val_size, test_size
        self.nchars, self.stride, self.batch_size = nchars, stride, batch_size
        self.eval_rows, self.eval_chunk = eval_rows, eval_chunk
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.cache_root = Path(cache_dir).expanduser().resolve()
        self.seed = seed
        self.vocab: Vocabulary | None = None
        self.cache_path: Path | None = None
        self._resume = {"epoch": 0, "batches": 0}

    # --- preparing the cache

    def _local_key(self) -> str:
        if not self.path.exists():
            raise UserError(f"data.path={self.path} does not exist; pass an existing file or folder")
        files = sorted(self.path.glob("*.csv")) if self.path.is_dir() else [self.path]
        return ";".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)

    def _read_local(self) -> dict[str, str]:
        """The three splits of the local source as text."""
        if self.corpus == "text":
            if self.path.is_dir():
                raise UserError(f"data.path={self.path} is a folder; data=text needs one text file")
            text = read_text_file(self.path)
            if not text:
                raise UserError(f"data.path={self.path} is empty; pass a file with text in it")
            return dict(zip(SPLITS, split_tail(text, self.val_size, self.test_size)))
        if not self.path.is_dir():
            return self._ag_news_texts(*split_tail(read_ag_news_csv(self.path), self.val_size, self.test_size))
        if not (self.path / "train.csv").exists() or not (self.path / "test.csv").exists():
            raise UserError(f"data.path={self.path} is a folder without train.csv and test.csv; "
                            "pass one CSV file or a folder with both")
        train = read_ag_news_csv(self.path / "train.csv")
        return self._ag_news_texts(*split_off(train, self.val_size, "data.val_size"),
                                   read_ag_news_csv(self.path / "test.csv"))

    def _ag_news_texts(self, train: list[str], val: list[str], test: list[str]) -> dict[str, str]:
        if not test:
            raise UserError(f"AG News source {self.path} has no test articles; pass a file with some")
        # Held-out streams start with a separator, so their first article is scored from its start.
        return {s: (SEPARATOR if s != "train" else "") + SEPARATOR.join(docs)
                for s, docs in zip(SPLITS, (train, val, test))}

    def _cache_dir_for(self, source_key: str) -> Path:
        spec = json.dumps([CACHE_VERSION, self.corpus, self.hub_dataset if self.path is None else "",
                           source_key, self.val_size, self.test_size])
        return self.cache_root / hashlib.sha1(spec.encode()).hexdigest()[:16]

    def prepare_data(self) -> None:
        """Encode the corpus into the cache unless an earlier run did already."""
        if self.cache_path is not None:
            return
        if self.path is None:
            train, test, source_key = load_hub_ag_news(self.hub_dataset)
            read = lambda: self._ag_news_texts(*split_off(train, self.val_size, "data.val_size"), test)  # noqa: E731
        else:
            source_key, read = self._local_key(), self._read_local
        cache = self._cache_dir_for(source_key)
        if not (cache / "meta.json").exists():
            self._write_cache(cache, read())
        self.cache_path = cache

    def _write_cache(self, cache: Path, texts: dict[str, str]) -> None:
        if len(texts["train"]) < self.nchars + 1:
            raise UserError(f"the training text of {self.path or self.hub_dataset} has {len(texts['train'])} characters, "
                            f"fewer than one window (data.nchars + 1 = {self.nchars + 1}); lower data.nchars or use "
                            "a longer corpus")
        vocab = Vocabulary.from_text(texts["train"])
        writable_dir(self.cache_root, "data.cache_dir")
        tmp = Path(tempfile.mkdtemp(dir=self.cache_root, prefix=".tmp-"))
        try:
            meta = {"vocab": vocab.chars, "source": str(self.path or self.hub_dataset), "corpus": self.corpus,
                    "separator": SEPARATOR if self.corpus == "ag_news" else None, "characters": {}}
            for split, text in texts.items():
                tokens = vocab.encode(text)
                np.save(tmp / f"{split}.npy", tokens)
                meta["characters"][split] = len(tokens)
                meta.setdefault("unknown", {})[split] = int((tokens == 0).sum())
            (tmp / "meta.json").write_text(json.dumps(meta))
            os.rename(tmp, cache)  # atomic: a concurrent job either sees the whole cache or none
            log.info("encoded %s into %s: %s characters, vocabulary of %d", meta["source"], cache,
                     meta["characters"], len(vocab))
        except OSError:
            if not (cache / "meta.json").exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- loading

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        self.prepare_data()  # a no-op once cached; makes setup() alone enough outside a Trainer
        meta = json.loads((self.cache_path / "meta.json").read_text())
        self.vocab = Vocabulary(meta["vocab"])
        self.meta = meta
        self.separator_id = self.vocab.chars.index(meta["separator"]) if meta["separator"] in self.vocab.chars else None
        self.train_set = WindowDataset(self.cache_path / "train.npy", self.nchars, self.stride)
        for split in ("val", "test"):
            tokens = np.load(self.cache_path / f"{split}.npy", mmap_mode="r")
            if len(tokens) < 2:
                raise UserError(f"the {split} split has {len(tokens)} characters; raise data.{split}_size")
            setattr(self, f"{split}_set", EvalStream(tokens, self.eval_rows, self.eval_chunk, self.separator_id))
        if meta["unknown"]["val"] or meta["unknown"]["test"]:
            log.info("characters outside the vocabulary (scored as id 0): %s", meta["unknown"])

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batches = ShuffledBatches(len(self.train_set), self.batch_size, self.seed, rank, world_size)
        if len(batches) == 0:
            raise UserError(f"data.batch_size={self.batch_size} is more than the {len(self.train_set)} training "
                            f"windows (per device); lower it or data.stride")
        epoch, done = self._resume["epoch"], self._resume["batches"]
        batches.set_epoch(epoch + 1 if done >= len(batches) else epoch)
        batches.skip = done if done < len(batches) else 0
        # Its own generator: creating an iterator then draws no number from the global random
        # state, which a resumed run restores and must advance exactly as the first run did.
        return DataLoader(self.train_set, batch_sampler=batches, collate_fn=as_batch, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
                          generator=torch.Generator().manual_seed(self.seed))

    def state_dict(self) -> dict:
        """Where training stands in the data: the epoch and the batches of it already trained on."""
        loop = self.trainer.fit_loop
        return {"epoch": loop.epoch_progress.current.processed, "batches": loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)

    def _eval_loader(self, dataset: EvalStream) -> DataLoader:
        # its own generator, as for training: validating must not move the global random state
        return DataLoader(dataset, batch_size=None, shuffle=False, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

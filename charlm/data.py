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

import codecs
import contextlib
import csv
import hashlib
import json
import logging
import mmap
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset, Sampler

from charlm.config import writable_dir
from charlm.errors import UserError
from charlm.vocabulary import Vocabulary, distinct_codepoints

log = logging.getLogger(__name__)

SEPARATOR = "\n"  # joins AG News articles into one stream; AG News text has no real newlines
CACHE_VERSION = 1
ORDER_VERSION = 2  # of the training window order (2: IndexPermutation), saved in checkpoints
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


def read_text_chunks(path: Path, chunk_bytes: int = 1 << 23):
    """The UTF-8 file as successive pieces of text of about ``chunk_bytes`` bytes each, never the
    whole text at once; refuses binary (NUL bytes in the first MiB) and non-UTF-8 files."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            if offset == 0 and b"\x00" in raw[: 1 << 20]:
                raise UserError(f"data.path={path} looks binary (it has NUL bytes); pass a UTF-8 text file")
            pending = len(decoder.getstate()[0])  # bytes of a character cut at the end of the last piece
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as err:
                raise UserError(f"data.path={path} is not UTF-8 (byte {offset - pending + err.start}); convert it, "
                                "e.g. iconv -t utf-8") from None
            if not raw:
                return
            offset += len(raw)
            yield text


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


def split_sizes(n: int, val_size, test_size) -> tuple[int, int, int]:
    """Sizes (train, val, test) of a sequence of ``n`` items whose tail is test and the part before it val."""
    n_val, n_test = count(val_size, n, "data.val_size"), count(test_size, n, "data.test_size")
    if n_val + n_test >= n:
        raise UserError(f"data.val_size + data.test_size = {n_val + n_test} leaves nothing of {n} to train on; lower them")
    return n - n_val - n_test, n_val, n_test


def split_tail(items, val_size, test_size):
    """Split a sequence into (train, val, test): test is its tail, val the part before it."""
    n_train, n_val, _ = split_sizes(len(items), val_size, test_size)
    return items[:n_train], items[n_train : n_train + n_val], items[n_train + n_val :]


# ----------------------------------------------------------------------------- datasets


def map_tokens(path: Path, random_access: bool = False) -> np.ndarray:
    """The token array of a cache ``.npy`` file, memory-mapped read-only.

    ``random_access`` tells the kernel not to read ahead around each page fault (MADV_RANDOM):
    training reads its windows at random places, and read-ahead (8 MiB per fault on the disk
    of the development machine) would read and map much of the file within a few hundred steps."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if random_access and hasattr(mapping, "madvise"):
            mapping.madvise(mmap.MADV_RANDOM)
        return np.frombuffer(mapping, dtype=dtype, count=int(np.prod(shape)), offset=f.tell())


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
            self._tokens = map_tokens(self.path, random_access=True)
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


class IndexPermutation:
    """A pseudo-random permutation of ``range(n)`` evaluated index by index: a 4-round Feistel
    network on the smallest even number of bits that holds ``n``, with cycle-walking back into
    range. Shuffling an epoch this way takes constant memory, where ``torch.randperm`` would
    hold 8 bytes per window (240 MB for the windows of a 3 GB corpus)."""

    ROUNDS = 4

    def __init__(self, n: int, seed: int):
        self.n = n
        self.half_bits = np.uint64(max(1, ((n - 1).bit_length() + 1) // 2))
        self.mask = np.uint64((1 << int(self.half_bits)) - 1)
        self.keys = np.random.default_rng(seed).integers(0, 2**63, size=self.ROUNDS, dtype=np.uint64)

    def _mix(self, x: np.ndarray, key: np.uint64) -> np.ndarray:
        x = (x ^ key) * np.uint64(0x9E3779B97F4A7C15)  # splitmix64's finalizer: every bit affects every bit
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        return (x ^ (x >> np.uint64(31))) & self.mask

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half_bits, x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._mix(right, key)
        return (left << self.half_bits) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The windows at ``positions`` (each in ``range(n)``) of the shuffled order."""
        x = self._encrypt(np.asarray(positions, dtype=np.uint64))
        outside = x >= self.n
        while outside.any():  # the bijection of the wider range, walked until back in range(n)
            x[outside] = self._encrypt(x[outside])
            outside = x >= self.n
        return x.astype(np.int64)


class ShuffledBatches(Sampler[list[int]]):
    """Batches of ``batch_size`` window indices in a new random order each epoch.

    The order (an ``IndexPermutation``) depends only on ``seed`` and the epoch (set by
    Lightning through ``set_epoch``), not on the global random state, and ``skip`` batches of
    the epoch can be passed over, so a run resumed mid-epoch continues with exactly the batches
    it would have seen. Under data parallelism rank ``rank`` of ``world_size`` takes every
    ``world_size``-th batch: the ranks' batches are disjoint and cover the epoch except the
    last incomplete round. (torch's ``RandomSampler`` can do neither, and Lightning's
    ``DistributedSampler`` replaces the sampler without resumable state.)"""

    BATCH_ROUNDS_PER_CALL = 256  # rounds (one batch for every rank) drawn per call of the permutation

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
        permutation = IndexPermutation(self.num_windows, (self.seed * 100_003 + self.epoch) % 2**64)
        per_round = self.batch_size * self.world_size
        own_slots = self.rank * self.batch_size + np.arange(self.batch_size)  # this rank's places in a round
        for first in range(skip, len(self), self.BATCH_ROUNDS_PER_CALL):
            rounds = np.arange(first, min(first + self.BATCH_ROUNDS_PER_CALL, len(self)))
            positions = (rounds[:, None] * per_round + own_slots).ravel()
            yield from permutation(positions).reshape(-1, self.batch_size).tolist()


def as_batch(batch):
    """Collate function for ``__getitems__`` datasets: the batch is already built."""
    return batch


class EvalStream(Dataset):
    """A held-out token stream laid out as ``rows`` parallel rows, served in order as chunks
    of ``chunk`` characters. The model carries its recurrent state from one chunk to the
    next (``CharLM.validation_step``), so each character is scored with all the text before
    it in its row. Rows are cut at separators (article starts) when ``separator_id`` is
    given, so no article is split; padding carries the target ``IGNORE``.

    Under data parallelism rank ``rank`` of ``world_size`` takes every ``world_size``-th row
    (padded with empty rows to the same count), and every rank serves the same number of
    chunks, so the ranks score disjoint rows that together are the whole stream. Each chunk
    is sliced from the (memory-mapped) ``tokens`` when asked for: nothing is copied ahead."""

    def __init__(self, tokens: np.ndarray, rows: int, chunk: int, separator_id: int | None,
                 rank: int = 0, world_size: int = 1):
        n = len(tokens)
        cuts = np.linspace(0, n, min(rows, max(1, n // 2)) + 1).astype(np.int64)
        if separator_id is not None:
            starts = np.flatnonzero(np.asarray(tokens) == separator_id)
            if len(starts):
                inner = starts[np.minimum(np.searchsorted(starts, cuts[1:-1]), len(starts) - 1)]
                cuts = np.unique(np.concatenate([[0], inner, [n]]))
        self.width = int(np.diff(cuts).max())  # the longest row sets the number of chunks on every rank
        per_rank = -(-(len(cuts) - 1) // world_size)
        self.starts = cuts[:-1][rank::world_size].tolist()
        self.lengths = np.diff(cuts)[rank::world_size].tolist()
        self.starts += [0] * (per_rank - len(self.starts))
        self.lengths += [0] * (per_rank - len(self.lengths))
        self.tokens, self.chunk = tokens, chunk

    def __len__(self) -> int:
        return (self.width - 1 + self.chunk - 1) // self.chunk

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        a, b = i * self.chunk, min((i + 1) * self.chunk, self.width - 1)
        block = np.zeros((len(self.starts), b - a + 1), dtype=np.int64)  # positions a..b of every row
        for r, (start, length) in enumerate(zip(self.starts, self.lengths)):
            piece = self.tokens[start + a : start + min(b + 1, length)] if a < length else ()
            block[r, : len(piece)] = piece
        block = torch.from_numpy(block)
        x, y = block[:, :-1], block[:, 1:].clone()
        y[torch.arange(a + 1, b + 1)[None, :] >= torch.tensor(self.lengths)[:, None]] = IGNORE
        return x, y


@dataclass
class Corpus:
    """A source ready to encode: the training vocabulary, the characters of each split, and
    ``pieces()``, which yields the text of train, val and test in order, in any number of pieces."""

    vocab: Vocabulary
    sizes: dict[str, int]
    pieces: Callable[[], Iterable[str]]


def train_vocabulary(pieces: Iterable[str], n_train: int) -> Vocabulary:
    """The vocabulary of the first ``n_train`` characters of the text in ``pieces``."""
    codepoints, seen = set(), 0
    for piece in pieces:
        codepoints.update(distinct_codepoints(piece[: n_train - seen]).tolist())
        seen += len(piece)
        if seen >= n_train:
            break
    return Vocabulary.from_codepoints(codepoints)


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

    def _local_corpus(self) -> Corpus:
        """The local source as a ``Corpus``; a text file is streamed, never read whole."""
        if self.corpus == "text":
            if self.path.is_dir():
                raise UserError(f"data.path={self.path} is a folder; data=text needs one text file")
            n = sum(len(piece) for piece in read_text_chunks(self.path))
            if not n:
                raise UserError(f"data.path={self.path} is empty; pass a file with text in it")
            sizes = dict(zip(SPLITS, split_sizes(n, self.val_size, self.test_size)))
            return Corpus(train_vocabulary(read_text_chunks(self.path), sizes["train"]), sizes,
                          lambda: read_text_chunks(self.path))
        if not self.path.is_dir():
            return self._ag_news_corpus(*split_tail(read_ag_news_csv(self.path), self.val_size, self.test_size))
        if not (self.path / "train.csv").exists() or not (self.path / "test.csv").exists():
            raise UserError(f"data.path={self.path} is a folder without train.csv and test.csv; "
                            "pass one CSV file or a folder with both")
        train = read_ag_news_csv(self.path / "train.csv")
        return self._ag_news_corpus(*split_off(train, self.val_size, "data.val_size"),
                                    read_ag_news_csv(self.path / "test.csv"))

    def _ag_news_corpus(self, train: list[str], val: list[str], test: list[str]) -> Corpus:
        if not test:
            raise UserError(f"AG News source {self.path} has no test articles; pass a file with some")
        # Held-out streams start with a separator, so their first article is scored from its start.
        texts = [(SEPARATOR if s != "train" else "") + SEPARATOR.join(docs) for s, docs in zip(SPLITS, (train, val, test))]
        return Corpus(Vocabulary.from_text(texts[0]), dict(zip(SPLITS, map(len, texts))), lambda: iter(texts))

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
            corpus = lambda: self._ag_news_corpus(*split_off(train, self.val_size, "data.val_size"), test)  # noqa: E731
        else:
            source_key, corpus = self._local_key(), self._local_corpus
        cache = self._cache_dir_for(source_key)
        if not (cache / "meta.json").exists():  # a finished cache is only read: it may be read-only
            writable_dir(self.cache_root, "data.cache_dir")
            # One builder at a time: ranks and sweep jobs that start together wait for the first
            # and then read its cache instead of each encoding the corpus again.
            with FileLock(cache.with_name(cache.name + ".lock")):
                if not (cache / "meta.json").exists():
                    self._write_cache(cache, corpus())
        self.cache_path = cache

    def _write_cache(self, cache: Path, corpus: Corpus) -> None:
        if corpus.sizes["train"] < self.nchars + 1:
            raise UserError(f"the training text of {self.path or self.hub_dataset} has {corpus.sizes['train']} "
                            f"characters, fewer than one window (data.nchars + 1 = {self.nchars + 1}); lower "
                            "data.nchars or use a longer corpus")
        vocab = corpus.vocab
        tmp = Path(tempfile.mkdtemp(dir=self.cache_root, prefix=".tmp-"))
        try:
            ends = dict(zip(SPLITS, np.cumsum([corpus.sizes[s] for s in SPLITS]).tolist()))
            unknown = dict.fromkeys(SPLITS, 0)
            # Plain appends, not a memory map: written pages of a mapping would count in this
            # process's resident memory, which then grows with the corpus.
            with contextlib.ExitStack() as stack:
                files = {s: stack.enter_context(open(tmp / f"{s}.npy", "wb")) for s in SPLITS}
                for split, f in files.items():
                    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(vocab.dtype)),
                                                             "fortran_order": False, "shape": (corpus.sizes[split],)})
                position = 0  # of the piece's first character in the whole stream
                for piece in corpus.pieces():
                    ids = vocab.encode(piece)
                    for split in SPLITS:
                        start = ends[split] - corpus.sizes[split]
                        a, b = max(position, start), min(position + len(ids), ends[split])
                        if a < b:
                            part = ids[a - position : b - position]
                            files[split].write(part.tobytes())
                            unknown[split] += int(np.count_nonzero(part == 0))
                    position += len(ids)
            if position != ends["test"]:
                raise UserError(f"data.path={self.path} changed while it was read ({position} characters, not "
                                f"{ends['test']}); run again once it is complete")
            meta = {"vocab": vocab.chars, "source": str(self.path or self.hub_dataset), "corpus": self.corpus,
                    "separator": SEPARATOR if self.corpus == "ag_news" else None, "characters": corpus.sizes,
                    "unknown": unknown}
            (tmp / "meta.json").write_text(json.dumps(meta))
            try:
                os.rename(tmp, cache)  # atomic: a reader (under no lock) sees the whole cache or none
            except OSError:
                if not (cache / "meta.json").exists():  # else another builder won (a lock that does not lock: NFS)
                    raise
            log.info("encoded %s into %s: %s characters, vocabulary of %d", meta["source"], cache,
                     meta["characters"], len(vocab))
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
            if meta["characters"][split] < 2:
                raise UserError(f"the {split} split has {meta['characters'][split]} characters; raise data.{split}_size")
        if meta["unknown"]["val"] or meta["unknown"]["test"]:
            log.info("characters outside the vocabulary (scored as id 0): %s", meta["unknown"])

    def train_dataloader(self) -> DataLoader:
        batches = ShuffledBatches(len(self.train_set), self.batch_size, self.seed, *self._rank())
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
        return {"epoch": loop.epoch_progress.current.processed, "batches": loop.epoch_loop.batch_progress.current.processed,
                "order": ORDER_VERSION}

    def load_state_dict(self, state: dict) -> None:
        if state.get("order") != ORDER_VERSION and state.get("batches"):
            log.warning("this checkpoint was written by a charlm with another window order; the rest of epoch %d "
                        "will not be exactly the windows the run had left; later epochs are whole shuffles as usual",
                        state["epoch"])
        self._resume = dict(state)

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def eval_stream(self, split: str) -> EvalStream:
        """The held-out ``split`` (val or test) as this rank's share of an ``EvalStream``."""
        tokens = map_tokens(self.cache_path / f"{split}.npy")  # read in order: the kernel's read-ahead helps
        return EvalStream(tokens, self.eval_rows, self.eval_chunk, self.separator_id, *self._rank())

    def _eval_loader(self, split: str) -> DataLoader:
        # its own generator, as for training: validating must not move the global random state
        return DataLoader(self.eval_stream(split), batch_size=None, shuffle=False, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

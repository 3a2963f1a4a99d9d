"""Corpus sources as plug-ins: each is one class registered by its ``data.corpus`` name in
``SOURCES`` (AG News from the Hub or in the authors' CSV format, a UTF-8 text file streamed in
pieces, a folder of text files, one article each), which gives the cache key it is known by and,
only when the token cache must be built, the ``Corpus``: train / val / test cut by counts or
fractions. Adding a source is one subclass of ``Source`` with ``@register``.

A byte order mark (U+FEFF) at the start of a file is not text: it is dropped (Windows editors
write one). A text file's line ends are read as Python's ``open()`` reads them: ``\r\n``
(Windows) and a lone ``\r`` (old Mac) each become ``\n``, so a corpus with Windows line ends has
the vocabulary and the models of the same text with Unix ones. CSV rows end wherever the
``csv`` module sees a line end; the fields are kept as they are.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from charlm.compat import dataset_fingerprint
from charlm.errors import UserError, known
from charlm.vocabulary import Vocabulary, distinct_codepoints

SEPARATOR = "\n"  # joins AG News articles into one stream; AG News text has no real newlines
SPLITS = ("train", "val", "test")


def read_ag_news_csv(path: Path, labels: list[int] | None = None) -> list[str]:
    """Articles (title + " " + description) of an AG News CSV in the dataset authors' format;
    their topics (the class column, 1-4, as 0-3) are appended to ``labels`` when it is given.

    The text is kept exactly as the Hub's ``text`` column has it (backslash escapes
    included), so a local copy and the Hub give the same vocabulary."""
    articles = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: without a leading BOM
            rows = csv.reader(f, quotechar='"', delimiter=",", quoting=csv.QUOTE_ALL, skipinitialspace=True)
            for row in rows:
                if len(row) != 3 or row[0] not in ("1", "2", "3", "4"):
                    raise UserError(
                        f"data.path={path}: line {rows.line_num} is not AG News CSV (class index 1-4, title, "
                        f"description), got {str(row)[:60]}; for plain text use data=text"
                    )
                articles.append(row[1] + " " + row[2])
                if labels is not None:
                    labels.append(int(row[0]) - 1)
    except UnicodeDecodeError as err:
        raise UserError(f"data.path={path} is not UTF-8 (byte {err.start}); convert it, e.g. iconv -t utf-8") from None
    return articles


def read_text_chunks(path: Path, chunk_bytes: int = 1 << 23, name: str | None = None):
    """The UTF-8 file as successive pieces of text of about ``chunk_bytes`` bytes each, never the
    whole text at once; refuses binary (NUL bytes in the first MiB) and non-UTF-8 files, naming
    the file as ``name`` (default ``data.path=<path>``).

    Without a leading BOM, with ``\r\n`` and ``\r`` as ``\n`` (see the module's docstring), also
    where a piece ends between ``\r`` and ``\n``: every pass over the file (counting, the
    vocabulary, encoding) sees the same characters."""
    name = name or f"data.path={path}"
    decoder = codecs.getincrementaldecoder("utf-8")()
    newlines = io.IncrementalNewlineDecoder(None, translate=True)  # holds back a "\r" that ends a piece
    offset, started = 0, False
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            if offset == 0 and b"\x00" in raw[: 1 << 20]:
                raise UserError(f"{name} looks binary (it has NUL bytes); pass a UTF-8 text file")
            pending = len(decoder.getstate()[0])  # bytes of a character cut at the end of the last piece
            try:
                text = newlines.decode(decoder.decode(raw, final=not raw), final=not raw)
            except UnicodeDecodeError as err:
                raise UserError(
                    f"{name} is not UTF-8 (byte {offset - pending + err.start}); convert it, e.g. iconv -t utf-8"
                ) from None
            if not started and text:
                text, started = text.removeprefix("\ufeff"), True
            if text:
                yield text
            if not raw:
                return
            offset += len(raw)


def topic_names(path: Path) -> list[str]:
    """The names of AG News' topics for a local copy: the lines of ``classes.txt`` beside the CSV
    (in the folder given, or the CSV file's folder), else ``1``-``4``."""
    classes = (path if path.is_dir() else path.parent) / "classes.txt"
    if classes.is_file():
        names = [line.strip() for line in classes.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        if len(names) == 4:
            return names
    return ["1", "2", "3", "4"]


HUB_PROBE_TIMEOUT = 5  # seconds the Hub has to answer the one request that tells whether it can be reached


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """Why the Hugging Face Hub cannot be reached (``HF_ENDPOINT``), from one request that may take
    ``timeout`` seconds; ``None`` when it answers (with any status) or when offline mode is already
    on (``HF_HUB_OFFLINE=1``: ``datasets`` then says so itself). Without this, ``datasets`` tries
    every file 6 times over about 30 s, with a warning per try, before it fails."""
    import datasets
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        return None
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as err:  # noqa: BLE001 - no answer at all: refused, no route, no DNS, a timeout
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"no answer from {constants.ENDPOINT}: {reason}"
    return None


@contextlib.contextmanager
def hub_offline_mode(on: bool):
    """``HF_HUB_OFFLINE=1`` for this block when ``on``: ``datasets`` then loads its local copy at
    once, or fails at once without one. Both libraries read the variable when imported, so
    their module settings (public names) are set, and put back after."""
    import datasets
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    if on:
        constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def load_hub_ag_news(name: str):
    """AG News from the Hugging Face Hub (cached by ``datasets``): ``(fingerprint, columns)``.
    ``columns()`` reads the train and test articles with their topics, ``(train, test, topics)``,
    where ``topics`` is ``(train labels, test labels, names)`` from the ``label`` column and its
    names (``None`` without one). Only the fingerprint is read here: a run whose token cache is
    built already never turns the 120,000 articles into Python lists.

    A Hub that cannot be reached is found by one request (``hub_unreachable``); ``datasets`` then
    loads its local copy in offline mode, or the run stops at once with one line."""
    import datasets

    for library in ("datasets", "huggingface_hub"):  # their console handlers print retries to stderr:
        logging.getLogger(library).handlers.clear()  # send them through the root logger to the run's log
    unreachable = hub_unreachable()
    try:
        with hub_offline_mode(unreachable is not None):
            ds = datasets.load_dataset(name)
    except Exception as err:  # offline, unknown name, Hub down: all fixed the same way
        reason = unreachable or (str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise UserError(
            f"could not load {name} from the Hugging Face Hub ({reason}); offline? use a local copy: "
            "data.path=/path/to/ag_news (a folder with train.csv and test.csv, or one CSV file)"
        ) from None
    fingerprint = dataset_fingerprint(ds["train"]) + dataset_fingerprint(ds["test"])

    def columns():
        topics = None
        if "label" in ds["train"].column_names and "label" in ds["test"].column_names:
            feature = ds["train"].features.get("label")
            names = list(getattr(feature, "names", None) or [str(i + 1) for i in range(4)])
            topics = list(ds["train"]["label"]), list(ds["test"]["label"]), names
        return list(ds["train"]["text"]), list(ds["test"]["text"]), topics

    return fingerprint, columns


def count(size: int | float, total: int, key: str) -> int:
    """An absolute count from ``size``: an int as is, a float in (0, 1) as a fraction of ``total``."""
    if (
        isinstance(size, bool)
        or not isinstance(size, (int, float))
        or size <= 0
        or (isinstance(size, float) and size >= 1)
    ):
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
        raise UserError(
            f"data.val_size + data.test_size = {n_val + n_test} leaves nothing of {n} to train on; lower them"
        )
    return n - n_val - n_test, n_val, n_test


def split_tail(items, val_size, test_size):
    """Split a sequence into (train, val, test): test is its tail, val the part before it."""
    n_train, n_val, _ = split_sizes(len(items), val_size, test_size)
    return items[:n_train], items[n_train : n_train + n_val], items[n_train + n_val :]


@dataclass
class Corpus:
    """A source ready to encode: the training vocabulary, the characters of each split, and
    ``pieces()``, which yields the text of train, val and test in order, in any number of pieces."""

    vocab: Vocabulary
    sizes: dict[str, int]
    pieces: Callable[[], Iterable[str]]
    labels: dict[str, np.ndarray] | None = None  # per split: the topic of each character (AG News)
    topics: list[str] | None = None  # the topics' names
    topic_counts: list[int] | None = None  # training articles per topic (the classifier's prior)


def train_vocabulary(pieces: Iterable[str], n_train: int) -> Vocabulary:
    """The vocabulary of the first ``n_train`` characters of the text in ``pieces``."""
    codepoints, seen = set(), 0
    for piece in pieces:
        codepoints.update(distinct_codepoints(piece[: n_train - seen]).tolist())
        seen += len(piece)
        if seen >= n_train:
            break
    return Vocabulary.from_codepoints(codepoints)


def articles_corpus(train: list[str], val: list[str], test: list[str], topics=None, source: str = "") -> Corpus:
    """A source of articles as a ``Corpus``: each split's articles joined by ``SEPARATOR``.
    ``topics``: (train, val, test labels (0-based), names), or ``None`` for a source without them."""
    if not test:
        raise UserError(f"AG News source {source} has no test articles; pass a file with some")
    # Held-out streams start with a separator, so their first article is scored from its start.
    texts = [(SEPARATOR if s != "train" else "") + SEPARATOR.join(docs) for s, docs in zip(SPLITS, (train, val, test))]
    corpus = Corpus(Vocabulary.from_text(texts[0]), dict(zip(SPLITS, map(len, texts))), lambda: iter(texts))
    if topics is not None:
        # The topic of every character: an article's characters and the separator that starts it.
        corpus.labels = {}
        for split, docs, labels in zip(SPLITS, (train, val, test), topics[:3]):
            lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs)) + 1
            if split == "train" and len(lengths):
                lengths[0] -= 1  # the training text does not start with a separator
            corpus.labels[split] = np.repeat(np.asarray(labels, dtype=np.uint8), lengths)
        corpus.topics = list(topics[3])
        corpus.topic_counts = np.bincount(np.asarray(topics[0], dtype=np.int64), minlength=len(corpus.topics)).tolist()
    return corpus


def files_key(files: list[Path]) -> str:
    """What a cache of ``files`` is keyed by: each one's path, size and modification time (a
    changed, added, removed or renamed file gives another key), read without opening them."""
    return ";".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


SOURCES: dict[str, type[Source]] = {}  # data.corpus -> its class, in the order they are offered


def register(cls: type[Source]) -> type[Source]:
    """Class decorator: offer ``cls`` as ``data.corpus=<cls.name>``."""
    SOURCES[cls.name] = cls
    return cls


def source_for(corpus: str, path: Path | None, val_size, test_size, hub_dataset: str) -> Source:
    """The source of ``data.corpus=corpus``; an unknown name is refused in one line listing the known ones."""
    return known(SOURCES, "data.corpus", corpus).create(path, val_size, test_size, hub_dataset)


class Source:
    """One corpus source. ``key()`` is what its token cache is known by and must be cheap (a run
    whose cache is built reads nothing else); ``corpus()`` reads the text, only when the cache must
    be built. Both refuse bad input in one line. ``separator``: the character that joins (and
    starts each held-out) article, or ``None`` for one stream of text without articles (then
    ``data.order=articles`` is refused); ``topics``: whether its cache carries the topic of every
    character."""

    name: ClassVar[str]
    separator: ClassVar[str | None] = None
    topics: ClassVar[bool] = False

    def __init__(self, path: Path | None, val_size, test_size, hub_dataset: str):
        self.path, self.val_size, self.test_size, self.hub_dataset = path, val_size, test_size, hub_dataset

    @classmethod
    def create(cls, path: Path | None, val_size, test_size, hub_dataset: str) -> Source:
        """The source of these settings (``data.path`` is ``None`` when not given)."""
        return cls(path, val_size, test_size, hub_dataset)

    def __str__(self) -> str:
        """The source as logs and the cache's ``meta.json`` name it."""
        return str(self.path)

    def key(self) -> list:
        raise NotImplementedError

    def corpus(self) -> Corpus:
        raise NotImplementedError

    def _existing_path(self, what: str) -> Path:
        if not self.path.exists():
            raise UserError(f"data.path={self.path} does not exist; pass an existing {what}")
        return self.path


@register
class AgNews(Source):
    """AG News (``data=ag_news``): from the Hub (``HubAgNews``), or a local copy (``AgNewsCsv``)
    when ``data.path`` is given."""

    name = "ag_news"
    separator = SEPARATOR
    topics = True

    @classmethod
    def create(cls, path, val_size, test_size, hub_dataset):
        return (HubAgNews if path is None else AgNewsCsv)(path, val_size, test_size, hub_dataset)


class HubAgNews(AgNews):
    """AG News from the Hugging Face Hub (``data.hub_dataset``, cached by ``datasets``): train = the
    Hub's train minus its last ``val_size`` articles, val = those, test = the Hub's test."""

    def __str__(self) -> str:
        return self.hub_dataset

    def key(self) -> list:
        fingerprint, self._columns = load_hub_ag_news(self.hub_dataset)  # only the fingerprint is read
        return [self.name, self.hub_dataset, fingerprint, self.val_size, self.test_size, "topics"]

    def corpus(self) -> Corpus:
        train, test, hub_topics = self._columns()  # the articles become Python lists only here
        topics = (
            None
            if hub_topics is None
            else (*split_off(hub_topics[0], self.val_size, "data.val_size"), hub_topics[1], hub_topics[2])
        )
        return articles_corpus(*split_off(train, self.val_size, "data.val_size"), test, topics=topics, source=str(self))


class AgNewsCsv(AgNews):
    """A local AG News copy in the authors' CSV format (``data=ag_news data.path=...``): one CSV file
    (train, then ``val_size`` articles, then the last ``test_size``, in file order) or a folder
    with ``train.csv`` and ``test.csv`` (split as the Hub's). Topic names from ``classes.txt``."""

    def __str__(self) -> str:
        return str(self.path)

    def key(self) -> list:
        path = self._existing_path("file or folder")
        files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
        return [self.name, "", files_key(files), self.val_size, self.test_size, "topics", topic_names(path)]

    def corpus(self) -> Corpus:
        names = topic_names(self.path)
        if not self.path.is_dir():
            labels = []
            articles = read_ag_news_csv(self.path, labels)
            return articles_corpus(
                *split_tail(articles, self.val_size, self.test_size),
                topics=(*split_tail(labels, self.val_size, self.test_size), names),
                source=str(self),
            )
        if not (self.path / "train.csv").exists() or not (self.path / "test.csv").exists():
            raise UserError(
                f"data.path={self.path} is a folder without train.csv and test.csv; "
                "pass one CSV file or a folder with both"
            )
        train_labels, test_labels = [], []
        train = read_ag_news_csv(self.path / "train.csv", train_labels)
        return articles_corpus(
            *split_off(train, self.val_size, "data.val_size"),
            read_ag_news_csv(self.path / "test.csv", test_labels),
            topics=(*split_off(train_labels, self.val_size, "data.val_size"), test_labels, names),
            source=str(self),
        )


@register
class TextFile(Source):
    """Any UTF-8 text file (``data=text``), streamed in pieces, never read whole: train, then
    ``val_size`` characters, then the last ``test_size`` characters, in file order."""

    name = "text"

    def __init__(self, path, val_size, test_size, hub_dataset):
        if not path:
            raise UserError("data=text needs a file: data.path=/path/to/file.txt")
        super().__init__(path, val_size, test_size, hub_dataset)

    def key(self) -> list:
        path = self._existing_path("file or folder")
        if path.is_dir():
            raise UserError(f"data.path={path} is a folder; data=text needs one text file")
        return [self.name, "", files_key([path]), self.val_size, self.test_size]

    def corpus(self) -> Corpus:
        n = sum(len(piece) for piece in read_text_chunks(self.path))
        if not n:
            raise UserError(f"data.path={self.path} is empty; pass a file with text in it")
        sizes = dict(zip(SPLITS, split_sizes(n, self.val_size, self.test_size)))
        return Corpus(
            train_vocabulary(read_text_chunks(self.path), sizes["train"]), sizes, lambda: read_text_chunks(self.path)
        )


FILE_SEPARATOR = "\x03"  # ASCII "end of text": joins the files of data=folder, whose text has newlines of its own


@register
class TextFolder(Source):
    """A folder of UTF-8 ``.txt`` files, each one article (``data=folder``): the files in name
    order, train, then ``val_size`` files, then the last ``test_size`` files, joined by
    ``FILE_SEPARATOR`` (not ``"\\n"``, which the files' own lines use). Each file is streamed in
    pieces, as ``data=text`` reads its file. Files and folders whose name starts with ``.`` and
    subfolders are left out."""

    name = "folder"
    separator = FILE_SEPARATOR

    def __init__(self, path, val_size, test_size, hub_dataset):
        if not path:
            raise UserError("data=folder needs a folder: data.path=/path/to/folder (of .txt files)")
        super().__init__(path, val_size, test_size, hub_dataset)

    def files(self) -> list[Path]:
        """The ``.txt`` files, in name order; refuses a folder that is missing, empty or has none."""
        path = self._existing_path("folder of .txt files")
        if not path.is_dir():
            raise UserError(
                f"data.path={path} is a file; data=folder needs a folder of .txt files (for one text "
                "file use data=text)"
            )
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        if not entries:
            raise UserError(f"data.path={path} is an empty folder; put .txt files in it, one article each")
        files = [p for p in entries if p.suffix == ".txt" and p.is_file()]
        if not files:
            raise UserError(
                f"data.path={path} has no .txt files ({len(entries)} other entries, e.g. "
                f"{entries[0].name}); put the articles in .txt files, one article each"
            )
        if len(files) < len(SPLITS):
            raise UserError(
                f"data.path={path} has {len(files)} .txt file{'s' if len(files) > 1 else ''}; "
                f"data=folder needs at least {len(SPLITS)} (train, val and test are split by file): "
                "add files"
            )
        return files

    def key(self) -> list:
        return [self.name, "", files_key(self.files()), self.val_size, self.test_size]

    def _read(self, file: Path):
        return read_text_chunks(file, name=f"data.path={self.path}: {file.name}")

    def corpus(self) -> Corpus:
        files = self.files()
        lengths = []
        for file in files:  # one pass: every file is checked before anything is encoded
            n = 0
            for piece in self._read(file):
                if FILE_SEPARATOR in piece:
                    raise UserError(
                        f"data.path={self.path}: {file.name} holds the character {FILE_SEPARATOR!r} "
                        "that data=folder puts between files; remove it from the file"
                    )
                n += len(piece)
            lengths.append(n)
        n_train, n_val, _ = split_sizes(len(files), self.val_size, self.test_size)
        splits = dict(zip(SPLITS, (files[:n_train], files[n_train : n_train + n_val], files[n_train + n_val :])))
        counts = dict(zip(SPLITS, (lengths[:n_train], lengths[n_train : n_train + n_val], lengths[n_train + n_val :])))
        # train: its files joined by the separator; val and test start with one (as AG News' held-out streams)
        sizes = {s: sum(counts[s]) + len(counts[s]) - (s == "train") for s in SPLITS}

        def pieces():
            for split in SPLITS:
                for i, file in enumerate(splits[split]):
                    if i or split != "train":
                        yield FILE_SEPARATOR
                    yield from self._read(file)

        vocab = train_vocabulary(pieces(), sizes["train"])
        # the separator is in the vocabulary even with one training file: it starts each held-out article
        return Corpus(
            Vocabulary.from_codepoints({ord(c) for c in vocab.chars[1:]} | {ord(FILE_SEPARATOR)}), sizes, pieces
        )

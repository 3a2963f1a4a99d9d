"""Reading corpora: AG News (Hub or the authors' CSV format) and UTF-8 text files streamed in
pieces, and cutting them into train / val / test by counts or fractions.

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

import numpy as np

from charlm.compat import dataset_fingerprint
from charlm.errors import UserError
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


def read_text_chunks(path: Path, chunk_bytes: int = 1 << 23):
    """The UTF-8 file as successive pieces of text of about ``chunk_bytes`` bytes each, never the
    whole text at once; refuses binary (NUL bytes in the first MiB) and non-UTF-8 files.

    Without a leading BOM, with ``\r\n`` and ``\r`` as ``\n`` (see the module's docstring), also
    where a piece ends between ``\r`` and ``\n``: every pass over the file (counting, the
    vocabulary, encoding) sees the same characters."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    newlines = io.IncrementalNewlineDecoder(None, translate=True)  # holds back a "\r" that ends a piece
    offset, started = 0, False
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            if offset == 0 and b"\x00" in raw[: 1 << 20]:
                raise UserError(f"data.path={path} looks binary (it has NUL bytes); pass a UTF-8 text file")
            pending = len(decoder.getstate()[0])  # bytes of a character cut at the end of the last piece
            try:
                text = newlines.decode(decoder.decode(raw, final=not raw), final=not raw)
            except UnicodeDecodeError as err:
                raise UserError(f"data.path={path} is not UTF-8 (byte {offset - pending + err.start}); convert it, "
                                "e.g. iconv -t utf-8") from None
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
        logging.getLogger(library).handlers.clear()   # send them through the root logger to the run's log
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


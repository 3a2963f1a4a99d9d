"""The token cache: each split encoded once into a ``.npy`` array (uint8 when the vocabulary
fits) with a ``meta.json``, memory-mapped by every later run and sweep job."""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from charlm.errors import UserError
from charlm.sources import SEPARATOR, SPLITS, Corpus

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: text files read without a leading BOM, with \r\n and \r as \n (charlm.sources)


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


def map_labels(cache: Path, split: str, random_access: bool = False) -> np.ndarray | None:
    """The topic of every character of ``split`` (uint8, memory-mapped like its tokens), or
    ``None`` for a cache without topics (text corpora)."""
    path = cache / f"{split}_labels.npy"
    return map_tokens(path, random_access) if path.exists() else None


def article_starts(tokens: np.ndarray, separator_id: int) -> np.ndarray:
    """Where each article of a token stream starts: 0 and every separator (which belongs to the
    article it starts)."""
    starts = np.flatnonzero(np.asarray(tokens) == separator_id)
    return starts if len(starts) and starts[0] == 0 else np.concatenate([[0], starts]).astype(np.int64)


def write_cache(cache: Path, corpus: Corpus, cache_root: Path, nchars: int, source: str, kind: str) -> None:
    """Encode ``corpus`` into the cache folder ``cache`` (built in a temporary folder under
    ``cache_root``, then renamed into place, so a reader sees the whole cache or none)."""
    if corpus.sizes["train"] < nchars + 1:
        raise UserError(f"the training text of {source} has {corpus.sizes['train']} "
                        f"characters, fewer than one window (data.nchars + 1 = {nchars + 1}); lower "
                        "data.nchars or use a longer corpus")
    vocab = corpus.vocab
    tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=".tmp-"))
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
        if corpus.labels is not None:  # the topic of every character, parallel to the tokens (AG News)
            for split in SPLITS:
                if len(corpus.labels[split]) != corpus.sizes[split]:
                    raise ValueError(f"{split}: {len(corpus.labels[split])} labels for {corpus.sizes[split]} characters")
                np.save(tmp / f"{split}_labels.npy", corpus.labels[split].astype(np.uint8))
        if position != ends["test"]:
            raise UserError(f"data.path={source} changed while it was read ({position} characters, not "
                            f"{ends['test']}); run again once it is complete")
        meta = {"vocab": vocab.chars, "source": source, "corpus": kind,
                "separator": SEPARATOR if kind == "ag_news" else None, "characters": corpus.sizes,
                "unknown": unknown, "topics": corpus.topics,
                "topic_counts": corpus.topic_counts}
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


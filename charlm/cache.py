"""The token cache: each split encoded once into a ``.npy`` array (uint8 when the vocabulary
fits) with a ``meta.json``, memory-mapped by every later run and sweep job.

A cache is checked whenever it is opened (``read_cache_meta``), never trusted blindly: ``meta.json``
records each file's size and checksum (``file_checksum``) and a checksum of its own content, so a
truncated or missing file, an edited or broken ``meta.json`` and damage that the checksums cover
(see ``file_checksum``) are found before any of it is used."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from charlm.errors import UserError
from charlm.sources import SPLITS, Corpus

log = logging.getLogger(__name__)

# 2: text files read without a leading BOM, with \r\n and \r as \n (charlm.sources)
# 3: meta.json records each file's size and checksum and its own checksum (checked on open)
CACHE_VERSION = 3
CHECK_BLOCKS = 64  # a file is checksummed over at most this many blocks ...
CHECK_BLOCK_BYTES = 256 << 10  # ... of this size: files up to 16 MiB whole, a 3 GB one in 16 MiB read


class DamagedCache(Exception):
    """A cache folder that is not whole: the message says what is wrong with it."""


def file_checksum(path: Path) -> str:
    """A checksum of ``path`` that costs at most ``CHECK_BLOCKS * CHECK_BLOCK_BYTES`` bytes read:
    the whole file when it is that small (16 MiB: tiny Shakespeare, AG News' test CSV), else
    ``CHECK_BLOCKS`` blocks spread evenly from its first byte to its last (the first block holds the
    ``.npy`` header). A change within a block is always found; one that falls between the blocks
    of a larger file (at most 1/63 of it apart) is not: a few garbled bytes in a large corpus can
    go unnoticed, a truncation, a missing file, or damage over more than 1/63 of the file cannot."""
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if size <= CHECK_BLOCKS * CHECK_BLOCK_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        else:
            for i in range(CHECK_BLOCKS):
                f.seek(i * (size - CHECK_BLOCK_BYTES) // (CHECK_BLOCKS - 1))
                digest.update(f.read(CHECK_BLOCK_BYTES))
    return digest.hexdigest()


def meta_checksum(meta: dict) -> str:
    """The checksum of ``meta`` (without its own ``checksum`` entry): the vocabulary, the topics'
    names, the sizes and the files' checksums, so an edit of any of them is found."""
    content = json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True)
    return hashlib.blake2b(content.encode(), digest_size=16).hexdigest()


def read_cache_meta(cache: Path) -> dict | None:
    """The ``meta.json`` of the cache folder ``cache`` once the folder is checked to be whole:
    ``None`` when there is no such folder, ``DamagedCache`` (saying what is wrong) when it is not
    whole. Reads only, so a cache shared read-only works."""
    if not cache.exists():
        return None
    try:
        meta = json.loads((cache / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedCache("it has no meta.json: a build that did not finish, or a deleted file") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DamagedCache(f"meta.json cannot be read ({type(err).__name__})") from None
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("files"), dict)
        or meta.get("checksum") != meta_checksum(meta)
    ):
        raise DamagedCache("meta.json does not match its checksum: edited or damaged")
    for name, expected in meta["files"].items():
        path = cache / name
        try:
            size = path.stat().st_size
            if size != expected["bytes"]:
                raise DamagedCache(f"{name} has {size} bytes, not {expected['bytes']}: truncated or damaged")
            if file_checksum(path) != expected["checksum"]:
                raise DamagedCache(f"{name} does not match its checksum: damaged")
        except FileNotFoundError:
            raise DamagedCache(f"{name} is missing") from None
        except OSError as err:
            raise DamagedCache(f"{name} cannot be read ({err.strerror})") from None
    return meta


def remove_folder(path: Path, cache_root: Path) -> None:
    """Remove ``path`` at once for every reader: renamed into a temporary folder first (a reader
    that mapped its files keeps them), then deleted."""
    trash = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".tmp-{path.name}-old-"))
    os.rename(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale_builds(cache: Path) -> None:
    """Delete what a killed build of ``cache`` left (its ``.tmp-<key>-*`` folders). Only under
    the cache's lock: the lock holder is the one process that builds ``cache``."""
    for stale in cache.parent.glob(f".tmp-{cache.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)


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


def write_cache(
    cache: Path, corpus: Corpus, cache_root: Path, nchars: int, source: str, kind: str, separator: str | None
) -> None:
    """Encode ``corpus`` into the cache folder ``cache`` (built in a temporary folder under
    ``cache_root``, then renamed into place, so a reader sees the whole cache or none). A damaged
    folder already at ``cache`` is replaced. ``source`` names it, ``kind`` is its ``data.corpus``
    and ``separator`` the character between its articles (``None``: none). Call it under the cache's lock."""
    if corpus.sizes["train"] < nchars + 1:
        raise UserError(
            f"the training text of {source} has {corpus.sizes['train']} "
            f"characters, fewer than one window (data.nchars + 1 = {nchars + 1}); lower "
            "data.nchars or use a longer corpus"
        )
    vocab = corpus.vocab
    tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".tmp-{cache.name}-"))
    try:
        ends = dict(zip(SPLITS, np.cumsum([corpus.sizes[s] for s in SPLITS]).tolist()))
        unknown = dict.fromkeys(SPLITS, 0)
        # Plain appends, not a memory map: written pages of a mapping would count in this
        # process's resident memory, which then grows with the corpus.
        with contextlib.ExitStack() as stack:
            files = {s: stack.enter_context(open(tmp / f"{s}.npy", "wb")) for s in SPLITS}
            for split, f in files.items():
                np.lib.format.write_array_header_1_0(
                    f,
                    {
                        "descr": np.lib.format.dtype_to_descr(np.dtype(vocab.dtype)),
                        "fortran_order": False,
                        "shape": (corpus.sizes[split],),
                    },
                )
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
                    raise ValueError(
                        f"{split}: {len(corpus.labels[split])} labels for {corpus.sizes[split]} characters"
                    )
                np.save(tmp / f"{split}_labels.npy", corpus.labels[split].astype(np.uint8))
        if position != ends["test"]:
            raise UserError(
                f"data.path={source} changed while it was read ({position} characters, not "
                f"{ends['test']}); run again once it is complete"
            )
        meta = {
            "vocab": vocab.chars,
            "source": source,
            "corpus": kind,
            "separator": separator,
            "characters": corpus.sizes,
            "unknown": unknown,
            "topics": corpus.topics,
            "topic_counts": corpus.topic_counts,
            "version": CACHE_VERSION,
            "files": {
                f.name: {"bytes": f.stat().st_size, "checksum": file_checksum(f)} for f in sorted(tmp.glob("*.npy"))
            },
        }
        meta["checksum"] = meta_checksum(meta)
        (tmp / "meta.json").write_text(json.dumps(meta))
        if cache.exists():  # a damaged cache (the caller checked it under the lock)
            remove_folder(cache, cache_root)
        try:
            os.rename(tmp, cache)  # atomic: a reader (under no lock) sees the whole cache or none
        except OSError:
            if not (cache / "meta.json").exists():  # else another builder won (a lock that does not lock: NFS)
                raise
        log.info(
            "encoded %s into %s: %s characters, vocabulary of %d", meta["source"], cache, meta["characters"], len(vocab)
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

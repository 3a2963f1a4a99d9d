"""The order of the data: training windows cut by index arithmetic from one token array, in a
shuffled, resumable, rank-sharded batch order; and the held-out streams scored in order with the
recurrent state carried.

    token array  t0 t1 t2 ... (one stream of text)
    window i     t[i*stride : i*stride + nchars + 1]  -> input = first nchars, target = last nchars
    batch        batch_size windows at positions drawn from an IndexPermutation of all windows

That is ``data.order=windows``; ``streams`` (``StreamBatches``) feeds contiguous rows chunk by chunk
with the state carried, and ``articles`` (``ArticleBatches``) one article's windows at stride 1 per
batch. All three are batch samplers driven by the same ``position`` (batch rounds trained); the
orders that pick them by ``data.order`` are in ``charlm.orders``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from charlm.cache import map_tokens

ORDER_VERSION = 2  # of the training window order (2: IndexPermutation), saved in checkpoints
IGNORE = -100  # target id of padding, skipped by the loss


class WindowDataset(Dataset):
    """Every ``stride``-th window of ``nchars + 1`` tokens: input = first ``nchars``, target = last ``nchars``.

    ``__getitems__`` cuts a whole batch with one fancy index into the memory-mapped array,
    so no Python code runs per window or per character. The array is opened lazily, so
    DataLoader workers share the page cache instead of each receiving a pickled copy."""

    def __init__(self, path: Path, nchars: int, stride: int, labels_path: Path | None = None):
        self.path, self.nchars, self.stride = Path(path), nchars, stride
        self.labels_path = labels_path  # given: batches are (x, y, topic), topic = that of each input character
        self._tokens = self._labels = None
        self._offsets = np.arange(nchars + 1)
        self._len = (len(self.tokens) - nchars - 1) // stride + 1

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = map_tokens(self.path, random_access=True)
        return self._tokens

    @property
    def labels(self) -> np.ndarray | None:
        if self._labels is None and self.labels_path is not None:
            self._labels = map_tokens(self.labels_path, random_access=True)
        return self._labels

    def __getstate__(self):
        return {**self.__dict__, "_tokens": None, "_labels": None}

    def __len__(self) -> int:
        return self._len

    def __getitems__(self, indices):
        starts = np.asarray(indices, dtype=np.int64) * self.stride
        windows = torch.from_numpy(self.tokens[starts[:, None] + self._offsets].astype(np.int64))
        if self.labels_path is not None:  # the same index arithmetic on the labels
            topics = torch.from_numpy(self.labels[starts[:, None] + self._offsets[:-1]].astype(np.int64))
            return windows[:, :-1], windows[:, 1:], topics
        return windows[:, :-1], windows[:, 1:]

    def __getitem__(self, index):
        return tuple(part[0] for part in self.__getitems__([index]))


class DeviceWindows(Dataset):
    """``WindowDataset``'s windows, cut from a copy of the token array held as a tensor on the
    training device (``data.on_device``): each batch is one gather there, so no DataLoader worker,
    pinned buffer or host-to-device copy of the windows is needed; only the batch's window indices
    (8 bytes each) travel, without waiting for the device (``non_blocking``: from pageable memory
    the copy is staged and the host goes on). The order still comes from ``ShuffledBatches``
    through the DataLoader's batch sampler, so batches, resuming and sharding are the host path's."""

    def __init__(self, windows: WindowDataset, device: torch.device):
        self.nchars, self.stride = windows.nchars, windows.stride
        self.tokens = torch.from_numpy(np.array(windows.tokens)).to(device)  # one copy, then uint8 on the device
        self.labels = None if windows.labels_path is None else torch.from_numpy(np.array(windows.labels)).to(device)
        self._offsets = torch.arange(windows.nchars + 1, device=device)
        self._len = len(windows)

    def __len__(self) -> int:
        return self._len

    def __getitems__(self, indices):
        starts = torch.as_tensor(indices, dtype=torch.int64).to(self.tokens.device, non_blocking=True) * self.stride
        windows = self.tokens[starts[:, None] + self._offsets].long()
        if self.labels is not None:
            return windows[:, :-1], windows[:, 1:], self.labels[starts[:, None] + self._offsets[:-1]].long()
        return windows[:, :-1], windows[:, 1:]

    def __getitem__(self, index):
        return tuple(part[0] for part in self.__getitems__([index]))


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

    The order (an ``IndexPermutation``) depends only on ``seed`` and the epoch, not on the global
    random state. Where an iteration starts is ``position``: the rounds of batches (one batch for
    every rank) trained since the start of training, which the data module advances as batches
    really enter a training step (``CharDataModule.on_after_batch_transfer``) and saves in
    checkpoints. Each iteration serves the rest of the epoch ``position`` is in: epoch
    ``position // len(self)`` from its batch ``position % len(self)``. So a run resumed from any
    checkpoint continues with exactly the batches it would have seen, whatever Lightning's own
    epoch counter says (after a stop in the middle of an epoch Lightning counts that epoch as
    ended, and it would pass that count to a ``set_epoch``; this class has none on purpose).

    Under data parallelism rank ``rank`` of ``world_size`` takes every ``world_size``-th batch:
    the ranks' batches are disjoint and cover the epoch except the last incomplete round. (torch's
    ``RandomSampler`` can do neither, and Lightning's ``DistributedSampler`` replaces the sampler
    without resumable state.)"""

    BATCH_ROUNDS_PER_CALL = 256  # rounds (one batch for every rank) drawn per call of the permutation

    def __init__(
        self, num_windows: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, position: int = 0
    ):
        self.num_windows, self.batch_size, self.seed = num_windows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.position = position

    def __len__(self) -> int:
        return self.num_windows // (self.batch_size * self.world_size)

    def __iter__(self):
        if not len(self):
            return
        # Read when the iteration starts (the first next(), which the loader makes before any
        # batch of this epoch is trained), so batches drawn ahead never move the start.
        epoch, skip = divmod(self.position, len(self))
        permutation = IndexPermutation(self.num_windows, (self.seed * 100_003 + epoch) % 2**64)
        per_round = self.batch_size * self.world_size
        own_slots = self.rank * self.batch_size + np.arange(self.batch_size)  # this rank's places in a round
        for first in range(skip, len(self), self.BATCH_ROUNDS_PER_CALL):
            rounds = np.arange(first, min(first + self.BATCH_ROUNDS_PER_CALL, len(self)))
            positions = (rounds[:, None] * per_round + own_slots).ravel()
            yield from permutation(positions).reshape(-1, self.batch_size).tolist()


def unpack_batch(batch):
    """``(x, y, extras)`` of a batch: ``(x, y)`` (the windows and articles orders), ``(x, y, topic)``
    (with ``model.topics``: the topic of each input character) or ``(x, y, extras)`` with
    ``extras`` a dict of named additions (the streams order's ``carry``). A dict keeps the format
    open: an addition gets a new key, and code that does not know the key never sees it; ``{}``
    when there is none, ``{"topic": topic}`` for a topic tensor."""
    x, y, *rest = batch
    if not rest:
        return x, y, {}
    return x, y, ({"topic": rest[0]} if isinstance(rest[0], torch.Tensor) else rest[0])


class StreamBatches(Sampler):
    """The training split laid out as ``batch_size * world_size`` contiguous rows, served as
    consecutive chunks of ``nchars`` (the recurrent state is carried from one chunk of a row to
    the next, ``CharLM.training_step``).

    Each epoch the rows start at an offset ``o`` drawn from ``seed`` and the epoch in
    ``[0, nchars)``, so chunk boundaries move from epoch to epoch. With ``R`` rows and ``K`` =
    ``len(self)`` chunks per row (the same for every epoch, so ``position`` maps to an epoch and a
    chunk by one division, as in ``ShuffledBatches``), row ``r`` holds the tokens
    ``[o + r*K*nchars, o + (r+1)*K*nchars]`` and chunk ``k`` of it is the window (input ``nchars``,
    target shifted by one) starting at ``o + r*K*nchars + k*nchars``. No target is served twice in
    an epoch; those left out are the ``o`` characters before the rows and the tail after them,
    fewer than ``(R + 1) * nchars`` together. Rank ``g`` takes rows ``g*batch_size`` to
    ``(g+1)*batch_size - 1``, so the ranks' rows, and their states, are their own.

    Yields ``(starts, {"carry": k > 0})``: the rows' window starts (a numpy array) for
    ``CarryingWindows`` and whether the state carries over from the previous batch (not at the
    first chunk of an epoch, where every row starts over)."""

    def __init__(
        self,
        num_tokens: int,
        nchars: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        position: int = 0,
    ):
        self.num_tokens, self.nchars, self.batch_size, self.seed = num_tokens, nchars, batch_size, seed
        self.rank, self.world_size, self.position = rank, world_size, position
        self.rows = batch_size * world_size
        # chunks per row at the largest offset (nchars - 1), whose last target is token
        # nchars - 1 + rows*K*nchars <= n - 1; the same count every epoch
        self._len = max(0, (num_tokens - nchars) // (self.rows * nchars))

    def __len__(self) -> int:
        return self._len

    def offset(self, epoch: int) -> int:
        return int(np.random.default_rng((self.seed * 100_003 + epoch) % 2**64).integers(self.nchars))

    def row_starts(self, epoch: int) -> np.ndarray:
        """Where this rank's rows start in epoch ``epoch``."""
        rows = self.rank * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        return self.offset(epoch) + rows * (len(self) * self.nchars)

    def __iter__(self):
        if not len(self):
            return
        epoch, skip = divmod(self.position, len(self))  # read at the first next(), as ShuffledBatches does
        starts = self.row_starts(epoch)
        for k in range(skip, len(self)):
            yield starts + k * self.nchars, {"carry": k > 0}


class ArticleBatches(Sampler):
    """The lesson's order: one batch per article, holding its windows at every start (stride 1),
    articles in file order every epoch. An article of ``m`` characters gives ``m - nchars``
    windows (input ``nchars``, target shifted by one), so batches differ in size; articles of
    ``nchars`` characters or fewer give none and are skipped, as the lesson's notebook does.

    ``bounds`` is ``[start, end)`` of each article in the training tokens (``article_bounds``).
    ``position`` counts article rounds trained, as in ``ShuffledBatches``. Under data parallelism
    rank ``g`` takes articles ``g, g + world_size, ...`` of each round (the last incomplete round
    is left out). Yields the windows' starts: one ``arange`` per article."""

    def __init__(self, bounds: np.ndarray, nchars: int, rank: int = 0, world_size: int = 1, position: int = 0):
        self.bounds = bounds[bounds[:, 1] - bounds[:, 0] > nchars]
        self.nchars, self.rank, self.world_size, self.position = nchars, rank, world_size, position

    def __len__(self) -> int:
        return len(self.bounds) // self.world_size

    def __iter__(self):
        if not len(self):
            return
        skip = self.position % len(self)
        for a, b in self.bounds[skip * self.world_size + self.rank : len(self) * self.world_size : self.world_size]:
            yield np.arange(a, b - self.nchars, dtype=np.int64)


def article_bounds(tokens: np.ndarray, separator_id: int, block: int = 1 << 24) -> np.ndarray:
    """``[start, end)`` of each article of a token stream whose articles are joined by
    ``separator_id``; read in blocks, so a large memory-mapped array is never copied whole."""
    seps = [np.flatnonzero(np.asarray(tokens[i : i + block]) == separator_id) + i for i in range(0, len(tokens), block)]
    seps = np.concatenate([np.array([-1], dtype=np.int64), *seps, np.array([len(tokens)], dtype=np.int64)])
    return np.stack([seps[:-1] + 1, seps[1:]], axis=1)


class CarryingWindows(Dataset):
    """The windows at the starts a ``StreamBatches`` gives, cut by ``windows`` (a ``WindowDataset``
    or ``DeviceWindows`` of stride 1), with the batch's extras passed on: ``(x, y, extras)``."""

    def __init__(self, windows: Dataset):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitems__(self, request):
        starts, extras = request
        return (*self.windows.__getitems__(starts), extras)


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

    def __init__(
        self,
        tokens: np.ndarray,
        rows: int,
        chunk: int,
        separator_id: int | None,
        rank: int = 0,
        world_size: int = 1,
        labels: np.ndarray | None = None,
    ):
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
        self.labels = labels  # given: chunks are (x, y, topic of each input character)

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
        if self.labels is not None:
            topics = np.zeros((len(self.starts), b - a), dtype=np.int64)
            for r, (start, length) in enumerate(zip(self.starts, self.lengths)):
                piece = self.labels[start + a : start + min(b, length)] if a < length else ()
                topics[r, : len(piece)] = piece
            return x, y, torch.from_numpy(topics)
        return x, y

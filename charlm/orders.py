"""The training orders (``data.order``) as plug-ins: each is one class that keeps the position
contract of ``CharDataModule`` (which batches, where a resumed run goes on, how ranks share them),
registered by name in ``ORDERS``. Adding an order is one subclass of ``Order`` with ``@register``.

An order is made from the data settings, ``setup`` gives it the training windows, and from then on
it serves ``sampler(rank, world_size)`` (a batch sampler of the DataLoader) at its ``position``: the
rounds of batches (one batch for every rank) trained since the run started, over all epochs, which
the data module advances as batches reach the training step and saves in checkpoints. The samplers
themselves (index arithmetic, no data copied) are in ``charlm.windows``.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
from torch.utils.data import Dataset, Sampler

from charlm.errors import UserError, known
from charlm.sources import SOURCES
from charlm.windows import (
    ORDER_VERSION,
    ArticleBatches,
    CarryingWindows,
    ShuffledBatches,
    StreamBatches,
    WindowDataset,
    article_bounds,
)

log = logging.getLogger(__name__)

ORDERS: dict[str, type[Order]] = {}  # data.order -> its class, in the order they are offered


def register(cls: type[Order]) -> type[Order]:
    """Class decorator: offer ``cls`` as ``data.order=<cls.name>``."""
    ORDERS[cls.name] = cls
    return cls


def order_class(name: str) -> type[Order]:
    """The class of ``data.order=name``; an unknown name is refused in one line listing the known ones."""
    return known(ORDERS, "data.order", name)


class Order:
    """One training order. Class attributes say what it asks of the data and what the rest of
    charlm may assume: ``needs_articles`` (a corpus of articles joined by a separator, e.g.
    ``data=ag_news`` or ``data=folder``), ``takes_topics`` (its batches cut the topic of each
    character, ``model.topics=true``), ``equal_batches`` (every batch holds ``batch_size`` ×
    ``nchars`` training characters: the sweep summary draws curves against characters)."""

    name: ClassVar[str]
    needs_articles: ClassVar[bool] = False
    takes_topics: ClassVar[bool] = False
    equal_batches: ClassVar[bool] = True

    def __init__(self, nchars: int, stride: int, batch_size: int, seed: int):
        self.nchars, self.stride, self.batch_size, self.seed = nchars, stride, batch_size, seed
        self.windows: WindowDataset | None = None  # what the samplers' indices (or starts) cut
        self._batches: Sampler | None = None  # the sampler serving now: its position moves as batches train
        self._position = 0  # batch rounds trained before this process, from a checkpoint (load_state_dict)

    # --- what the order asks of the data (checked before any data is read)

    @classmethod
    def check_source(cls, source) -> None:
        """Refuse a source this order cannot train on (``source``: a ``charlm.sources.Source``)."""
        if cls.needs_articles and source.separator is None:
            with_articles = ", ".join(f"data={n}" for n, s in SOURCES.items() if s.separator is not None)
            raise UserError(
                f"data.order={cls.name} needs articles ({with_articles}); data.corpus={source.name} has "
                f"none: use data.order={' or '.join(n for n, o in ORDERS.items() if not o.needs_articles)}"
            )

    @classmethod
    def check_topics(cls) -> None:
        """``model.topics=true`` needs an order whose batches cut the topics."""
        if not cls.takes_topics:
            takes = " or ".join(name for name, order in ORDERS.items() if order.takes_topics)
            raise UserError(
                f"model.topics=true trains on data.order={takes} only, not data.order={cls.name}; leave out one of them"
            )

    # --- batches

    def setup(self, train_set: WindowDataset, separator_id: int | None) -> None:
        """Given the training windows at ``stride`` (and the separator's id, or ``None``): the
        windows this order's batches cut. Streams and articles give window starts themselves, so
        they cut the windows at stride 1."""
        self.windows = train_set if train_set.stride == 1 else WindowDataset(train_set.path, self.nchars, 1)

    def make_sampler(self, rank: int, world_size: int, position: int) -> Sampler:
        """The batches of ``rank`` of ``world_size``, from batch round ``position`` on."""
        raise NotImplementedError

    def dataset(self, windows: Dataset) -> Dataset:
        """What the DataLoader indexes with this order's batches: ``windows`` (``self.windows`` or
        its copy on the device) as they are, unless the order adds to each batch."""
        return windows

    def too_few(self, world_size: int) -> str:
        """The one line when a rank gets no batch."""
        raise NotImplementedError

    def sampler(self, rank: int, world_size: int) -> Sampler:
        """The sampler of a new DataLoader, at the current position; its position then moves as batches train."""
        batches = self.make_sampler(rank, world_size, self.position)
        if len(batches) == 0:
            raise UserError(self.too_few(world_size))
        self._batches = batches
        return batches

    def batches_per_epoch(self, world_size: int) -> int:
        """Rounds of batches in an epoch, at least 1 (``sampler`` refuses fewer with a clear message)."""
        return max(1, len(self.make_sampler(0, world_size, 0)))

    # --- the position, for resuming

    @property
    def position(self) -> int:
        """Rounds of training batches (one batch per rank) trained since the run started, over all epochs."""
        return self._batches.position if self._batches is not None else self._position

    def advance(self) -> None:
        """One more batch round reached a training step."""
        if self._batches is not None:
            self._batches.position += 1

    def state_dict(self, world_size: int) -> dict:
        """``position``; ``epoch`` and ``batches`` (of it trained) are the same, spelled out for people
        reading it; ``order`` and ``data_order`` say which order the position counts in."""
        per_epoch = self.batches_per_epoch(world_size)
        return {
            "position": self.position,
            "epoch": self.position // per_epoch,
            "batches": self.position % per_epoch,
            "order": ORDER_VERSION,
            "data_order": self.name,
        }

    def load_state_dict(self, state: dict, world_size: int) -> None:
        per_epoch = self.batches_per_epoch(world_size)
        # Checkpoints of charlm before ``position`` saved only epoch and batches.
        position = state["position"] if "position" in state else state["epoch"] * per_epoch + state["batches"]
        other_order = state.get("order") != ORDER_VERSION or state.get("data_order", "windows") != self.name
        if other_order and position % per_epoch:
            log.warning(
                "this checkpoint was written with another training order (data.order, or a charlm with another "
                "window order); the rest of epoch %d "
                "will not be exactly the windows the run had left; later epochs are whole shuffles as usual",
                position // per_epoch,
            )
        self._position = position
        if self._batches is not None:
            self._batches.position = position


@register
class Windows(Order):
    """``batch_size`` windows every ``stride`` characters, in a new shuffle each epoch (``ShuffledBatches``)."""

    name = "windows"
    takes_topics = True

    def setup(self, train_set: WindowDataset, separator_id: int | None) -> None:
        self.windows = train_set

    def make_sampler(self, rank: int, world_size: int, position: int) -> Sampler:
        return ShuffledBatches(len(self.windows), self.batch_size, self.seed, rank, world_size, position)

    def too_few(self, world_size: int) -> str:
        return (
            f"data.batch_size={self.batch_size} is more than the {len(self.windows)} training "
            "windows (per device); lower it or data.stride"
        )


@register
class Streams(Order):
    """``batch_size`` contiguous rows fed as consecutive chunks of ``nchars``, the state carried
    (``StreamBatches``); each batch says whether the state carries over (``CarryingWindows``)."""

    name = "streams"

    def make_sampler(self, rank: int, world_size: int, position: int) -> Sampler:
        return StreamBatches(
            len(self.windows.tokens), self.nchars, self.batch_size, self.seed, rank, world_size, position
        )

    def dataset(self, windows: Dataset) -> Dataset:
        return CarryingWindows(windows)

    def too_few(self, world_size: int) -> str:
        return (
            f"data.batch_size={self.batch_size} rows of at least data.nchars={self.nchars} characters "
            f"(per device) do not fit in the {len(self.windows.tokens)} training characters; "
            "lower data.batch_size or data.nchars"
        )


@register
class Articles(Order):
    """The lesson's: one batch per article of all its windows at stride 1, articles in file order
    (``ArticleBatches``); needs articles. Batches differ in size."""

    name = "articles"
    needs_articles = True
    equal_batches = False

    def setup(self, train_set: WindowDataset, separator_id: int | None) -> None:
        super().setup(train_set, separator_id)
        tokens = self.windows.tokens
        # without the separator in the vocabulary the training text is one article
        self.bounds = (
            article_bounds(tokens, separator_id)
            if separator_id is not None
            else np.array([[0, len(tokens)]], dtype=np.int64)
        )

    def make_sampler(self, rank: int, world_size: int, position: int) -> Sampler:
        return ArticleBatches(self.bounds, self.nchars, rank, world_size, position)

    def too_few(self, world_size: int) -> str:
        return (
            f"no training article (per device) is longer than data.nchars={self.nchars} characters; lower data.nchars"
        )

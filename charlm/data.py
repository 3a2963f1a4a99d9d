"""The LightningDataModule: a corpus source (``data.corpus``, a ``charlm.sources.Source``: AG News
from the Hub or a local CSV, a UTF-8 text file, a folder of text files) -> the token cache
(``charlm.cache``) -> training batches in ``data.order`` (a ``charlm.orders.Order``: shuffled
equal-size windows, contiguous streams with the state carried, or the lesson's articles) and
carried-state streams for validation and test (``charlm.windows``).

Sources and orders are plug-ins picked by name from their registries; this module knows none of
them by name. Each split is encoded once into a token array under ``cache_dir``, keyed by the
source and the split sizes, and memory-mapped by every later run and sweep job.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import DataLoader

from charlm.cache import (
    CACHE_VERSION,
    DamagedCache,
    map_labels,
    map_tokens,
    read_cache_meta,
    remove_stale_builds,
    write_cache,
)
from charlm.config import writable_dir
from charlm.errors import UserError
from charlm.orders import order_class
from charlm.sampling import check_seed
from charlm.sources import SOURCES, Corpus, source_for
from charlm.vocabulary import Vocabulary
from charlm.windows import DeviceWindows, EvalStream, WindowDataset, as_batch

log = logging.getLogger(__name__)

ON_DEVICE_AUTO_FRACTION = 0.1  # data.on_device=auto: the training tokens' share of GPU memory at most


def _checked_meta(cache: Path) -> tuple[dict | None, str | None]:
    """The metadata of the whole cache ``cache``, or ``None`` and what is wrong with it (``None``: no cache)."""
    try:
        return read_cache_meta(cache), None
    except DamagedCache as err:
        return None, str(err)


class CharDataModule(L.LightningDataModule):
    """A corpus source as training batches in a training order, and held-out streams.

    Args:
        corpus: the source's name in ``charlm.sources.SOURCES``: ``ag_news``, ``text`` or ``folder``.
        path: local AG News CSV file or folder (train.csv + test.csv), the text file, or the
            folder of text files; ``None`` with ``ag_news`` downloads ``hub_dataset`` from the
            Hugging Face Hub.
        hub_dataset: the Hub name of AG News.
        val_size, test_size: held-out sizes, a count (articles for AG News, characters for
            text, files for a folder) or a fraction in (0, 1). Val is cut from the tail of the
            training data and test from the tail of the source; a source with its own test
            split uses it and ignores ``test_size``.
        nchars: window length in characters; stride: characters between window starts.
        batch_size: windows per training batch (every batch has exactly this many).
        eval_rows, eval_chunk: rows and chunk length of the held-out streams.
        num_workers, pin_memory: DataLoader settings for training (unused with the windows on the device).
        on_device: cut the training windows on the training device from a copy of the token array
            there (``charlm.windows.DeviceWindows``): ``true``, ``false``, or ``auto``: on a GPU when
            the array takes at most ``ON_DEVICE_AUTO_FRACTION`` of its memory (AG News: 27 MB).
        cache_dir: where encoded token arrays are kept and shared between runs.
        seed: seeds the order of the training windows (a new order each epoch).
        order: the order of the training batches, its name in ``charlm.orders.ORDERS``: ``windows``
            (``batch_size`` windows every ``stride`` characters, shuffled), ``streams``
            (``batch_size`` contiguous rows served as consecutive chunks of ``nchars``, the state
            carried; ``stride`` unused) or ``articles`` (the lesson's: one batch per article of all
            its windows at stride 1, articles in file order; ``stride`` and ``batch_size`` unused;
            a source of articles only).
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
        on_device: bool | str = "auto",
        cache_dir: str = "outputs/cache",
        seed: int = 0,
        order: str = "windows",
    ):
        super().__init__()
        order_type = order_class(order)
        self.path = Path(path).expanduser().resolve() if path else None
        self.source = source_for(corpus, self.path, val_size, test_size, hub_dataset)
        order_type.check_source(self.source)
        for key, value, low in (
            ("nchars", nchars, 1),
            ("stride", stride, 1),
            ("batch_size", batch_size, 1),
            ("eval_rows", eval_rows, 1),
            ("eval_chunk", eval_chunk, 1),
            ("num_workers", num_workers, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"data.{key}={value!r} must be a whole number >= {low}")
        check_seed(seed, "data.seed")
        if on_device not in (True, False, "auto"):
            raise UserError(f"data.on_device={on_device!r} must be true, false or auto")
        self.on_device = on_device
        self._device_windows: DeviceWindows | None = None
        self.corpus, self.hub_dataset = corpus, hub_dataset
        self.val_size, self.test_size = val_size, test_size
        self.nchars, self.stride, self.batch_size = nchars, stride, batch_size
        self.eval_rows, self.eval_chunk = eval_rows, eval_chunk
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.cache_root = Path(cache_dir).expanduser().resolve()
        self.seed = seed
        self.vocab: Vocabulary | None = None
        self.cache_path: Path | None = None
        self._cache_meta: dict | None = None  # the cache's meta.json, checked (prepare_data)
        # the training order: its batches, its position in them (for resuming), its sharding
        self.order = order_type(nchars, stride, batch_size, seed)
        self._device_windows_of: WindowDataset | None = None  # the windows _device_windows copies
        self.with_topics = False  # batches carry the topic of each input character (use_topics)

    # --- preparing the cache

    def _cache_dir_for(self, source_key: list) -> Path:
        spec = json.dumps([CACHE_VERSION, *source_key])
        return self.cache_root / hashlib.sha1(spec.encode()).hexdigest()[:16]

    def prepare_data(self) -> None:
        """Encode the corpus into the cache unless an earlier run did already; a cache found
        damaged is encoded again (``charlm.cache.read_cache_meta`` checks it). The source is read
        only when the cache must be built: a cache lookup reads its key alone."""
        if self.cache_path is not None:
            return
        cache = self._cache_dir_for(self.source.key())
        meta, damage = _checked_meta(cache)  # a finished cache is only read: it may be read-only
        if meta is None:
            meta = self._build_cache(cache, self.source.corpus, damage)
        self.cache_path, self._cache_meta = cache, meta

    def _build_cache(self, cache: Path, corpus, damage: str | None) -> dict:
        """Encode ``corpus()`` into ``cache`` (missing, or ``damage`` says what is wrong with it)
        and return its checked metadata. A damaged cache that cannot be encoded again (the source
        cannot be read, the folder cannot be written) stops the run with one line naming the
        folder to delete."""

        def cannot_rebuild(damage: str, why: str) -> UserError:
            return UserError(
                f"the token cache {cache} is damaged ({damage}) and could not be encoded again ({why}); "
                f"delete {cache} and run again"
            )

        try:
            writable_dir(self.cache_root, "data.cache_dir")
        except UserError as err:
            if damage is None:
                raise
            raise cannot_rebuild(damage, str(err).split(";")[0]) from None
        # One builder at a time: ranks and sweep jobs that start together wait for the first
        # and then read its cache instead of each encoding the corpus again.
        with FileLock(cache.with_name(cache.name + ".lock")):
            meta, damage = _checked_meta(cache)  # built or repaired by another process meanwhile?
            if meta is not None:
                return meta
            remove_stale_builds(cache)  # of a build that was killed: nobody else builds this cache now
            try:
                self._write_cache(cache, corpus())
            except OSError as err:
                if damage is None:
                    raise
                raise cannot_rebuild(damage, f"{err.strerror}: {err.filename}" if err.filename else str(err)) from None
            meta, written_damage = _checked_meta(cache)
            if meta is None:  # the disk or the file system fails
                raise cannot_rebuild(written_damage, "it reads back damaged once written")
            if damage is not None:  # after the work: a failed one says so in its one error line instead
                log.warning("the token cache %s was damaged (%s); encoded %s into it again", cache, damage, self.source)
            return meta

    def _write_cache(self, cache: Path, corpus: Corpus) -> None:
        write_cache(
            cache, corpus, self.cache_root, self.nchars, str(self.source), self.source.name, self.source.separator
        )

    # --- loading

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        self.prepare_data()  # a no-op once cached; makes setup() alone enough outside a Trainer
        meta = self._cache_meta  # checked by prepare_data
        self.vocab = Vocabulary(meta["vocab"])
        self.meta = meta
        self.separator_id = self.vocab.chars.index(meta["separator"]) if meta["separator"] in self.vocab.chars else None
        self.train_set = WindowDataset(self.cache_path / "train.npy", self.nchars, self.stride)
        self.order.setup(self.train_set, self.separator_id)
        for split in ("val", "test"):
            if meta["characters"][split] < 2:
                raise UserError(
                    f"the {split} split has {meta['characters'][split]} characters; raise data.{split}_size"
                )
        self.topics = meta.get("topics")  # the topics' names (AG News), else None
        if self.with_topics:
            self.train_set.labels_path = self.cache_path / "train_labels.npy"
        if meta["unknown"]["val"] or meta["unknown"]["test"]:
            log.info("characters outside the vocabulary (scored as id 0): %s", meta["unknown"])

    def use_topics(self) -> list[str]:
        """Make every batch (x, y, topic): the topic of each input character (``model.topics=true``).
        The topics' names; a corpus without topics is refused in one line."""
        self.setup()
        if not self.topics:
            with_topics = ", ".join(f"data={name}" for name, source in SOURCES.items() if source.topics)
            raise UserError(
                f"model.topics=true needs a corpus with topics ({with_topics}); data.corpus={self.corpus} "
                "has none: leave out model.topics"
            )
        self.check_order_has_topics()
        self.with_topics = True
        self.train_set.labels_path = self.cache_path / "train_labels.npy"
        return self.topics

    def check_order_has_topics(self) -> None:
        """``model.topics=true`` needs batches that cut the topics (``Order.takes_topics``). Needs no
        data, so it can run before preparing it."""
        self.order.check_topics()

    def held_out_topics(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The tokens and the per-character topics of a held-out split (val or test)."""
        return map_tokens(self.cache_path / f"{split}.npy"), map_labels(self.cache_path, split)

    def train_dataloader(self) -> DataLoader:
        batches = self.order.sampler(*self._rank())
        base = self.order.windows
        windows = self._training_windows(base)
        workers = self.num_workers if windows is base else 0  # on the device: nothing to prepare ahead
        pin = self.pin_memory and windows is base
        # Its own generator: creating an iterator then draws no number from the global random
        # state, which a resumed run restores and must advance exactly as the first run did.
        return DataLoader(
            self.order.dataset(windows),
            batch_sampler=batches,
            collate_fn=as_batch,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _training_windows(self, base: WindowDataset) -> WindowDataset | DeviceWindows:
        """The training windows: ``base`` (on the memory-mapped array), or ``DeviceWindows`` on the
        training device when ``on_device`` says so."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        use = self.on_device
        if use == "auto":
            size = self.train_set.tokens.nbytes
            use = (
                device.type == "cuda"
                and size <= ON_DEVICE_AUTO_FRACTION * torch.cuda.get_device_properties(device).total_memory
            )
        if not use:
            return base
        if (
            self._device_windows is None
            or self._device_windows.tokens.device != device
            or self._device_windows_of is not base
        ):
            self._device_windows, self._device_windows_of = DeviceWindows(base, device), base
            log.info(
                "training windows cut on %s from a copy of the token array there (%.0f MB)",
                device,
                self.train_set.tokens.nbytes / 1e6,
            )
        return self._device_windows

    # --- the position in the data, for resuming
    #
    # The training order counts the batches trained itself instead of reading Lightning's loop
    # progress: when a run stops in the middle of an epoch (Ctrl-C, max_time, max_steps, early
    # stopping), Lightning still ends that epoch (its epoch counter moves on) and checkpoints
    # written then pair the next epoch number with the batch count of the stopped one. A count
    # of trained batches has one meaning wherever it is saved, and the order's sampler derives
    # the epoch and the batch within it from it (``charlm.orders.Order``).

    @property
    def position(self) -> int:
        """Rounds of training batches (one batch per rank) trained since the run started, over all epochs."""
        return self.order.position

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Counts a training batch when it reaches the training step: counting batches as the
        loader draws them would be ahead by the batches it fetches in advance."""
        if self.trainer is not None and self.trainer.training:
            self.order.advance()
        return batch

    def state_dict(self) -> dict:
        """Where training stands in the data (``charlm.orders.Order.state_dict``)."""
        return self.order.state_dict(self._rank()[1])

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state, self._rank()[1])

    def _batches_per_epoch(self, world_size: int | None = None) -> int:
        """Rounds of batches in an epoch, at least 1 (the loader refuses fewer with a clear message)."""
        return self.order.batches_per_epoch(world_size or self._rank()[1])

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def eval_stream(self, split: str, chars: int | None = None) -> EvalStream:
        """The held-out ``split`` (val or test) as this rank's share of an ``EvalStream``; with
        ``chars``, only its first ``chars`` characters (``train`` with ``chars``: a sample of the
        training text scored as val is, by ``charlm.callbacks.TrainSampleScore``)."""
        tokens = map_tokens(self.cache_path / f"{split}.npy")  # read in order: the kernel's read-ahead helps
        labels = map_labels(self.cache_path, split)[:chars] if self.with_topics else None
        return EvalStream(
            tokens[:chars], self.eval_rows, self.eval_chunk, self.separator_id, *self._rank(), labels=labels
        )

    def _eval_loader(self, split: str) -> DataLoader:
        # its own generator, as for training: validating must not move the global random state
        return DataLoader(self.eval_stream(split), batch_size=None, shuffle=False, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

"""How charlm scores text, in one place: a model reads a stream served as consecutive chunks of the
same rows, with its recurrent state carried from one chunk to the next, and each character costs its
cross-entropy in nats; padding (the target ``IGNORE``) costs nothing and is not counted.

Validation and test (``CharLM``), the training-sample score (``charlm.callbacks.TrainSampleScore``),
``eval.py``, the inspector's surprisal (``charlm.activations.surprisal``) and the generative
classifier (``charlm.topics.article_log_likelihoods``) all score through ``score_stream`` (or the
``StreamScorer`` behind it). The metrics of a scored split are one ``SplitMetrics``, made by
``split_metrics``: a metric added there is added to val, test, the training sample and eval.py
alike, and each split has its own, so the training text cannot reach val's."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from charlm.windows import IGNORE, unpack_batch


@dataclass
class ChunkScore:
    """One chunk as the model scored it: its ``logits [rows, T, vocab]`` and ``targets [rows, T]``."""

    logits: torch.Tensor
    targets: torch.Tensor

    @property
    def scored(self) -> torch.Tensor:
        """The targets that count (not padding)."""
        return (self.targets != IGNORE).sum()

    def loss_sum(self) -> torch.Tensor:
        """The chunk's loss in nats, summed over its scored targets."""
        return F.cross_entropy(
            self.logits.flatten(0, 1).float(), self.targets.flatten(), ignore_index=IGNORE, reduction="sum"
        )

    def losses(self) -> torch.Tensor:
        """``[rows, T]``: each target's loss in nats (0 for padding)."""
        return F.cross_entropy(self.logits.float().transpose(1, 2), self.targets, ignore_index=IGNORE, reduction="none")


class StreamScorer:
    """Scores the chunks of one stream in order, carrying the model's state from each chunk to the next;
    the first (or the first after ``reset``) starts from a fresh state (zeros, or what the topic sets)."""

    def __init__(self, net):
        self.net, self.state = net, None

    def reset(self) -> None:
        self.state = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, topic: torch.Tensor | None = None) -> ChunkScore:
        logits, self.state = self.net(x, self.state, topic=topic)
        return ChunkScore(logits, y)


def score_stream(net, chunks: Iterable) -> Iterator[ChunkScore]:
    """Each chunk of a stream scored in order with the state carried: ``chunks`` are ``(x, y)`` or
    ``(x, y, topic)`` batches (``charlm.windows.unpack_batch``), as ``EvalStream`` serves them. No
    gradients are kept; the model's mode (dropout) is the caller's."""
    scorer = StreamScorer(net)
    with torch.no_grad():
        for chunk in chunks:
            x, y, extras = unpack_batch(chunk)
            yield scorer(x, y, extras.get("topic"))


class SplitMetrics(torch.nn.Module):
    """Every metric of a scored split, named ``<prefix>/<name>``: ``loss`` (nats per character),
    ``bpc`` and ``ppl``, means weighted by the characters scored; with ``topics`` (a topic-conditioned
    model) and a stream that gives the topics, also the same model with the topic unknown, scored on
    the same chunks with its own carried state: ``bpc_uncond`` and ``topic_bits`` (per character).

    A ``torch.nn.Module`` so that its torchmetrics states move with the model to its device; under
    DDP ``compute`` sums the weighted losses and character counts of all ranks (torchmetrics' sync)."""

    def __init__(self, prefix: str, topics: bool = False):
        super().__init__()
        self.prefix = prefix
        self.loss = MeanMetric()
        self.uncond = MeanMetric() if topics else None
        self._scorers: tuple[StreamScorer, StreamScorer] | None = None

    def update(self, net, batch, first: bool) -> None:
        """Score one chunk of the stream; ``first``: its first chunk, read from a fresh state."""
        if first or self._scorers is None:
            self._scorers = StreamScorer(net), StreamScorer(net)
        x, y, extras = unpack_batch(batch)
        topic = extras.get("topic")
        chunk = self._scorers[0](x, y, topic)
        _add(self.loss, chunk)
        if topic is not None and self.uncond is not None:  # the unknown topic: the unconditioned model
            _add(self.uncond, self._scorers[1](x, y, None))

    @property
    def scored_topics(self) -> bool:
        """Whether the unconditioned twin was scored (a topic model on a stream with topics)."""
        return self.uncond is not None and bool(self.uncond.update_count)

    def compute(self) -> dict[str, torch.Tensor]:
        loss = self.loss.compute()
        p = self.prefix
        values = {f"{p}/loss": loss, f"{p}/bpc": loss / math.log(2), f"{p}/ppl": loss.exp()}
        if self.scored_topics:
            loss_uncond = self.uncond.compute()
            values[f"{p}/bpc_uncond"] = loss_uncond / math.log(2)
            values[f"{p}/topic_bits"] = (loss_uncond - loss) / math.log(2)
        return values

    def reset(self) -> None:
        self.loss.reset()
        if self.uncond is not None:
            self.uncond.reset()
        self._scorers = None


def split_metrics(prefix: str, topics: bool = False) -> SplitMetrics:
    """A fresh set of every metric of a scored split (val, test, train_eval, eval.py's)."""
    return SplitMetrics(prefix, topics)


def evaluate_stream(net, chunks: Iterable, metrics: SplitMetrics, device=None) -> dict[str, torch.Tensor]:
    """``metrics`` of a whole stream, read chunk by chunk as validation reads it (moved to ``device``
    when given); ``metrics`` is reset afterwards, ready for the next time."""
    metrics.reset()
    with torch.no_grad():
        for i, batch in enumerate(chunks):
            if device is not None:
                batch = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in batch)
            metrics.update(net, batch, first=i == 0)
    values = metrics.compute()
    metrics.reset()
    return values


def _add(metric: MeanMetric, chunk: ChunkScore) -> None:
    """Add a chunk's mean loss over its scored targets to ``metric``, weighted by their number."""
    scored = chunk.scored
    if scored:
        metric.update(chunk.loss_sum() / scored, weight=scored)

"""Generative classification with a topic-conditioned model: the topic of an article is the one
under which the model finds the article most likely, ``argmax_k log p(article | k) + log p(k)``."""

from __future__ import annotations

import math

import numpy as np
import torch

from charlm.cache import article_starts
from charlm.model import CharRNN
from charlm.scoring import StreamScorer
from charlm.windows import IGNORE

ROWS_PER_BATCH = 512  # (article, topic) rows scored in one forward


def split_articles(tokens: np.ndarray, labels: np.ndarray, separator_id: int, limit: int | None = None):
    """The articles of a held-out stream (each with the separator that starts it) and their topics."""
    starts = article_starts(tokens, separator_id)
    ends = np.append(starts[1:], len(tokens))
    keep = ends - starts > 1  # a separator alone is no article
    starts, ends = starts[keep], ends[keep]
    if limit is not None:
        starts, ends = starts[:limit], ends[:limit]
    return [np.asarray(tokens[a:b], dtype=np.int64) for a, b in zip(starts, ends)], np.asarray(labels)[starts].astype(
        np.int64
    )


@torch.no_grad()
def article_log_likelihoods(net: CharRNN, articles: list[np.ndarray], separator_id: int) -> torch.Tensor:
    """``[articles, topics + 1]``: log p(article | topic) in nats, each article scored from a fresh
    state (after its separator) up to and including the separator that ends it; the last column
    is the unknown topic (the unconditioned model). All topics of an article go in one batched
    forward: rows are (article, topic) pairs, padded; articles are batched by length."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    topics = net.topics + 1
    out = torch.empty(len(articles), topics)
    order = np.argsort([len(a) for a in articles])
    per_batch = max(1, ROWS_PER_BATCH // topics)
    try:
        for first in range(0, len(order), per_batch):
            chosen = order[first : first + per_batch]
            width = max(len(articles[i]) for i in chosen)
            ids = torch.full((len(chosen), width + 1), IGNORE, dtype=torch.long)
            for row, i in enumerate(chosen):
                ids[row, : len(articles[i])] = torch.from_numpy(articles[i])
                ids[row, len(articles[i])] = separator_id  # the end of the article is predicted too
            x, y = ids[:, :-1].clamp(min=0), ids[:, 1:]
            x, y = x.repeat_interleave(topics, 0).to(device), y.repeat_interleave(topics, 0).to(device)
            topic = torch.arange(topics, device=device).repeat(len(chosen))
            nll = StreamScorer(net)(x, y, topic).losses().sum(1)  # each row from a fresh state
            out[torch.from_numpy(chosen)] = -nll.view(len(chosen), topics).cpu()
    finally:
        net.train(was_training)
    return out


def classify_articles(
    net: CharRNN,
    tokens: np.ndarray,
    labels: np.ndarray,
    separator_id: int,
    topic_counts: list[int] | None,
    limit: int | None = None,
) -> tuple[float, list[list[int]]]:
    """The accuracy of the generative classifier on the articles of a held-out stream (the first
    ``limit``; all for ``None``) and its confusion matrix (rows: the true topic)."""
    articles, true = split_articles(tokens, labels, separator_id, limit)
    scores = article_log_likelihoods(net, articles, separator_id)
    predicted = (scores[:, : net.topics] + log_prior(topic_counts, net.topics)).argmax(-1)
    true = torch.from_numpy(true)
    matrix = confusion(true, predicted, net.topics)
    return (float((predicted == true).float().mean()) if len(true) else 0.0), matrix


def log_prior(topic_counts: list[int] | None, topics: int) -> torch.Tensor:
    """log p(topic) from the training articles per topic (uniform without them)."""
    counts = torch.tensor(topic_counts if topic_counts else [1] * topics, dtype=torch.float64) + 1
    return (counts / counts.sum()).log().float()


def posterior(log_likelihoods: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """p(topic | article) from ``article_log_likelihoods`` (its conditioned columns) and the log prior."""
    return (log_likelihoods[:, : len(prior)] + prior).softmax(dim=-1)


def confusion(true: torch.Tensor, predicted: torch.Tensor, topics: int) -> list[list[int]]:
    """Rows: the true topic; columns: the predicted one."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    return multiclass_confusion_matrix(predicted, true, topics).tolist()


def confusion_figure(matrix: list[list[int]], names: list[str]):
    """The confusion matrix as a matplotlib figure, or ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(np.asarray(matrix), cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center")
    fig.tight_layout()
    return fig


def bits(nats: float) -> float:
    return nats / math.log(2)

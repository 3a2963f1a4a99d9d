"""The network: characters (one-hot or embedded) -> a recurrent stack (a cell of charlm.cells) -> linear head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlm.cells import CELLS, SCANS
from charlm.errors import UserError

TOPIC_MODES = ("input", "state")  # the topic fed with every character, or only into the initial state
SCAN_NAMES = ("auto", *SCANS)


def check_model_args(
    cell: str,
    hidden_size: int,
    layers: int,
    dropout: float,
    embedding_dim: int,
    topics: int | bool = 0,
    topic_dim: int = 16,
    topic_dropout: float = 0.0,
    topic_mode: str = "input",
    expansion: float | None = None,
    residual: bool | None = None,
    norm: bool | None = None,
    scan: str | None = None,
    **unknown,
) -> None:
    """Refuse ``CharRNN`` settings that build no sensible network, or that it does not have,
    naming the bad value (``model.<key>``). ``topics`` may be ``true`` (the data's topics). The
    block settings (expansion, residual, norm, scan) are ``null`` for the cell's default and
    refused for a cell that does not have them (``charlm.cells``)."""
    if unknown:
        raise UserError(
            f"model.{next(iter(unknown))} is not a model setting; the settings are cell, hidden_size, "
            "layers, dropout, embedding_dim, topics, topic_dim, topic_dropout, topic_mode, expansion, "
            "residual, norm, scan"
        )
    if not isinstance(topics, (bool, int)) or (not isinstance(topics, bool) and topics < 0):
        raise UserError(f"model.topics={topics!r} must be true (condition on the data's topics) or false")
    if topic_mode not in TOPIC_MODES:
        raise UserError(
            f"model.topic_mode={topic_mode!r} is not known; use input (every step) or state (initial state)"
        )
    if isinstance(topic_dim, bool) or not isinstance(topic_dim, int) or topic_dim < 1:
        raise UserError(f"model.topic_dim={topic_dim!r} must be a whole number >= 1")
    if isinstance(topic_dropout, bool) or not isinstance(topic_dropout, (int, float)) or not 0 <= topic_dropout < 1:
        raise UserError(f"model.topic_dropout={topic_dropout!r} must be a number in [0, 1)")
    if not isinstance(cell, str) or cell not in CELLS:
        raise UserError(f"model.cell={cell!r} is not known; use one of {', '.join(CELLS)}")
    for key, value, low in (
        ("hidden_size", hidden_size, 1),
        ("layers", layers, 1),
        ("embedding_dim", embedding_dim, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"model.{key}={value!r} must be a whole number >= {low}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise UserError(f"model.dropout={dropout!r} must be a number in [0, 1)")
    if expansion is not None and (
        isinstance(expansion, bool) or not isinstance(expansion, (int, float)) or not 1 <= expansion <= 16
    ):
        raise UserError(f"model.expansion={expansion!r} must be a number in [1, 16] (state units per hidden unit)")
    for key, value in (("residual", residual), ("norm", norm)):
        if value is not None and not isinstance(value, bool):
            raise UserError(f"model.{key}={value!r} must be true or false (or null: the cell's default)")
    if scan is not None and scan not in SCAN_NAMES:
        raise UserError(f"model.scan={scan!r} is not known; use one of {', '.join(SCAN_NAMES)}")
    CELLS[cell].resolve(expansion=expansion, residual=residual, norm=norm, scan=scan)


def _block(settings: dict) -> dict:
    return {k: settings.get(k) for k in ("expansion", "residual", "norm", "scan") if settings.get(k) is not None}


def matmul_flops_per_char(
    cell: str, hidden_size: int, layers: int, vocab_size: int, embedding_dim: int = 0, **settings
) -> int:
    """Forward matmul FLOPs of one character, counted from the settings: every layer's projections
    (the cell's ``matmul_flops``: LSTM/GRU/RNN ``2 * gates * hidden * (input + hidden)``; input =
    the embedding, the one-hot vocabulary for ``embedding_dim=0``, as nn.LSTM multiplies it in full,
    or the layer below), and the head, ``2 * hidden * vocab``. Training costs about 3 times this
    (backward: 2); embedding lookups, biases, gate nonlinearities and scans are left out (a few percent)."""
    stack = CELLS[cell].matmul_flops(embedding_dim or vocab_size, hidden_size, layers, **_block(settings))
    return stack + 2 * hidden_size * vocab_size


def parameter_count(
    vocab_size: int,
    cell: str = "lstm",
    hidden_size: int = 256,
    layers: int = 1,
    embedding_dim: int = 0,
    topics: int | bool = 0,
    topic_dim: int = 16,
    topic_mode: str = "input",
    **settings,
) -> int:
    """The parameters of ``CharRNN(vocab_size, ...)``, counted from its settings without building it
    (so a model too large for memory is told before it is allocated): the recurrent stack (the
    cell's ``parameter_count``), the embedding, the head, and the topic embedding and initial-state
    projection of a topic-conditioned model (``topics=true``: one topic)."""
    topics, kind, block = int(topics), CELLS[cell], _block(settings)
    extra = topic_dim if topics and topic_mode == "input" else 0
    count = kind.parameter_count((embedding_dim or vocab_size) + extra, hidden_size, layers, **block)
    count += embedding_dim * vocab_size + (hidden_size + 1) * vocab_size
    if topics:
        count += (topics + 1) * topic_dim
        if topic_mode == "state":
            states = kind.states * layers * kind.state_size(hidden_size, **kind.resolve(**block))
            count += (topic_dim + 1) * states
    return count


class CharRNN(nn.Module):
    """Character-level recurrent language model.

    Args:
        vocab_size: number of character ids (the vocabulary's length).
        cell: a name in ``charlm.cells.CELLS``: ``lstm``, ``gru``, ``rnn`` (tanh), ``mingru``, ``minlstm``.
        hidden_size: units per recurrent layer.
        layers: stacked recurrent layers.
        dropout: in [0, 1); dropout between recurrent layers and on the last layer's output before
            the head (the non-recurrent connections, as in Zaremba et al. 2014 and PyTorch's
            word_language_model), so a 1-layer model is regularized too.
        embedding_dim: 0 feeds one-hot vectors (the lesson's model); > 0 a learned embedding.
        topics: number of topics to condition on (0: an unconditioned model). Topic ids are
            ``0..topics-1``; id ``topics`` is "unknown" (the unconditioned model, the same weights).
        topic_dim: size of the learned topic embedding.
        topic_dropout: in training, the fraction of rows whose topic is replaced by "unknown", so
            the model also learns to predict (and score, and generate) without a topic.
        topic_mode: ``input``: the topic's embedding joins the input at every step; ``state``: it
            sets the initial state only (a window that crosses into another article keeps its first topic).
        expansion, residual, norm, scan: the minimal cells' block settings (``None``: the cell's
            default; refused by the cells that do not have them), see ``charlm.cells.Minimal``.
    """

    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        hidden_size: int = 256,
        layers: int = 1,
        dropout: float = 0.0,
        embedding_dim: int = 0,
        topics: int = 0,
        topic_dim: int = 16,
        topic_dropout: float = 0.0,
        topic_mode: str = "input",
        expansion: float | None = None,
        residual: bool | None = None,
        norm: bool | None = None,
        scan: str | None = None,
    ):
        super().__init__()
        block = dict(expansion=expansion, residual=residual, norm=norm, scan=scan)
        check_model_args(
            cell, hidden_size, layers, dropout, embedding_dim, topics, topic_dim, topic_dropout, topic_mode, **block
        )
        self.vocab_size, self.topics = vocab_size, int(topics)
        self.topic_dropout, self.topic_mode, self.cell = topic_dropout, topic_mode, cell
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if embedding_dim else None
        extra = topic_dim if self.topics and topic_mode == "input" else 0
        kind = CELLS[cell]
        self.rnn = kind((embedding_dim or vocab_size) + extra, hidden_size, layers, dropout, **_block(block))
        # nn.Dropout(0) still copies its input in training: none when there is nothing to drop
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Linear(hidden_size, vocab_size)
        if self.topics:
            self.topic_embedding = nn.Embedding(self.topics + 1, topic_dim)  # the last id: unknown
            if topic_mode == "state":
                width = kind.state_size(hidden_size, **self.rnn.settings)
                self.topic_state = nn.Linear(topic_dim, kind.states * layers * width)

    @property
    def unknown_topic(self) -> int:
        return self.topics

    def topic_state_of(self, t: torch.Tensor):
        """The initial state ``topic_mode=state`` sets for topic embeddings ``t [batch, topic_dim]``,
        in the cell's layout (``[layers, batch, state]`` per state tensor)."""
        rnn = self.rnn
        width = rnn.state_size(rnn.hidden_size, **rnn.settings)
        init = torch.tanh(self.topic_state(t)).view(len(t), rnn.states, rnn.num_layers, width).permute(1, 2, 0, 3)
        return rnn.pack([s.contiguous() for s in init])

    def forward(self, ids: torch.Tensor, state=None, topic: torch.Tensor | None = None):
        """Logits ``[batch, time, vocab]`` for ids ``[batch, time]``, and the state after the last step.

        ``topic``: the topic of each input character ``[batch, time]`` or of each row ``[batch]``
        (``None``: unknown); ignored by an unconditioned model."""
        if self.embedding is not None:
            x = self.embedding(ids)
        else:
            x = F.one_hot(ids, self.vocab_size).to(self.head.weight.dtype)
        if self.topics:
            if topic is None:
                topic = torch.full(ids.shape[:1], self.unknown_topic, dtype=torch.long, device=ids.device)
            if topic.dim() == 1:
                topic = topic[:, None].expand(ids.shape)
            if self.training and self.topic_dropout:
                drop = torch.rand(topic.shape[0], 1, device=topic.device) < self.topic_dropout
                topic = topic.masked_fill(drop, self.unknown_topic)
            t = self.topic_embedding(topic).to(x.dtype)
            if self.topic_mode == "input":
                x = torch.cat([x, t], dim=-1)
            elif state is None:
                state = self.topic_state_of(t[:, 0])
        out, state = self.rnn(x, state)
        return self.head(self.drop(out)), state

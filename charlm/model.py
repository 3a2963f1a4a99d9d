"""The network: characters (one-hot or embedded) -> multi-layer LSTM/GRU/RNN -> linear head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlm.errors import UserError

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def check_model_args(cell: str, hidden_size: int, layers: int, dropout: float, embedding_dim: int, **unknown) -> None:
    """Refuse ``CharRNN`` settings that build no sensible network, or that it does not have,
    naming the bad value (``model.<key>``)."""
    if unknown:
        raise UserError(f"model.{next(iter(unknown))} is not a model setting; the settings are cell, hidden_size, "
                        "layers, dropout, embedding_dim")
    if not isinstance(cell, str) or cell not in CELLS:
        raise UserError(f"model.cell={cell!r} is not known; use one of {', '.join(CELLS)}")
    for key, value, low in (("hidden_size", hidden_size, 1), ("layers", layers, 1), ("embedding_dim", embedding_dim, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"model.{key}={value!r} must be a whole number >= {low}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise UserError(f"model.dropout={dropout!r} must be a number in [0, 1)")


GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # weight matrices per layer: LSTM's 4 gates, GRU's 3, a plain RNN's 1


def matmul_flops_per_char(cell: str, hidden_size: int, layers: int, vocab_size: int, embedding_dim: int = 0,
                          **_) -> int:
    """Forward matmul FLOPs of one character, counted from the settings: every layer's input and
    recurrent projections, ``2 * gates * hidden * (input + hidden)`` (input = the embedding, the
    one-hot vocabulary for ``embedding_dim=0``, as nn.LSTM multiplies it in full, or the layer
    below), and the head, ``2 * hidden * vocab``. Training costs about 3 times this (backward: 2);
    embedding lookups, biases and gate nonlinearities are left out (a few percent)."""
    inputs = [embedding_dim or vocab_size] + [hidden_size] * (layers - 1)
    return sum(2 * GATES[cell] * hidden_size * (n + hidden_size) for n in inputs) + 2 * hidden_size * vocab_size


class CharRNN(nn.Module):
    """Character-level recurrent language model.

    Args:
        vocab_size: number of character ids (the vocabulary's length).
        cell: ``lstm``, ``gru`` or ``rnn`` (tanh).
        hidden_size: units per recurrent layer.
        layers: stacked recurrent layers.
        dropout: dropout between recurrent layers (used when ``layers`` > 1), in [0, 1).
        embedding_dim: 0 feeds one-hot vectors (the lesson's model); > 0 a learned embedding.
    """

    def __init__(self, vocab_size: int, cell: str = "lstm", hidden_size: int = 256, layers: int = 1,
                 dropout: float = 0.0, embedding_dim: int = 0):
        super().__init__()
        check_model_args(cell, hidden_size, layers, dropout, embedding_dim)
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if embedding_dim else None
        self.rnn = CELLS[cell](embedding_dim or vocab_size, hidden_size, num_layers=layers,
                               dropout=dropout if layers > 1 else 0.0, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, ids: torch.Tensor, state=None):
        """Logits ``[batch, time, vocab]`` for ids ``[batch, time]``, and the state after the last step."""
        if self.embedding is not None:
            x = self.embedding(ids)
        else:
            x = F.one_hot(ids, self.vocab_size).to(self.head.weight.dtype)
        out, state = self.rnn(x, state)
        return self.head(out), state

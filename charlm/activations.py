"""What a model computes on a text, character by character: the surprisal of each character and
the model's top guesses (from its own forward pass, so they are what evaluation computes), the
hidden and cell states and gates of every layer, the units that best track simple properties of the
text, and how often each gate is saturated. The recurrent stacks return the hidden states of the
last layer only, and no gates, so the states of every layer come from each cell's per-step form
(``charlm.cells``: ``layer_states``, one character at a time; tests check it equals the module's
output). Drawn by ``charlm.page``; used by ``python -m charlm.inspect``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from charlm.errors import UserError
from charlm.model import CharRNN
from charlm.scoring import score_stream
from charlm.vocabulary import Vocabulary

MAX_CHARS = 20_000  # longer texts are refused unless max_chars is raised (every character is scored)
SCORE_CHUNK = 4096  # characters per forward pass when scoring: memory holds one chunk's logits, not the text's
# The page keeps every unit's activation (h, and c of an LSTM, of every layer; ~1.4 bytes each on the
# page) at every character it shows, and the browser one element per character: it shows at most
# the first PAGE_VALUES // activations-per-character characters (21,845 of the default 384-unit
# LSTM: a 23 MB page), and never more than PAGE_CHARS. The rest of a longer text is scored only.
PAGE_VALUES = 2**24
PAGE_CHARS = 100_000
TOP_K = 5
SATURATED = (0.1, 0.9)  # a gate below / above these is left / right saturated (Karpathy, Johnson & Fei-Fei 2015)
PROPERTIES = ("inside quotes", "inside brackets", "position in line", "start of word", "upper case")
QUOTES = {'"': 0, "\u201c": 1, "\u201d": -1, "\u00ab": 1, "\u00bb": -1}  # 0: toggles
BRACKETS = {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}


def topic_of(net: CharRNN, topic: int | None) -> int | None:
    """The topic id a conditioned ``net`` reads: ``topic``, or its unknown topic (the unconditioned
    model, as ``CharRNN.forward`` without a topic) for ``None``; ``None`` for an unconditioned net."""
    if not net.topics:
        return None
    return net.unknown_topic if topic is None else int(topic)


def _inputs(net: CharRNN, ids: torch.Tensor, topic: int | None = None) -> torch.Tensor:
    """What the first recurrent layer reads for ``ids`` (as ``CharRNN.forward`` builds it): the
    characters, and with ``topic_mode=input`` the topic's embedding at every step."""
    if net.embedding is not None:
        x = net.embedding(ids)
    else:
        x = F.one_hot(ids, net.vocab_size).to(net.head.weight.dtype)
    topic = topic_of(net, topic)
    if topic is not None and net.topic_mode == "input":
        t = net.topic_embedding(torch.tensor(topic, device=ids.device)).to(x.dtype)
        x = torch.cat([x, t.expand(len(ids), -1)], dim=-1)
    return x


def _initial_state(net: CharRNN, topic: int | None, like: torch.Tensor):
    """The state before the first character of one row: zeros, or what the topic sets with
    ``topic_mode=state`` (as ``CharRNN.forward`` builds it), in the cell's layout."""
    topic = topic_of(net, topic)
    if topic is None or net.topic_mode != "state":
        return net.rnn.zero_state(1, like)
    t = net.topic_embedding(torch.tensor([topic], device=like.device)).to(like.dtype)
    return net.topic_state_of(t)


@torch.no_grad()
def layer_states(net: CharRNN, ids: torch.Tensor, topic: int | None = None) -> list[dict]:
    """For ``ids [T]`` read from a fresh state (zero, or set by the topic), per layer: ``h [T, H]`` (hidden state after each
    character), ``c [T, H]`` (LSTM cell state, else absent) and ``gates`` {name: [T, H]} (the cell's
    sigmoid gates: LSTM input/forget/output, GRU reset/update, minGRU update, minLSTM forget/input
    (normalised); none for a plain RNN). ``topic``: the topic id of a conditioned model (``None``:
    unknown), as in ``CharRNN.forward``. Each cell's per-step form (``charlm.cells``) computes them;
    dropout between layers is off, as in evaluation."""
    x = _inputs(net, ids, topic)
    return net.rnn.layer_states(x, _initial_state(net, topic, x))


@torch.no_grad()
def surprisal(
    net: CharRNN,
    ids: torch.Tensor,
    top_k: int = 0,
    topic: int | None = None,
    top_chars: int | None = None,
    chunk: int = SCORE_CHUNK,
):
    """Bits the model pays for each character of ``ids [T]`` read from a fresh state (``nan`` for the
    first, which has no context), from the model's own forward pass; with ``top_k`` also the ids and
    probabilities of its ``top_k`` guesses for each of the first ``top_chars`` characters (all by
    default; row 0: -1 and 0). ``topic``: the topic id of a conditioned model (``None``: unknown, the
    unconditioned model).

    The text is read ``chunk`` characters per forward pass with the state carried, by evaluation's own
    scorer (``charlm.scoring.score_stream``): the same numbers as one pass, but memory holds one chunk's
    logits, whatever the length of the text."""
    topic = topic_of(net, topic)
    topic = None if topic is None else torch.tensor([topic], device=ids.device)
    n = len(ids)
    top_chars = n if top_chars is None else min(top_chars, n)
    k = min(top_k, net.vocab_size)
    bits = torch.full((n,), float("nan"))
    top_ids = torch.full((top_chars, k), -1, dtype=torch.long)
    top_probs = torch.zeros(top_chars, k)
    starts = range(0, n - 1, chunk)  # chunk i reads ids[start:end] and scores ids[start + 1:end + 1]
    ends = [min(start + chunk, n - 1) for start in starts]
    extras = () if topic is None else (topic,)
    chunks = ((ids[None, a:b], ids[None, a + 1 : b + 1], *extras) for a, b in zip(starts, ends))
    for start, end, scored in zip(starts, ends, score_stream(net, chunks)):
        bits[start + 1 : end + 1] = (scored.losses()[0] / math.log(2)).cpu()
        rows = min(end, top_chars - 1) - start  # of this chunk's guesses, those for the first top_chars
        if k and rows > 0:
            values, top = torch.log_softmax(scored.logits[0, :rows].float(), dim=-1).topk(k, dim=-1)
            top_ids[start + 1 : start + 1 + rows], top_probs[start + 1 : start + 1 + rows] = (
                top.cpu(),
                values.exp().cpu(),
            )
    if not top_k:
        return bits.numpy()
    return bits.numpy(), top_ids.numpy(), top_probs.numpy()


def page_chars(net: CharRNN) -> int:
    """The most characters a page shows for ``net`` (``PAGE_VALUES``, ``PAGE_CHARS``)."""
    rnn = net.rnn
    per_char = rnn.num_layers * rnn.state_size(rnn.hidden_size, **rnn.settings) * rnn.states
    return max(2, min(PAGE_CHARS, PAGE_VALUES // per_char))


def cut_note(shown: int, total: int) -> str:
    """What the page of a text longer than it shows holds (``page_chars``), and what was scored."""
    return (
        f"the page shows the first {shown:,} of {total:,} characters, the most it holds for this model "
        f"({PAGE_VALUES:,} unit activations, at most {PAGE_CHARS:,} characters); the bits per character are "
        f"of all {total:,}"
    )


@dataclass
class Inspection:
    """What the page shows of one text: its characters and ids, the bits paid for each, the top guesses,
    every layer's states and gates (numpy, ``[T, H]``), and the units that best track each property;
    all of the characters the page shows (``page_chars``). ``whole``: the text inspected, which may
    be longer: its characters, total and mean bits, and characters outside the vocabulary."""

    text: str
    ids: np.ndarray
    bits: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    layers: list[dict]
    ranking: dict = field(default_factory=dict)
    topic: str | None = None  # a conditioned model's topic the text was read under ("unknown": none)
    whole: dict = field(default_factory=dict)


def check_text(text: str, max_chars: int = MAX_CHARS, key: str = "text") -> None:
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 2:
        raise UserError(f"max_chars={max_chars!r} must be a whole number >= 2")
    if len(text) < 2:
        raise UserError(
            f"{key} has {len(text)} character{'s' * (len(text) != 1)}; give at least 2 (the first has "
            "no context, so it is not scored)"
        )
    if len(text) > max_chars:
        raise UserError(
            f"{key} has {len(text):,} characters, more than max_chars={max_chars}; inspect a part of it "
            "or raise max_chars (every character is scored; the page shows the first ones)"
        )


def inspect_text(
    net: CharRNN,
    vocab: Vocabulary,
    text: str,
    max_chars: int = MAX_CHARS,
    top_units: int = 5,
    key: str = "text",
    topic: int | None = None,
) -> Inspection:
    """Score ``text`` from a fresh state (all of it, in chunks), record every layer's states for the
    characters the page shows (the first ``page_chars``), and rank the units by the properties of
    those. Characters outside the vocabulary read as id 0, as in evaluation. ``topic``: the topic id
    of a conditioned model, for the whole text (``None``: unknown, the unconditioned model)."""
    check_text(text, max_chars, key)
    shown = min(len(text), page_chars(net))
    was_training = net.training
    net.eval()
    try:
        device = next(net.parameters()).device
        ids = torch.from_numpy(vocab.encode(text).astype(np.int64)).to(device)
        bits, top_ids, top_probs = surprisal(net, ids, TOP_K, topic, top_chars=shown)
        layers = [
            {
                k: (v.cpu().numpy() if k != "gates" else {g: a.cpu().numpy() for g, a in v.items()})
                for k, v in layer.items()
            }
            for layer in layer_states(net, ids[:shown], topic)
        ]
    finally:
        net.train(was_training)
    ids = ids.cpu().numpy()
    whole = {
        "chars": len(text),
        "total_bits": float(np.nansum(bits, dtype=np.float64)),
        "mean_bits": float(np.nanmean(bits, dtype=np.float64)),
        "unknown": int((ids == 0).sum()),
    }
    inspection = Inspection(text[:shown], ids[:shown], bits[:shown], top_ids, top_probs, layers, whole=whole)
    inspection.ranking = rank_units(layers, text_properties(text[:shown]), top_units)
    return inspection


def text_properties(text: str) -> dict[str, np.ndarray]:
    """Simple, named properties of ``text`` at each character (after reading it), for ``rank_units``:
    inside a quotation ("..." or “...”), inside brackets ((), [], {}), the position in the line
    (characters since the last newline), the first letter of a word, an upper-case letter."""
    quoted, depth, in_quote, in_bracket, column, columns = 0, 0, np.zeros(len(text)), np.zeros(len(text)), 0, []
    for t, ch in enumerate(text):
        if ch in QUOTES:
            quoted = (1 - quoted) if QUOTES[ch] == 0 else max(0, quoted + QUOTES[ch])
        if ch in BRACKETS:
            depth = max(0, depth + BRACKETS[ch])
        in_quote[t], in_bracket[t] = quoted > 0, depth > 0
        column = 0 if ch == "\n" else column + 1
        columns.append(column)
    letters = np.array([ch.isalpha() for ch in text])
    start = letters & ~np.concatenate([[False], letters[:-1]])
    upper = np.array([ch.isupper() for ch in text])
    return dict(
        zip(
            PROPERTIES, (in_quote, in_bracket, np.array(columns, dtype=float), start.astype(float), upper.astype(float))
        )
    )


def rank_units(layers: list[dict], properties: dict[str, np.ndarray], top: int = 5) -> dict:
    """For each property, the ``top`` units (layer, state ``h`` or ``c``, unit) whose activation over the
    text correlates most with it (Pearson r, by its absolute value), or a note when the property does
    not vary in this text (e.g. no quotes), so no unit can track it."""
    ranking = {}
    for name, prop in properties.items():
        if prop.std() == 0:
            ranking[name] = {"units": [], "note": "does not vary in this text, so no unit can track it"}
            continue
        p = (prop - prop.mean()) / prop.std()
        found = []
        for index, layer in enumerate(layers):
            for kind in ("c", "h"):
                if kind not in layer:
                    continue
                a = layer[kind].astype(np.float64)
                std = a.std(axis=0)
                r = np.where(std > 0, ((a - a.mean(axis=0)) * p[:, None]).mean(axis=0) / np.where(std > 0, std, 1), 0)
                found += [(abs(r[u]), index, kind, int(u), float(r[u])) for u in np.argsort(-np.abs(r))[:top]]
        found.sort(key=lambda f: -f[0])
        ranking[name] = {
            "units": [{"layer": i, "kind": k, "unit": u, "r": round(r, 4)} for _, i, k, u, r in found[:top]],
            "note": None,
        }
    return ranking


def gate_saturation(layers: list[dict]) -> list[dict]:
    """Per layer and sigmoid gate, the fraction of characters at which each unit's gate is left
    (< 0.1) or right (> 0.9) saturated, as in Karpathy, Johnson & Fei-Fei (2015), figure 3."""
    low, high = SATURATED
    return [
        {name: {"left": (g < low).mean(axis=0), "right": (g > high).mean(axis=0)} for name, g in layer["gates"].items()}
        for layer in layers
    ]

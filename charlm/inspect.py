"""See what a model learned: per-character surprisal, the model's top guesses, hidden units and
gate statistics, as one self-contained HTML page, and as a TensorBoard image at every validation
(``charlm.callbacks.SurprisalImage``).

    python -m charlm.inspect ckpt=PATH text_file=some.txt      # writes inspect.html beside the checkpoint
    python -m charlm.inspect ckpt=PATH 'text="The market fell ..."'

Scores come from the model's own forward pass, so they are what evaluation computes. ``nn.LSTM``,
``nn.GRU`` and ``nn.RNN`` return the hidden states of the last layer only, and no gates, so the
states of every layer at every character are computed here by running each layer's own weights
step by step (``layer_states``; tests check it equals the torch module's output).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from charlm.errors import UserError
from charlm.model import CharRNN
from charlm.vocabulary import Vocabulary

MAX_CHARS = 20_000  # the page keeps every unit's activation at every character: ~2 bytes each per state
TOP_K = 5
SATURATED = (0.1, 0.9)  # a gate below / above these is left / right saturated (Karpathy, Johnson & Fei-Fei 2015)
SIGMOID_GATES = {"lstm": ("input", "forget", "output"), "gru": ("reset", "update"), "rnn": ()}
# Surprisal colour scale, bits -> RGB: white (predicted) through yellow and orange to dark red (surprised)
BITS_STOPS = [(0.0, (255, 255, 255)), (1.0, (255, 244, 170)), (3.0, (255, 184, 77)), (5.0, (235, 80, 50)),
              (8.0, (140, 20, 40))]
PROPERTIES = ("inside quotes", "inside brackets", "position in line", "start of word", "upper case")
QUOTES = {'"': 0, "\u201c": 1, "\u201d": -1, "\u00ab": 1, "\u00bb": -1}  # 0: toggles
BRACKETS = {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}


def cell_of(net: CharRNN) -> str:
    return {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}[type(net.rnn)]


def _inputs(net: CharRNN, ids: torch.Tensor) -> torch.Tensor:
    """What the first recurrent layer reads for ``ids`` (as ``CharRNN.forward`` builds it)."""
    if net.embedding is not None:
        return net.embedding(ids)
    return F.one_hot(ids, net.vocab_size).to(net.head.weight.dtype)


@torch.no_grad()
def layer_states(net: CharRNN, ids: torch.Tensor) -> list[dict]:
    """For ``ids [T]`` read from a zero state, per layer: ``h [T, H]`` (hidden state after each
    character), ``c [T, H]`` (LSTM cell state, else absent) and ``gates`` {name: [T, H]} (the sigmoid
    gates: LSTM input/forget/output, GRU reset/update; none for a plain RNN).

    The input projection of all steps is one matrix product; then one small step per character,
    vectorized across units, with torch's gate order and equations (LSTM i, f, g, o; GRU r, z, n).
    Dropout between layers is off, as in evaluation."""
    rnn, cell = net.rnn, cell_of(net)
    x, size = _inputs(net, ids), rnn.hidden_size
    layers = []
    for k in range(rnn.num_layers):
        w_hh = getattr(rnn, f"weight_hh_l{k}")
        b_ih = getattr(rnn, f"bias_ih_l{k}") if rnn.bias else 0
        b_hh = getattr(rnn, f"bias_hh_l{k}") if rnn.bias else torch.zeros(w_hh.shape[0], dtype=x.dtype, device=x.device)
        projected = x @ getattr(rnn, f"weight_ih_l{k}").T + b_ih
        steps = len(ids)
        h = x.new_zeros(size)
        hs = x.new_empty(steps, size)
        if cell == "lstm":
            c = x.new_zeros(size)
            cs, gates = x.new_empty(steps, size), x.new_empty(steps, 3, size)
            for t in range(steps):
                a = torch.addmv(b_hh, w_hh, h).add_(projected[t])
                s = torch.sigmoid(a.view(4, size))  # i, f, g (unused: tanh below), o
                c = s[1] * c + s[0] * torch.tanh(a[2 * size:3 * size])
                h = s[3] * torch.tanh(c)
                hs[t], cs[t], gates[t] = h, c, s[[0, 1, 3]]
            layers.append({"h": hs, "c": cs, "gates": dict(zip(SIGMOID_GATES["lstm"], gates.unbind(1)))})
        elif cell == "gru":
            gates = x.new_empty(steps, 2, size)
            for t in range(steps):
                hp = torch.addmv(b_hh, w_hh, h)
                rz = torch.sigmoid(projected[t, :2 * size] + hp[:2 * size]).view(2, size)
                n = torch.tanh(projected[t, 2 * size:] + rz[0] * hp[2 * size:])
                h = n + rz[1] * (h - n)  # (1 - z) * n + z * h
                hs[t], gates[t] = h, rz
            layers.append({"h": hs, "gates": dict(zip(SIGMOID_GATES["gru"], gates.unbind(1)))})
        else:
            act = torch.tanh if rnn.nonlinearity == "tanh" else torch.relu
            for t in range(steps):
                h = act(torch.addmv(b_hh, w_hh, h).add_(projected[t]))
                hs[t] = h
            layers.append({"h": hs, "gates": {}})
        x = hs
    return layers


@torch.no_grad()
def surprisal(net: CharRNN, ids: torch.Tensor, top_k: int = 0):
    """Bits the model pays for each character of ``ids [T]`` read from a zero state (``nan`` for the
    first, which has no context), from the model's own forward pass; with ``top_k`` also the ids and
    probabilities of its ``top_k`` guesses for each character (row 0: -1 and 0)."""
    logits, _ = net(ids[None])
    logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
    bits = torch.full((len(ids),), float("nan"))
    bits[1:] = (-logp.gather(1, ids[1:, None])[:, 0] / math.log(2)).cpu()
    if not top_k:
        return bits.numpy()
    values, top = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
    top_ids = torch.full((len(ids), top.shape[1]), -1, dtype=torch.long)
    top_probs = torch.zeros(len(ids), top.shape[1])
    top_ids[1:], top_probs[1:] = top.cpu(), values.exp().cpu()
    return bits.numpy(), top_ids.numpy(), top_probs.numpy()


@dataclass
class Inspection:
    """What the page shows of one text: its characters and ids, the bits paid for each, the top guesses,
    every layer's states and gates (numpy, ``[T, H]``), and the units that best track each property."""
    text: str
    ids: np.ndarray
    bits: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    layers: list[dict]
    ranking: dict = field(default_factory=dict)


def check_text(text: str, max_chars: int = MAX_CHARS, key: str = "text") -> None:
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 2:
        raise UserError(f"max_chars={max_chars!r} must be a whole number >= 2")
    if len(text) < 2:
        raise UserError(f"{key} has {len(text)} character{'s' * (len(text) != 1)}; give at least 2 (the first has "
                        "no context, so it is not scored)")
    if len(text) > max_chars:
        raise UserError(f"{key} has {len(text):,} characters, more than max_chars={max_chars}; inspect a part of it "
                        "or raise max_chars (the page keeps every unit's activation at every character)")


def inspect_text(net: CharRNN, vocab: Vocabulary, text: str, max_chars: int = MAX_CHARS, top_units: int = 5,
                 key: str = "text") -> Inspection:
    """Score ``text`` from a zero state and record every layer's states, and rank the units by the
    properties of the text (``rank_units``). Characters outside the vocabulary read as id 0, as in
    evaluation."""
    check_text(text, max_chars, key)
    was_training = net.training
    net.eval()
    try:
        device = next(net.parameters()).device
        ids = torch.from_numpy(vocab.encode(text).astype(np.int64)).to(device)
        bits, top_ids, top_probs = surprisal(net, ids, TOP_K)
        layers = [{k: (v.cpu().numpy() if k != "gates" else {g: a.cpu().numpy() for g, a in v.items()})
                   for k, v in layer.items()} for layer in layer_states(net, ids)]
    finally:
        net.train(was_training)
    inspection = Inspection(text, ids.cpu().numpy(), bits, top_ids, top_probs, layers)
    inspection.ranking = rank_units(layers, text_properties(text), top_units)
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
    return dict(zip(PROPERTIES, (in_quote, in_bracket, np.array(columns, dtype=float), start.astype(float),
                                 upper.astype(float))))


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
        ranking[name] = {"units": [{"layer": i, "kind": k, "unit": u, "r": round(r, 4)} for _, i, k, u, r in found[:top]],
                         "note": None}
    return ranking


def gate_saturation(layers: list[dict]) -> list[dict]:
    """Per layer and sigmoid gate, the fraction of characters at which each unit's gate is left
    (< 0.1) or right (> 0.9) saturated, as in Karpathy, Johnson & Fei-Fei (2015), figure 3."""
    low, high = SATURATED
    return [{name: {"left": (g < low).mean(axis=0), "right": (g > high).mean(axis=0)}
             for name, g in layer["gates"].items()} for layer in layers]


def bits_colors(bits: np.ndarray) -> np.ndarray:
    """RGB (uint8, ``[..., 3]``) of each surprisal on the ``BITS_STOPS`` scale; grey where ``nan``."""
    xs = [s for s, _ in BITS_STOPS]
    clipped = np.nan_to_num(np.clip(bits, 0, xs[-1]), nan=0.0)
    rgb = np.stack([np.interp(clipped, xs, [c[i] for _, c in BITS_STOPS]) for i in range(3)], axis=-1)
    rgb[np.isnan(bits)] = 225
    return rgb.round().astype(np.uint8)


# --- the page


def _quantized(a: np.ndarray) -> dict:
    """A ``[T, H]`` state as int8 per unit (value = q * scale / 127), base64, row-major: about 1.4 bytes of
    page per value, where JSON numbers take about 7."""
    scale = np.abs(a).max(axis=0)
    q = np.round(a / np.where(scale > 0, scale, 1) * 127).astype(np.int8)
    return {"scale": [round(float(s), 5) for s in scale], "q": base64.b64encode(q.tobytes()).decode("ascii")}


def page_data(inspection: Inspection, vocab: Vocabulary, title: str, model: dict) -> dict:
    """Everything the page shows, as JSON-ready data (what ``page_html`` embeds and tests read back)."""
    bits = inspection.bits
    scored = bits[1:]
    states = [{"layer": i, "kind": kind, **_quantized(layer[kind])}
              for i, layer in enumerate(inspection.layers) for kind in ("h", "c") if kind in layer]
    return {
        "title": title, "model": model, "vocab": vocab.chars, "chars": list(inspection.text),
        "unknown": int((inspection.ids == 0).sum()),
        "bits": [None] + [round(float(b), 4) for b in scored],
        "top_ids": inspection.top_ids.tolist(),
        "top_probs": [[round(float(p), 5) for p in row] for row in inspection.top_probs],
        "total_bits": round(float(scored.sum()), 3), "mean_bits": round(float(scored.mean()), 4),
        "hidden_size": int(inspection.layers[0]["h"].shape[1]), "layers": len(inspection.layers),
        "states": states, "ranking": inspection.ranking,
        "scale": {"stops": [[s, list(c)] for s, c in BITS_STOPS]},
    }


def gate_plot_svg(layers: list[dict]) -> str:
    """Per layer, a scatter of every unit's gates: x = fraction of time left saturated (< 0.1),
    y = fraction right saturated (> 0.9), one colour per gate. Inline SVG: the page needs no library."""
    stats = gate_saturation(layers)
    if not any(stats):
        return "<p class=note>A plain RNN has no gates.</p>"
    colors = {"input": "#1f77b4", "forget": "#2ca02c", "output": "#d62728", "reset": "#9467bd", "update": "#ff7f0e"}
    size, pad, plots = 200, 34, []
    for index, layer in enumerate(stats):
        marks = []
        for name, s in layer.items():
            for x, y in zip(s["left"], s["right"]):
                marks.append(f'<circle cx="{pad + x * size:.1f}" cy="{pad + (1 - y) * size:.1f}" r="2.2" '
                             f'fill="{colors[name]}" fill-opacity="0.55"/>')
        legend = "".join(f'<text x="{pad + 6}" y="{pad + 14 + 14 * i}" fill="{colors[n]}" font-size="11">{n} gate</text>'
                         for i, n in enumerate(layer))
        plots.append(
            f'<svg width="{size + pad + 10}" height="{size + pad + 30}" role="img" aria-label="gate saturation, layer {index}">'
            f'<rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="#fafafa" stroke="#999"/>'
            f'<line x1="{pad}" y1="{pad + size}" x2="{pad + size}" y2="{pad}" stroke="#ddd"/>'
            f'<text x="{pad + size / 2}" y="16" text-anchor="middle" font-size="12" font-weight="bold">layer {index}</text>'
            f'{"".join(marks)}{legend}'
            f'<text x="{pad}" y="{pad + size + 14}" font-size="10">0</text>'
            f'<text x="{pad + size}" y="{pad + size + 14}" font-size="10" text-anchor="end">1</text>'
            f'<text x="{pad + size / 2}" y="{pad + size + 26}" font-size="11" text-anchor="middle">fraction left-saturated (&lt; {SATURATED[0]})</text>'
            f'<text x="{pad - 4}" y="{pad + 4}" font-size="10" text-anchor="end">1</text>'
            f'<text transform="translate(12,{pad + size / 2}) rotate(-90)" font-size="11" text-anchor="middle">right-saturated (&gt; {SATURATED[1]})</text>'
            "</svg>")
    return "".join(plots)


def page_html(inspection: Inspection, vocab: Vocabulary, title: str, model: dict) -> str:
    """The page: one HTML file with its data, styles and script inline (no server, no network)."""
    data = json.dumps(page_data(inspection, vocab, title, model), ensure_ascii=False, separators=(",", ":"))
    data = data.replace("</", "<\\/")  # nothing in the data can close its <script> element
    return (_TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__GATES__", gate_plot_svg(inspection.layers))
            .replace("__DATA__", data))


def read_page_data(page: str) -> dict:
    """The data embedded in a page written by ``page_html`` (for tests and tools)."""
    start = page.index('<script id="data" type="application/json">') + len('<script id="data" type="application/json">')
    return json.loads(page[start:page.index("</script>", start)].replace("<\\/", "</"))


def write_page(module, text: str, out: Path, title: str, max_chars: int = MAX_CHARS, top_units: int = 5,
               key: str = "text") -> Inspection:
    """Inspect ``text`` with a ``CharLM`` and write the page to ``out`` atomically (a temporary file, then a
    rename: a failed run leaves no half-written page)."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        f = open(tmp, "w", encoding="utf-8")  # before the work: an unwritable out= is told at once
    except OSError as err:
        raise UserError(f"out={out} cannot be written ({err.strerror}); pass a path in a folder you can write to") from None
    try:
        with f:
            inspection = inspect_text(module.net, module.vocab, text, max_chars, top_units, key)
            f.write(page_html(inspection, module.vocab, title, dict(module.hparams["model"])))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return inspection


def read_text_file(path: str | Path, max_chars: int = MAX_CHARS) -> str:
    """The UTF-8 text of ``path``, refused with one line when missing, not UTF-8, or over ``max_chars``
    characters (checked from the size first, so a huge file is not read)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"text_file={path} does not exist; pass a UTF-8 text file")
    if path.stat().st_size > 4 * max_chars:  # a character is at most 4 bytes in UTF-8
        raise UserError(f"text_file={path} has more than max_chars={max_chars} characters; inspect a part of it "
                        "or raise max_chars (the page keeps every unit's activation at every character)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"text_file={path} is not UTF-8 (byte {err.start}); convert it, e.g. iconv -t utf-8") from None


# --- the TensorBoard image

_GLYPHS: dict[str, set[int]] = {}


def _font():
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans Mono"))
    if path not in _GLYPHS:
        _GLYPHS[path] = set(FT2Font(path).get_charmap())
    return path, _GLYPHS[path]


def surprisal_image(chars: list[str], bits: np.ndarray, columns: int = 48, caption: str = "",
                    font_px: int = 15) -> np.ndarray:
    """An RGB image (``[H, W, 3]`` uint8) of ``chars`` in rows of ``columns`` cells, each on a background
    coloured by its surprisal (``BITS_STOPS``), with a legend and ``caption`` below. A newline shows
    as ``↵`` and ends its row. Rendered with matplotlib (Agg, no pyplot state): about 460 pixels wide
    at the default settings, so TensorBoard's card shows it at full size, readable."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    path, glyphs = _font()
    font = FontProperties(fname=path, size=font_px)
    cell_w, cell_h, margin = 0.6021 * font_px, round(1.35 * font_px), 6  # DejaVu Sans Mono's advance: 0.602 em
    rows, colors, row, row_colors = [], [], [], []
    rgb = bits_colors(np.asarray(bits, dtype=float))
    for ch, color in zip(chars, rgb):
        shown = "↵" if ch == "\n" else ch if ord(ch) in glyphs and ch.isprintable() else "?"
        row.append(shown)
        row_colors.append(color)
        if ch == "\n" or len(row) == columns:
            rows.append(row), colors.append(row_colors)
            row, row_colors = [], []
    if row:
        rows.append(row), colors.append(row_colors)
    grid = np.full((len(rows), columns, 3), 255, dtype=np.uint8)
    for r, row_colors in enumerate(colors):
        grid[r, :len(row_colors)] = row_colors
    width = int(np.ceil(2 * margin + columns * cell_w))
    legend_h = 2 * cell_h + 4
    height = 2 * margin + len(rows) * cell_h + legend_h
    fig = Figure(figsize=(width / 72, height / 72), dpi=72)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width), ax.set_ylim(height, 0), ax.axis("off")
    ax.imshow(grid, extent=(margin, margin + columns * cell_w, margin + len(rows) * cell_h, margin),
              interpolation="nearest", aspect="auto")
    for r, row in enumerate(rows):
        ax.text(margin, margin + (r + 0.5) * cell_h, "".join(row), fontproperties=font, va="center_baseline",
                ha="left", parse_math=False)
    # legend: the colour scale in bits, and the caption
    top = margin + len(rows) * cell_h + 6
    scale = np.linspace(0, BITS_STOPS[-1][0], 256)
    bar_w = width * 0.5
    ax.imshow(bits_colors(scale)[None], extent=(margin, margin + bar_w, top + cell_h * 0.6, top), aspect="auto")
    for b in range(0, int(BITS_STOPS[-1][0]) + 1, 2):
        ax.text(margin + bar_w * b / BITS_STOPS[-1][0], top + cell_h * 0.6 + 1, f"{b}{'+' if b == 8 else ''}",
                fontsize=font_px * 0.7, ha="center", va="top", parse_math=False)
    ax.text(margin + bar_w + 8, top + cell_h * 0.3, "bits of surprisal", fontsize=font_px * 0.75, va="center",
            parse_math=False)
    if caption:
        ax.text(margin, top + cell_h * 1.75, caption, fontsize=font_px * 0.75, va="center", parse_math=False)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>charlm inspect: __TITLE__</title>
<style>
 body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px 22px; color: #222; }
 h1 { font-size: 18px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 18px 0 6px; }
 .sub { color: #555; margin-bottom: 10px; }
 .bar { display: flex; flex-wrap: wrap; gap: 14px; align-items: center; margin: 8px 0; }
 #text { font: 15px/1.6 "DejaVu Sans Mono", Menlo, Consolas, monospace; white-space: pre-wrap; word-break: break-all;
         border: 1px solid #ccc; padding: 10px; max-height: 60vh; overflow-y: auto; background: #fff; }
 #text span { cursor: pointer; border-radius: 2px; }
 #text span.nl { color: #aaa; }
 #text span.sel { outline: 2px solid #000; }
 #legend { display: inline-flex; align-items: center; gap: 6px; }
 #legend canvas { border: 1px solid #aaa; }
 #tip { position: absolute; display: none; background: #fff; border: 1px solid #888; border-radius: 4px;
        box-shadow: 0 2px 8px rgba(0,0,0,.25); padding: 8px 10px; font-size: 13px; z-index: 10; min-width: 190px; }
 #tip table { border-collapse: collapse; } #tip td { padding: 1px 6px 1px 0; }
 #tip .g { font-family: monospace; background: #eee; padding: 0 4px; }
 #tip .p { display: inline-block; height: 8px; background: #4a7bd0; }
 #tip tr.hit td { font-weight: bold; }
 .units button { font: 12px monospace; margin: 2px; padding: 2px 6px; cursor: pointer; }
 .units td { padding: 2px 8px 2px 0; vertical-align: top; }
 .worst a { display: inline-block; font-family: monospace; cursor: pointer; color: #0645ad; margin: 0 14px 4px 0; white-space: pre; }
 .note { color: #777; }
 label { white-space: nowrap; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div class="sub" id="summary"></div>
<div class="bar">
 <label><input type="radio" name="mode" value="bits" checked> surprisal</label>
 <label><input type="radio" name="mode" value="unit"> hidden unit:</label>
 <label>layer <select id="layer"></select></label>
 <label>state <select id="kind"></select></label>
 <label>unit <input id="unit" type="number" min="0" value="0" style="width:5em"></label>
 <span id="legend"><canvas id="scale" width="200" height="12"></canvas><span id="scalelabel"></span></span>
</div>
<div id="text"></div>
<div id="tip"></div>
<h2>Most surprising characters</h2>
<div class="worst" id="worst"></div>
<h2>Units that track properties of this text</h2>
<div class="sub">Pearson correlation of each unit's activation with the property over this text (c = LSTM cell
 state, h = hidden state); click a unit to colour the text by it (blue negative, red positive).</div>
<table class="units" id="units"></table>
<h2>Gate saturation</h2>
<div class="sub">Each dot is one unit's gate: how often it is nearly closed (&lt; 0.1, x) or nearly open (&gt; 0.9, y)
 over this text. Right-saturated forget gates keep information for long (Karpathy, Johnson &amp; Fei-Fei 2015).</div>
<div id="gates">__GATES__</div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const N = D.chars.length, H = D.hidden_size, MAXB = D.scale.stops[D.scale.stops.length - 1][0];
const textEl = document.getElementById("text"), tip = document.getElementById("tip");
const fmt = (x, d) => x.toFixed(d);
const show = c => c === "\n" ? "\u21b5" : c === " " ? "\u2423" : c === "\t" ? "\u21e5" : c;
function bitsColor(b) {
  if (b === null) return "rgb(225,225,225)";
  const s = D.scale.stops; b = Math.min(Math.max(b, 0), MAXB);
  for (let i = 1; i < s.length; i++) if (b <= s[i][0]) {
    const t = (b - s[i-1][0]) / (s[i][0] - s[i-1][0]);
    const c = s[i-1][1].map((v, k) => Math.round(v + t * (s[i][1][k] - v)));
    return `rgb(${c})`;
  }
  return `rgb(${s[s.length-1][1]})`;
}
function unitColor(v) {  // v in [-1, 1]: blue - white - red
  const a = Math.min(1, Math.abs(v)), w = Math.round(255 * (1 - a));
  return v >= 0 ? `rgb(255,${w},${w})` : `rgb(${w},${w},255)`;
}
const states = D.states.map(s => {
  const raw = atob(s.q), q = new Int8Array(raw.length);
  for (let i = 0; i < raw.length; i++) q[i] = raw.charCodeAt(i) << 24 >> 24;
  return {layer: s.layer, kind: s.kind, scale: s.scale, q};
});
const spans = [];
const frag = document.createDocumentFragment();
D.chars.forEach((c, i) => {
  const sp = document.createElement("span");
  sp.textContent = c === "\n" ? "\u21b5\n" : c;
  if (c === "\n") sp.className = "nl";
  sp.dataset.i = i; spans.push(sp); frag.appendChild(sp);
});
textEl.appendChild(frag);
document.getElementById("summary").textContent =
  `${N.toLocaleString()} characters, ${D.total_bits.toLocaleString()} bits in all, ` +
  `mean ${fmt(D.mean_bits, 3)} bits per character (the first character has no context and is not scored)` +
  (D.unknown ? `; ${D.unknown} characters are outside the model's vocabulary` : "") +
  ` \u2014 ${D.model.cell} \u00d7 ${D.layers} layer(s) of ${H}, embedding ${D.model.embedding_dim || "one-hot"}`;
const layerSel = document.getElementById("layer"), kindSel = document.getElementById("kind"),
      unitIn = document.getElementById("unit");
for (let l = 0; l < D.layers; l++) layerSel.add(new Option(l, l));
[...new Set(states.map(s => s.kind))].forEach(k => kindSel.add(new Option(k === "c" ? "cell (c)" : "hidden (h)", k)));
unitIn.max = H - 1;
let mode = "bits";
function current() {
  return states.find(s => s.layer == layerSel.value && s.kind == kindSel.value) || states.find(s => s.layer == layerSel.value);
}
function activation(i) {
  const s = current(), u = Math.min(Math.max(+unitIn.value || 0, 0), H - 1);
  return s.q[i * H + u] / 127;  // in [-1, 1] of this unit's largest magnitude
}
function paint() {
  const cv = document.getElementById("scale"), ctx = cv.getContext("2d");
  for (let x = 0; x < cv.width; x++) {
    ctx.fillStyle = mode === "bits" ? bitsColor(x / (cv.width - 1) * MAXB) : unitColor(x / (cv.width - 1) * 2 - 1);
    ctx.fillRect(x, 0, 1, cv.height);
  }
  if (mode === "bits") {
    document.getElementById("scalelabel").textContent = `0 \u2026 ${MAXB}+ bits of surprisal (grey: not scored)`;
    spans.forEach((sp, i) => sp.style.background = bitsColor(D.bits[i]));
  } else {
    const s = current(), u = Math.min(Math.max(+unitIn.value || 0, 0), H - 1);
    document.getElementById("scalelabel").textContent =
      `layer ${s.layer} ${s.kind}[${u}]: \u2212${fmt(s.scale[u], 3)} \u2026 +${fmt(s.scale[u], 3)}`;
    spans.forEach((sp, i) => sp.style.background = unitColor(activation(i)));
  }
}
function openTip(i) {
  spans.forEach(s => s.classList.remove("sel"));
  const sp = spans[i]; sp.classList.add("sel");
  let h = `<b>#${i}</b> <span class="g">${esc(show(D.chars[i]))}</span> `;
  if (D.bits[i] === null) h += "<br>first character: no context, not scored";
  else {
    h += ` <b>${fmt(D.bits[i], 2)} bits</b> (p = ${fmt(Math.pow(2, -D.bits[i]), 4)})<table>`;
    D.top_ids[i].forEach((id, k) => {
      const p = D.top_probs[i][k], hit = D.vocab[id] === D.chars[i];
      h += `<tr${hit ? ' class="hit"' : ""}><td>${k + 1}.</td><td><span class="g">${esc(show(D.vocab[id]))}</span></td>` +
           `<td>${fmt(p, 3)}</td><td><span class="p" style="width:${Math.round(p * 80)}px"></span></td></tr>`;
    });
    h += "</table>";
  }
  if (mode === "unit") { const s = current(), u = +unitIn.value; h += `<div>layer ${s.layer} ${s.kind}[${u}] = ${fmt(activation(i) * s.scale[u], 3)}</div>`; }
  tip.innerHTML = h; tip.style.display = "block";
  const r = sp.getBoundingClientRect();
  tip.style.left = Math.max(4, Math.min(r.left + window.scrollX, window.scrollX + document.documentElement.clientWidth - tip.offsetWidth - 8)) + "px";
  tip.style.top = (r.bottom + window.scrollY + 4) + "px";
}
function esc(s) { return s.replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c])); }
textEl.addEventListener("mouseover", e => { if (e.target.dataset.i !== undefined) openTip(+e.target.dataset.i); });
textEl.addEventListener("click", e => { if (e.target.dataset.i !== undefined) openTip(+e.target.dataset.i); });
textEl.addEventListener("scroll", () => tip.style.display = "none");
document.addEventListener("click", e => { if (!textEl.contains(e.target) && !tip.contains(e.target) && !e.target.closest(".worst")) tip.style.display = "none"; });
document.querySelectorAll('input[name=mode]').forEach(r => r.addEventListener("change", () => { mode = r.value; paint(); }));
[layerSel, kindSel, unitIn].forEach(el => el.addEventListener("change", () => { setMode("unit"); }));
function setMode(m) { mode = m; document.querySelector(`input[name=mode][value=${m}]`).checked = true; paint(); }
function goto(i) { spans[i].scrollIntoView({block: "center"}); openTip(i); }
// the most surprising characters, with some text before each
const worst = D.bits.map((b, i) => [b, i]).filter(x => x[0] !== null).sort((a, b) => b[0] - a[0]).slice(0, 12);
const worstEl = document.getElementById("worst");
worst.forEach(([b, i]) => {
  const a = document.createElement("a");
  a.textContent = `\u2026${D.chars.slice(Math.max(0, i - 12), i).map(show).join("")}[${show(D.chars[i])}] ${fmt(b, 1)}`;
  a.title = `character #${i}: ${fmt(b, 2)} bits`;
  a.onclick = () => { setMode("bits"); goto(i); };
  worstEl.appendChild(a);
});
const unitsEl = document.getElementById("units");
Object.entries(D.ranking).forEach(([name, r]) => {
  const tr = unitsEl.insertRow(), td = tr.insertCell();
  td.textContent = name; const cell = tr.insertCell();
  if (!r.units.length) { cell.innerHTML = `<span class="note">${esc(r.note)}</span>`; return; }
  r.units.forEach(u => {
    const b = document.createElement("button");
    b.textContent = `L${u.layer} ${u.kind}[${u.unit}] r=${u.r >= 0 ? "+" : ""}${fmt(u.r, 2)}`;
    b.onclick = () => selectUnit(u.layer, u.kind, u.unit);
    cell.appendChild(b);
  });
});
function selectUnit(l, k, u) { layerSel.value = l; kindSel.value = k; unitIn.value = u; setMode("unit"); }
// #char=N opens the tooltip of character N; #unit=L.k.U colours the text by that unit (links, screenshots)
function fromHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.has("unit")) { const [l, k, u] = h.get("unit").split("."); selectUnit(+l, k, +u); } else paint();
  if (h.has("char")) goto(Math.min(Math.max(+h.get("char"), 0), N - 1));
}
window.addEventListener("hashchange", fromHash);
fromHash();
</script>
</body>
</html>
"""


def run(cfg) -> tuple[Path, Inspection]:
    """What ``python -m charlm.inspect`` does with its config: check it, load the checkpoint, write the page."""
    from charlm.module import load_checkpoint

    if not cfg.ckpt:
        raise UserError("ckpt is not given; pass ckpt=outputs/runs/<run>/checkpoints/best.ckpt")
    if (cfg.text is None) == (cfg.text_file is None):
        raise UserError("give the text to inspect as text_file=FILE or 'text=\"...\"' (one of them)")
    if isinstance(cfg.max_chars, bool) or not isinstance(cfg.max_chars, int) or cfg.max_chars < 2:
        raise UserError(f"max_chars={cfg.max_chars!r} must be a whole number >= 2")
    if cfg.text_file is not None:
        text, key, source = read_text_file(cfg.text_file, cfg.max_chars), f"text_file={cfg.text_file}", cfg.text_file
    else:
        text, key, source = str(cfg.text), "text", "text"
    check_text(text, cfg.max_chars, key)
    module = load_checkpoint(cfg.ckpt)
    try:
        module = module.to(cfg.device)
    except (RuntimeError, AssertionError) as err:
        raise UserError(f"device={cfg.device} is not usable here ({str(err).splitlines()[0]}); use cpu, "
                        "or cuda on a machine with a GPU") from None
    out = Path(cfg.out).expanduser() if cfg.out else Path(cfg.ckpt).expanduser().parent / "inspect.html"
    inspection = write_page(module, text, out, f"{Path(source).name} \u2014 {Path(cfg.ckpt).name}",
                            cfg.max_chars, cfg.top_units, key)
    return out, inspection


def _main() -> None:
    import hydra

    from charlm.config import CONF_DIR
    from charlm.errors import exit_on_user_error

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="inspect")
    def main(cfg) -> None:
        with exit_on_user_error():
            out, inspection = run(cfg)
            scored = inspection.bits[1:]
            print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {len(inspection.text):,} characters, "
                  f"mean {scored.mean():.4f} bits per character; open it in a browser")

    main()


if __name__ == "__main__":
    _main()

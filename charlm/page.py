"""Drawing an inspection (``charlm.activations``): the self-contained HTML page of
``python -m charlm.inspect`` (the data embedded as JSON, no server, no network) and the surprisal
image that ``charlm.callbacks.SurprisalImage`` writes to TensorBoard."""

from __future__ import annotations

import base64
import html
import json

import numpy as np

from charlm.activations import SATURATED, Inspection, gate_saturation
from charlm.vocabulary import Vocabulary

# Surprisal colour scale, bits -> RGB: white (predicted) through yellow and orange to dark red (surprised)
BITS_STOPS = [
    (0.0, (255, 255, 255)),
    (1.0, (255, 244, 170)),
    (3.0, (255, 184, 77)),
    (5.0, (235, 80, 50)),
    (8.0, (140, 20, 40)),
]


def bits_colors(bits: np.ndarray) -> np.ndarray:
    """RGB (uint8, ``[..., 3]``) of each surprisal on the ``BITS_STOPS`` scale; grey where ``nan``."""
    xs = [s for s, _ in BITS_STOPS]
    clipped = np.nan_to_num(np.clip(bits, 0, xs[-1]), nan=0.0)
    rgb = np.stack([np.interp(clipped, xs, [c[i] for _, c in BITS_STOPS]) for i in range(3)], axis=-1)
    rgb[np.isnan(bits)] = 225
    return rgb.round().astype(np.uint8)


def _quantized(a: np.ndarray) -> dict:
    """A ``[T, H]`` state as int8 per unit (value = q * scale / 127), base64, row-major: about 1.4 bytes of
    page per value, where JSON numbers take about 7."""
    scale = np.abs(a).max(axis=0)
    q = np.round(a / np.where(scale > 0, scale, 1) * 127).astype(np.int8)
    return {"scale": [round(float(s), 5) for s in scale], "q": base64.b64encode(q.tobytes()).decode("ascii")}


def page_data(inspection: Inspection, vocab: Vocabulary, title: str, model: dict) -> dict:
    """Everything the page shows, as JSON-ready data (what ``page_html`` embeds and tests read back)."""
    scored = inspection.bits[1:]
    whole = inspection.whole or {
        "chars": len(inspection.text),
        "total_bits": float(scored.sum()),
        "mean_bits": float(scored.mean()),
        "unknown": int((inspection.ids == 0).sum()),
    }
    states = [
        {"layer": i, "kind": kind, **_quantized(layer[kind])}
        for i, layer in enumerate(inspection.layers)
        for kind in ("h", "c")
        if kind in layer
    ]
    return {
        "title": title,
        "model": model,
        "vocab": vocab.chars,
        "chars": list(inspection.text),
        "total_chars": whole["chars"],  # more than the characters shown when the text was cut (page_chars)
        "unknown": whole["unknown"],
        "bits": [None] + [round(float(b), 4) for b in scored],
        "top_ids": inspection.top_ids.tolist(),
        "top_probs": [[round(float(p), 5) for p in row] for row in inspection.top_probs],
        "total_bits": round(whole["total_bits"], 3),
        "mean_bits": round(whole["mean_bits"], 4),
        "hidden_size": int(inspection.layers[0]["h"].shape[1]),
        "layers": len(inspection.layers),
        "states": states,
        "ranking": inspection.ranking,
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
                marks.append(
                    f'<circle cx="{pad + x * size:.1f}" cy="{pad + (1 - y) * size:.1f}" r="2.2" '
                    f'fill="{colors[name]}" fill-opacity="0.55"/>'
                )
        legend = "".join(
            f'<text x="{pad + 6}" y="{pad + 14 + 14 * i}" fill="{colors[n]}" font-size="11">{n} gate</text>'
            for i, n in enumerate(layer)
        )
        plots.append(
            f'<svg width="{size + pad + 10}" height="{size + pad + 30}" role="img" aria-label="gate saturation, layer {index}">'
            f'<rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="#fafafa" stroke="#999"/>'
            f'<line x1="{pad}" y1="{pad + size}" x2="{pad + size}" y2="{pad}" stroke="#ddd"/>'
            f'<text x="{pad + size / 2}" y="16" text-anchor="middle" font-size="12" font-weight="bold">layer {index}</text>'
            f"{''.join(marks)}{legend}"
            f'<text x="{pad}" y="{pad + size + 14}" font-size="10">0</text>'
            f'<text x="{pad + size}" y="{pad + size + 14}" font-size="10" text-anchor="end">1</text>'
            f'<text x="{pad + size / 2}" y="{pad + size + 26}" font-size="11" text-anchor="middle">fraction left-saturated (&lt; {SATURATED[0]})</text>'
            f'<text x="{pad - 4}" y="{pad + 4}" font-size="10" text-anchor="end">1</text>'
            f'<text transform="translate(12,{pad + size / 2}) rotate(-90)" font-size="11" text-anchor="middle">right-saturated (&gt; {SATURATED[1]})</text>'
            "</svg>"
        )
    return "".join(plots)


def page_html(inspection: Inspection, vocab: Vocabulary, title: str, model: dict) -> str:
    """The page: one HTML file with its data, styles and script inline (no server, no network)."""
    data = json.dumps(page_data(inspection, vocab, title, model), ensure_ascii=False, separators=(",", ":"))
    data = data.replace("</", "<\\/")  # nothing in the data can close its <script> element
    return (
        _TEMPLATE.replace("__TITLE__", html.escape(title))
        .replace("__GATES__", gate_plot_svg(inspection.layers))
        .replace("__DATA__", data)
    )


def read_page_data(page: str) -> dict:
    """The data embedded in a page written by ``page_html`` (for tests and tools)."""
    start = page.index('<script id="data" type="application/json">') + len('<script id="data" type="application/json">')
    return json.loads(page[start : page.index("</script>", start)].replace("<\\/", "</"))


# --- the TensorBoard image

_GLYPHS: dict[str, set[int]] = {}


def _font():
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans Mono"))
    if path not in _GLYPHS:
        _GLYPHS[path] = set(FT2Font(path).get_charmap())
    return path, _GLYPHS[path]


def surprisal_image(
    chars: list[str], bits: np.ndarray, columns: int = 48, caption: str = "", font_px: int = 15
) -> np.ndarray:
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
        grid[r, : len(row_colors)] = row_colors
    width = int(np.ceil(2 * margin + columns * cell_w))
    legend_h = 2 * cell_h + 4
    height = 2 * margin + len(rows) * cell_h + legend_h
    fig = Figure(figsize=(width / 72, height / 72), dpi=72)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width), ax.set_ylim(height, 0), ax.axis("off")
    ax.imshow(
        grid,
        extent=(margin, margin + columns * cell_w, margin + len(rows) * cell_h, margin),
        interpolation="nearest",
        aspect="auto",
    )
    for r, row in enumerate(rows):
        ax.text(
            margin,
            margin + (r + 0.5) * cell_h,
            "".join(row),
            fontproperties=font,
            va="center_baseline",
            ha="left",
            parse_math=False,
        )
    # legend: the colour scale in bits, and the caption
    top = margin + len(rows) * cell_h + 6
    scale = np.linspace(0, BITS_STOPS[-1][0], 256)
    bar_w = width * 0.5
    ax.imshow(bits_colors(scale)[None], extent=(margin, margin + bar_w, top + cell_h * 0.6, top), aspect="auto")
    for b in range(0, int(BITS_STOPS[-1][0]) + 1, 2):
        ax.text(
            margin + bar_w * b / BITS_STOPS[-1][0],
            top + cell_h * 0.6 + 1,
            f"{b}{'+' if b == 8 else ''}",
            fontsize=font_px * 0.7,
            ha="center",
            va="top",
            parse_math=False,
        )
    ax.text(
        margin + bar_w + 8,
        top + cell_h * 0.3,
        "bits of surprisal",
        fontsize=font_px * 0.75,
        va="center",
        parse_math=False,
    )
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
  (D.total_chars > N ? `the first ${N.toLocaleString()} of ${D.total_chars.toLocaleString()} characters (the most a ` +
   `page shows for this model; units and gates are of these), and over all ${D.total_chars.toLocaleString()}: `
   : `${N.toLocaleString()} characters, `) + `${D.total_bits.toLocaleString()} bits in all, ` +
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

"""The recurrent cells, one class each, found by name in ``CELLS`` (``model.cell=<name>``).

A cell class is the whole multi-layer recurrent stack of ``CharRNN`` (its ``rnn``): it owns its
construction, its state layout (``states``: h, or h and c, each ``[layers, batch, state_size]``),
its parameter count and matmul FLOPs per character (from the settings, without building it), its
per-step form (``layer_states``: every layer's h, c and gates, one character at a time, for the
inspector) and whether it trains with a parallel scan. Everything else asks the class. The classic
cells are ``nn.LSTM``/``nn.GRU``/``nn.RNN`` themselves (so their weights keep the names
``rnn.weight_ih_l0`` ... and older checkpoints load); the minimal cells (Feng et al. 2024, "Were RNNs
All We Needed?", arXiv 2410.01201) compute their gates from the input only, so one matrix product
covers every time step and the recurrence ``h_t = a_t * h_{t-1} + b_t`` is a scan (docs/training.md)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from charlm.errors import UserError

CELLS: dict[str, type[Cell]] = {}


def register(cls):
    CELLS[cls.name] = cls
    return cls


class Cell:
    """What every cell class says about itself (a mixin on an ``nn.Module``)."""

    name: ClassVar[str]
    matrices: ClassVar[int]  # weight matrices per layer (LSTM's 4 gates, GRU's 3, ...): FLOPs and parameters
    gates: ClassVar[tuple[str, ...]] = ()  # the sigmoid gates the inspector shows
    states: ClassVar[int] = 1  # 1: the state is h; 2: (h, c)
    parallel: ClassVar[bool] = False  # trains with a scan over time (True) or step by step
    options: ClassVar[dict] = {}  # the block settings this cell has (model.<key>) and their defaults
    line_style: ClassVar[str | tuple] = "-"  # its curves in the sweep summary's plots (matplotlib)

    @classmethod
    def resolve(cls, **options) -> dict:
        """The block settings with each ``None`` replaced by the cell's default; a setting this cell
        does not have is refused (it would be silently ignored)."""
        for key, value in options.items():
            if value is not None and key not in cls.options:
                have = [n for n, c in CELLS.items() if key in c.options]
                raise UserError(
                    f"model.{key}={value!r} is a setting of the {', '.join(have)} cells, not of {cls.name}; "
                    f"leave it out (null) or use model.cell={have[0]}"
                )
        return {k: default if options.get(k) is None else options[k] for k, default in cls.options.items()}

    @classmethod
    def state_size(cls, hidden_size: int, **options) -> int:
        return hidden_size

    @classmethod
    def layer_inputs(cls, input_size: int, hidden_size: int, layers: int) -> list[int]:
        return [input_size] + [hidden_size] * (layers - 1)

    def zero_state(self, batch: int, like: torch.Tensor):
        zeros = like.new_zeros(self.num_layers, batch, self.state_size(self.hidden_size, **self.settings))
        return self.pack([zeros] * self.states)

    def pack(self, tensors: list[torch.Tensor]):
        """The state from its tensors (``unpack``'s inverse): ``(h, c)`` or ``h``."""
        return tuple(tensors) if self.states == 2 else tensors[0]

    @staticmethod
    def unpack(state) -> list[torch.Tensor]:
        return list(state) if isinstance(state, tuple) else [state]


class Classic(Cell):
    """``nn.LSTM``/``nn.GRU``/``nn.RNN`` as they are: cuDNN/oneDNN kernels, one step per character."""

    settings: ClassVar[dict] = {}

    def build(self, input_size: int, hidden_size: int, layers: int, dropout: float) -> None:
        super(Cell, self).__init__(
            input_size, hidden_size, num_layers=layers, dropout=dropout if layers > 1 else 0.0, batch_first=True
        )

    @classmethod
    def parameter_count(cls, input_size: int, hidden_size: int, layers: int) -> int:
        inputs = cls.layer_inputs(input_size, hidden_size, layers)
        return sum(cls.matrices * hidden_size * (n + hidden_size + 2) for n in inputs)

    @classmethod
    def matmul_flops(cls, input_size: int, hidden_size: int, layers: int) -> int:
        """``2 * gates * hidden * (input + hidden)`` per layer (the input and recurrent projections)."""
        inputs = cls.layer_inputs(input_size, hidden_size, layers)
        return sum(2 * cls.matrices * hidden_size * (n + hidden_size) for n in inputs)

    def _weights(self, k: int, like: torch.Tensor):
        w_hh = getattr(self, f"weight_hh_l{k}")
        b_ih = getattr(self, f"bias_ih_l{k}") if self.bias else like.new_zeros(w_hh.shape[0])
        b_hh = getattr(self, f"bias_hh_l{k}") if self.bias else like.new_zeros(w_hh.shape[0])
        return getattr(self, f"weight_ih_l{k}"), w_hh, b_ih, b_hh

    @torch.no_grad()
    def layer_states(self, x: torch.Tensor, state) -> list[dict]:
        """Every layer's ``h [T, H]`` (``c`` of an LSTM) and sigmoid gates for one row ``x [T, input]``
        from ``state`` (batch 1), with torch's gate order and equations: the input projection of all
        steps is one product, then one small step per character. Dropout is off, as in evaluation."""
        initial, layers = self.unpack(state), []
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self._weights(k, x)
            projected = x @ w_ih.T + b_ih
            h, c = initial[0][k, 0], initial[-1][k, 0]
            layer = self.steps(projected, w_hh, b_hh, h, c)
            layers.append(layer)
            x = layer["h"]
        return layers


@register
class LSTM(Classic, nn.LSTM):
    name, matrices, gates, states = "lstm", 4, ("input", "forget", "output"), 2
    line_style = "-"

    def __init__(self, input_size: int, hidden_size: int, layers: int, dropout: float):
        self.build(input_size, hidden_size, layers, dropout)

    def forward(self, x: torch.Tensor, state=None):
        # One character in evaluation on a CPU (generation, the playground) runs as torch.lstm_cell per
        # layer: oneDNN, which nn.LSTM uses on a CPU, prepares every layer's weights at each call, so a
        # 2x512 LSTM generated 321 chars/s against 641 this way (benchmarks/cells.py, docs/performance.md).
        # Training and whole sequences keep oneDNN, which is fast there.
        if x.shape[1] != 1 or x.device.type != "cpu" or x.dtype != torch.float32 or self.training:
            return super().forward(x, state)
        if state is None:
            h0 = x.new_zeros(self.num_layers, x.shape[0], self.hidden_size)
            state = (h0, h0)
        hs, cs, inp = [], [], x[:, 0]
        for k in range(self.num_layers):
            h, c = torch.lstm_cell(inp, (state[0][k], state[1][k]), *self._weights(k, inp))
            hs.append(h)
            cs.append(c)
            inp = h
        return inp[:, None], (torch.stack(hs), torch.stack(cs))

    def steps(self, projected, w_hh, b_hh, h, c) -> dict:
        size, n = self.hidden_size, len(projected)
        hs, cs, gates = projected.new_empty(n, size), projected.new_empty(n, size), projected.new_empty(n, 3, size)
        for t in range(n):
            a = torch.addmv(b_hh, w_hh, h).add_(projected[t])
            s = torch.sigmoid(a.view(4, size))  # i, f, g (unused: tanh below), o
            c = s[1] * c + s[0] * torch.tanh(a[2 * size : 3 * size])
            h = s[3] * torch.tanh(c)
            hs[t], cs[t], gates[t] = h, c, s[[0, 1, 3]]
        return {"h": hs, "c": cs, "gates": dict(zip(self.gates, gates.unbind(1)))}


@register
class GRU(Classic, nn.GRU):
    name, matrices, gates = "gru", 3, ("reset", "update")
    line_style = "--"

    def __init__(self, input_size: int, hidden_size: int, layers: int, dropout: float):
        self.build(input_size, hidden_size, layers, dropout)

    def steps(self, projected, w_hh, b_hh, h, c) -> dict:
        size, n = self.hidden_size, len(projected)
        hs, gates = projected.new_empty(n, size), projected.new_empty(n, 2, size)
        for t in range(n):
            hp = torch.addmv(b_hh, w_hh, h)
            rz = torch.sigmoid(projected[t, : 2 * size] + hp[: 2 * size]).view(2, size)
            cand = torch.tanh(projected[t, 2 * size :] + rz[0] * hp[2 * size :])
            h = cand + rz[1] * (h - cand)  # (1 - z) * n + z * h
            hs[t], gates[t] = h, rz
        return {"h": hs, "gates": dict(zip(self.gates, gates.unbind(1)))}


@register
class RNN(Classic, nn.RNN):
    name, matrices, line_style = "rnn", 1, ":"

    def __init__(self, input_size: int, hidden_size: int, layers: int, dropout: float):
        self.build(input_size, hidden_size, layers, dropout)

    def steps(self, projected, w_hh, b_hh, h, c) -> dict:
        act = torch.tanh if self.nonlinearity == "tanh" else torch.relu
        hs = projected.new_empty(len(projected), self.hidden_size)
        for t in range(len(projected)):
            h = act(torch.addmv(b_hh, w_hh, h).add_(projected[t]))
            hs[t] = h
        return {"h": hs, "gates": {}}


# The scans: h_t = a_t * h_{t-1} + b_t for every t, from log a_t and log b_t ([batch, time, state]; a_t
# in (0, 1), b_t > 0, as the minimal cells make them) and h_0 ([batch, state], any sign, or None: zeros).


def scan_log(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """The paper's log-space scan (Heinsen 2023): ``cumsum`` and ``logcumsumexp``, all steps at once.
    ``h0`` enters in linear space, ``A_t * h0`` (so it may be negative, as a topic's initial state is)."""
    a_star = log_a.cumsum(1)
    h = (a_star + (log_b - a_star).logcumsumexp(1)).exp()
    return h if h0 is None else h + a_star.exp() * h0[:, None]


CHUNK = 16  # steps per chunk of scan_chunked (benchmarks/scan.py)


def scan_chunked(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor | None, chunk: int = CHUNK):
    """Linear space in chunks: within a chunk of ``chunk`` steps every h is a weighted sum of the
    chunk's b (weights ``exp`` of sums of log a over the steps between, never above 1: stable), all
    chunks at once; then one step per chunk carries the state across the chunks' boundaries."""
    batch, steps, size = log_a.shape
    n = -(-steps // chunk)
    pad = (0, 0, 0, n * chunk - steps)
    cum = F.pad(log_a, pad).view(batch, n, chunk, size).cumsum(2)
    b = F.pad(log_b.exp(), pad).view(batch, n, chunk, size)
    later = torch.ones(chunk, chunk, dtype=torch.bool, device=log_a.device).triu(1)[:, :, None]  # s > t
    decay = (cum[:, :, :, None] - cum[:, :, None]).masked_fill(later, -math.inf).exp()  # [B, n, t, s, D]
    local = (decay * b[:, :, None]).sum(3)  # each chunk's h from a zero state
    carried = log_a.new_zeros(batch, size) if h0 is None else h0
    starts = []
    for k in range(n):
        starts.append(carried)
        carried = local[:, k, -1] + cum[:, k, -1].exp() * carried
    h = local + cum.exp() * torch.stack(starts, 1)[:, :, None]
    return h.view(batch, n * chunk, size)[:, :steps]


class _Recurrence(torch.autograd.Function):
    """The sequential loop with a hand-written backward (the same recurrence run backwards for the
    gradients), so autograd records 3 tensors rather than 2 ops per step. Time-major inputs."""

    @staticmethod
    def forward(ctx, a, b, h0):
        h = torch.empty_like(b)
        prev = h0
        for t in range(len(b)):
            prev = torch.addcmul(b[t], a[t], prev, out=h[t])
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad):
        a, h, h0 = ctx.saved_tensors
        acc = torch.empty_like(grad)
        running = grad[-1]
        acc[-1] = running
        for t in range(len(grad) - 2, -1, -1):
            running = torch.addcmul(grad[t], a[t + 1], running, out=acc[t])
        before = torch.cat([h0[None], h[:-1]])
        return acc * before, acc, a[0] * acc[0]


def scan_loop(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """One small fused step per character (``_Recurrence``), exact in linear space."""
    a, b = log_a.exp().transpose(0, 1).contiguous(), log_b.exp().transpose(0, 1).contiguous()
    h0 = a.new_zeros(a.shape[1:]) if h0 is None else h0.contiguous()
    return _Recurrence.apply(a, b, h0).transpose(0, 1)


def scan_step(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """The sequential form, plain autograd (the reference the tests hold the others to)."""
    a, b = log_a.exp(), log_b.exp()
    h = a.new_zeros(a[:, 0].shape) if h0 is None else h0
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


SCANS = {"log": scan_log, "chunked": scan_chunked, "loop": scan_loop, "step": scan_step}


def default_scan(device: torch.device) -> str:
    """``model.scan=auto``: the fused loop on a CPU (the fastest there, benchmarks/scan.py), the
    log-space scan elsewhere (one kernel per op over all steps, where a GPU's speed-up comes from)."""
    return "loop" if device.type == "cpu" else "log"


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x), g(x) = x + 0.5 for x >= 0 else sigmoid(x): the paper's positive candidate state."""
    return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))


class Minimal(Cell, nn.Module):
    """A stack of minimal cells: per layer, one ``Linear`` of the input gives the gates and the
    candidate (``matrices`` blocks of ``state_size``), the scan gives every h, and with
    ``expansion != 1`` a ``Linear`` maps the state back to ``hidden_size``. Block settings (the
    public implementations' language-model block, lucidrains/minGRU-pytorch): ``residual`` adds each
    layer's input to its output above the first layer; ``norm`` puts a LayerNorm before every layer
    above the first and one after the last. Dropout acts between layers and (in ``CharRNN``) before the head."""

    parallel = True
    options: ClassVar[dict] = {"expansion": 1, "residual": True, "norm": True, "scan": "auto"}

    def __init__(self, input_size: int, hidden_size: int, layers: int, dropout: float, **options):
        super().__init__()
        self.settings = self.resolve(**options)
        self.hidden_size, self.num_layers, self.input_size = hidden_size, layers, input_size
        size = self.state_size(hidden_size, **self.settings)
        inputs = self.layer_inputs(input_size, hidden_size, layers)
        self.gate_proj = nn.ModuleList(nn.Linear(n, self.matrices * size) for n in inputs)
        self.out_proj = (
            nn.ModuleList(nn.Linear(size, hidden_size, bias=False) for _ in inputs) if size != hidden_size else None
        )
        norm = self.settings["norm"]
        self.norms = nn.ModuleList(nn.LayerNorm(n) for n in inputs[1:] + [hidden_size]) if norm else None
        self.drop = nn.Dropout(dropout) if dropout and layers > 1 else nn.Identity()

    @classmethod
    def state_size(cls, hidden_size: int, expansion=None, **_) -> int:
        return max(1, round(hidden_size * (expansion or 1)))

    @classmethod
    def parameter_count(cls, input_size: int, hidden_size: int, layers: int, **options) -> int:
        settings = cls.resolve(**options)
        size = cls.state_size(hidden_size, **settings)
        inputs = cls.layer_inputs(input_size, hidden_size, layers)
        count = sum(cls.matrices * size * (n + 1) for n in inputs)
        if size != hidden_size:
            count += layers * size * hidden_size
        if settings["norm"]:
            count += 2 * (sum(inputs[1:]) + hidden_size)
        return count

    @classmethod
    def matmul_flops(cls, input_size: int, hidden_size: int, layers: int, **options) -> int:
        """``2 * matrices * state * input`` per layer (no recurrent product), and the output
        projection's ``2 * state * hidden`` with ``expansion != 1``."""
        size = cls.state_size(hidden_size, **cls.resolve(**options))
        inputs = cls.layer_inputs(input_size, hidden_size, layers)
        return sum(2 * cls.matrices * size * n + (2 * size * hidden_size if size != hidden_size else 0) for n in inputs)

    def coefficients(self, k: torch.Tensor):
        """log a, log b of the recurrence and the gates (for the inspector) from the layer's projection."""
        raise NotImplementedError

    def layer(self, k: int, x: torch.Tensor, h0, scan: str):
        """Layer ``k`` on ``x [B, T, in]`` from ``h0 [B, state]``: its output, every h, its gates."""
        inp = x if self.norms is None or k == 0 else self.norms[k - 1](x)
        projected = self.gate_proj[k](inp)
        dtype = torch.promote_types(projected.dtype, torch.float32)  # bf16/fp16 would lose the state
        with torch.autocast(x.device.type, enabled=False):  # the scan in float32 (or float64)
            log_a, log_b, gates = self.coefficients(projected.to(dtype))
            h = SCANS[scan](log_a, log_b, None if h0 is None else h0.to(dtype))
        out = h if self.out_proj is None else self.out_proj[k](h)
        return out, h, gates

    def forward(self, x: torch.Tensor, state=None, scan: str | None = None):
        scan = scan or self.settings["scan"]
        if scan == "auto":
            scan = default_scan(x.device) if x.shape[1] > 1 else "step"
        h0 = None if state is None else self.unpack(state)[0]
        last = []
        for k in range(self.num_layers):
            out, h, _ = self.layer(k, x, None if h0 is None else h0[k], scan)
            last.append(h[:, -1])
            if k < self.num_layers - 1:
                out = self.drop(out)
            x = out + x if self.settings["residual"] and k > 0 else out
        if self.norms is not None:
            x = self.norms[-1](x)
        return x, self.pack([torch.stack(last)])

    @torch.no_grad()
    def layer_states(self, x: torch.Tensor, state) -> list[dict]:
        """Every layer's h and gates for one row ``x [T, input]`` from ``state`` (batch 1), by the
        sequential form, one character at a time (``scan_step``), with O(1) state."""
        h0, layers = self.unpack(state)[0], []
        x = x[None]
        for k in range(self.num_layers):
            out, h, gates = self.layer(k, x, h0[k], "step")
            layers.append({"h": h[0], "gates": {name: g[0] for name, g in gates.items()}})
            x = out + x if self.settings["residual"] and k > 0 else out
        return layers


@register
class MinGRU(Minimal):
    """minGRU: z = sigmoid(W_z x), h~ = g(W_h x), h_t = (1 - z) * h_{t-1} + z * h~."""

    name, matrices, gates, line_style = "mingru", 2, ("update",), "-."

    def coefficients(self, k):
        k_z, k_h = k.chunk(2, dim=-1)
        return -F.softplus(k_z), -F.softplus(-k_z) + log_g(k_h), {"update": torch.sigmoid(k_z)}


@register
class MinLSTM(Minimal):
    """minLSTM: f = sigmoid(W_f x), i = sigmoid(W_i x), normalised f' = f / (f + i), i' = i / (f + i),
    h~ = g(W_h x), h_t = f' * h_{t-1} + i' * h~ (no c: the state is h)."""

    name, matrices, gates, line_style = "minlstm", 3, ("forget", "input"), (0, (3, 1, 1, 1, 1, 1))

    def coefficients(self, k):
        k_f, k_i, k_h = k.chunk(3, dim=-1)
        diff = F.softplus(-k_f) - F.softplus(-k_i)  # log(f' / i') = log f - log i, negated
        log_f, log_i = -F.softplus(diff), -F.softplus(-diff)
        return log_f, log_i + log_g(k_h), {"forget": log_f.exp(), "input": log_i.exp()}

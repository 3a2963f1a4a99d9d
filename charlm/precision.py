"""The training precision, decided by trying it: one forward and backward of the configured
network on the training device before the Trainer is made (it cannot change precision later).

Why try instead of reading versions: cuDNN took bfloat16 LSTM/GRU inputs only from cuDNN 9.13
(pytorch/pytorch#164411); with an older one a bf16 recurrent layer on CUDA fell back to kernels
that raise "not implemented for 'BFloat16'" (pytorch#116925, #116763), and whether a build
has it depends on the torch wheel, the driver and the GPU. One tiny step says it for sure.

``trainer.precision=auto`` (the default) on a GPU takes the first of ``AUTO_ORDER`` that runs:

1. ``bf16-mixed``: tensor-core matmuls at half the memory traffic, with float32's range, so
   no loss scaling (fp16's GradScaler reads an inf/NaN flag on the host at every step, a
   host-device sync). Only on GPUs with native bfloat16 (Ampere and later): elsewhere torch
   emulates it, slower than fp32.
2. ``16-mixed``: the same speed, for GPUs without bfloat16 (V100, T4) or a cuDNN without bf16
   RNNs; loss scaling costs that one sync per step, and fp16's range can overflow.
3. ``32-true`` with TF32 matmuls (``torch.set_float32_matmul_precision("high")``): always runs;
   TF32 keeps tensor cores on Ampere and later at a 10-bit mantissa, plenty for an RNN's matmuls.

On the CPU ``auto`` is ``32-true``: the CPU has no faster half-precision path for these layers.
A precision named by the user is honoured, and refused with one line if the device cannot run it.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

from charlm.errors import UserError
from charlm.model import CharRNN, parameter_count

log = logging.getLogger(__name__)

AUTO_ORDER = ("bf16-mixed", "16-mixed", "32-true")
KNOWN = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
SHORT = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}  # Lightning's short names
PROBE_VOCAB = 128  # the vocabulary is not known yet; the kernels chosen do not depend on its size


def training_device(accelerator: str) -> torch.device:
    """The device this process will train on: its CUDA device when the accelerator lands on a GPU
    (under DDP each local rank has its own), else the CPU."""
    if str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def free_memory(device: torch.device) -> int | None:
    """Bytes free for a new model on ``device``: a GPU's free memory, the CPU's available memory
    (``MemAvailable`` of /proc/meminfo, which counts the page cache the kernel can drop, else the
    free pages); ``None`` where it is not known (MPS, another OS)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:,.0f} GB" if n >= 1e11 else f"{n / 1e9:.3g} GB"


def check_model_memory(model_args: dict, accelerator: str, precision, optimizer: dict) -> None:
    """Refuse, in one line and before anything is allocated, a model whose parameters, gradients
    and optimizer state alone (Adam-type: two more copies; SGD with momentum: one) need more
    memory than is free on the training device; activations come on top, so this is a lower
    bound (the vocabulary, not known yet, counts as one character). Otherwise the first
    allocation fails with a traceback (``model.hidden_size=100000``: 160 GB for one matrix)."""
    device = training_device(accelerator)
    free = free_memory(device)
    if free is None:
        return
    name = str(optimizer.get("_target_", "")).rsplit(".", 1)[-1]
    extra, state = 0, ""
    if "adam" in name.lower():
        extra, state = 2, f"{name} state"  # exp_avg and exp_avg_sq
    elif optimizer.get("momentum"):
        extra, state = 1, f"{name} momentum"
    width = {"64-true": 8, "16-true": 2, "bf16-true": 2}.get(SHORT.get(str(precision), str(precision)), 4)
    need = parameter_count(1, **model_args) * width * (2 + extra)
    if need > free:
        what = "its parameters, gradients" + (f" and {state}" if state else "")
        raise UserError(
            f"model.hidden_size={model_args['hidden_size']} with model.layers={model_args['layers']} needs "
            f"at least {_gb(need)} for {what}, more than the {_gb(free)} of memory free on {device}; "
            "choose a smaller model.hidden_size or model.layers"
        )


def on_gpu(device: torch.device) -> bool:
    return device.type == "cuda"


def native_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def precision_plugin(precision: str, device: torch.device):
    """Lightning's plugin for ``precision`` on ``device`` (what the Trainer will use)."""
    from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

    if precision in ("16-mixed", "bf16-mixed"):
        if precision == "16-mixed" and device.type == "cpu":
            precision = "bf16-mixed"  # what Lightning runs for 16-mixed on the CPU (with a warning)
        return MixedPrecision(precision, device.type)
    if precision in ("16-true", "bf16-true"):
        return HalfPrecision(precision)
    return DoublePrecision() if precision == "64-true" else Precision()


def try_precision(model_args: dict, precision: str, device: torch.device) -> str | None:
    """None when one training forward and backward of ``CharRNN(**model_args)`` runs at
    ``precision`` on ``device``, else the first line of the error."""
    plugin = precision_plugin(precision, device)
    try:
        net = plugin.convert_module(CharRNN(PROBE_VOCAB, **model_args).to(device)).train()
        ids = torch.randint(0, PROBE_VOCAB, (2, 17), device=device)
        with plugin.forward_context():
            logits, _ = net(ids[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # errors of queued kernels surface here, not in the first real step
        return None
    except (RuntimeError, NotImplementedError, ValueError) as err:
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def first_that_runs(order: tuple[str, ...], device: torch.device, model_args: dict) -> str:
    """The first precision of ``order`` that trains the network on ``device``; one warning line
    when it is not the first, naming what failed and why."""
    failures = []
    for precision in order:
        error = try_precision(model_args, precision, device)
        if error is None:
            break
        failures.append(f"{precision} failed ({error})")
    else:
        raise UserError(f"the model cannot train on {device} at any precision: {'; '.join(failures)}")
    if precision == "32-true":
        torch.set_float32_matmul_precision("high")  # TF32 on GPUs with tensor cores
    if failures:
        log.warning(
            "precision: %s on %s; training with %s",
            "; ".join(failures),
            device,
            precision + (" (TF32 matmuls)" if precision == "32-true" else ""),
        )
    return precision


def choose_precision(requested, accelerator: str, model_args: dict) -> str:
    """The ``trainer.precision`` to build the Trainer with, for the value ``requested`` in the config."""
    name = SHORT.get(str(requested), str(requested))
    if name not in KNOWN:
        raise UserError(
            f"trainer.precision={requested} is not known; use auto (the fastest that runs here) or one "
            f"of {', '.join(KNOWN[1:])}"
        )
    device = training_device(accelerator)
    if name != "auto":
        error = try_precision(model_args, name, device)
        if error is not None:
            raise UserError(
                f"trainer.precision={requested} cannot train this model on {device} ({error}); "
                "use trainer.precision=auto to take the first of bf16-mixed, 16-mixed, 32-true that runs"
            )
        return name
    if not on_gpu(device):
        return "32-true"
    return first_that_runs(AUTO_ORDER if native_bf16(device) else AUTO_ORDER[1:], device, model_args)

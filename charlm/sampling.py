"""Text generation: greedy (temperature 0) or sampled from softmax(logits / T), with top-k / top-p."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from charlm.errors import UserError
from charlm.model import CharRNN
from charlm.vocabulary import Vocabulary

DEFAULT_PROMPT = "today "  # how AG News articles often start
MAX_SEED = 2**32 - 1  # numpy's seeds (and so Lightning's seed_everything) are 0..2**32-1; one range for every seed


def check_seed(seed, key: str = "seed", null: str = "") -> None:
    """Refuse a ``seed`` that is not a whole number in ``0..MAX_SEED``, naming ``key``; ``null``: what
    ``null`` means where it is allowed (the refusal then offers it)."""
    if (seed is None and null) or (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED):
        return
    raise UserError(
        f"{key}={seed!r} must be a whole number in 0..{MAX_SEED} (2**32 - 1)" + (f", or null {null}" if null else "")
    )


def default_prompt(vocab: Vocabulary) -> tuple[str, str | None]:
    """The prompt when none is given (``prompt: null``), and a note when it is not ``DEFAULT_PROMPT``.

    ``DEFAULT_PROMPT`` when the model knows all its characters; else the start of a line (a
    newline), else a space, else the first character the model knows: one character the model
    saw often, so the text is the model's own from the start. A prompt the user gives is never
    replaced: one with characters the model does not know is refused."""
    if vocab.encode(DEFAULT_PROMPT).all():
        return DEFAULT_PROMPT, None
    prompt = next((c for c in ("\n", " ") if c in vocab.chars), vocab.chars[1])
    return prompt, (
        f"the default prompt {DEFAULT_PROMPT!r} has characters the model does not know; "
        f"starting from {prompt!r} instead (choose one with prompt=...)"
    )


def short_repr(text: str, limit: int = 40) -> str:
    """``repr(text)``, cut after ``limit`` characters, so that an error line stays short."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text):,} characters)"


def check_sampling_args(
    length: int, temperature: float, top_k: int | None, top_p: float | None, num_samples: int, seed: int | None = None
):
    """Refuse sampling settings that mean nothing, naming the bad value."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise UserError(f"length={length!r} must be a whole number >= 0")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise UserError(f"temperature={temperature!r} must be a number >= 0 (0 = greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UserError(f"top_k={top_k!r} must be a whole number >= 1, or null for no limit")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise UserError(f"top_p={top_p!r} must be in (0, 1], or null for no limit")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise UserError(f"num_samples={num_samples!r} must be a whole number >= 1")
    check_seed(seed, null="for a different text each time")


def next_ids(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Pick one id per row of ``logits [n, vocab]`` (ids on the CPU): argmax when ``temperature``
    is 0, else a sample.

    Computed on the CPU in float64 from ``logits - max``: dividing by any finite temperature
    > 0 then never overflows (the best character scores 0, the others <= 0), so a temperature
    too small for its distribution to be anything but one-hot is greedy decoding, as it should
    be, instead of a NaN. (The sample is drawn on the CPU anyway, and MPS has no float64.)"""
    logits = logits.detach().to("cpu", torch.float64)
    logits[:, 0] = float("-inf")  # never emit the unknown-character id
    if not torch.isfinite(logits[:, 1:]).all():
        raise UserError(
            "the model's outputs are not finite numbers (NaN or inf): its weights are broken; "
            "use a checkpoint saved before the loss became NaN"
        )
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # keep the smallest set reaching top_p (the best always)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def generate(
    model: CharRNN,
    vocab: Vocabulary,
    prompt: str,
    length: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    topic: int | list[int] | None = None,
) -> Iterator[list[str]]:
    """Steps of ``num_samples`` characters each (``length`` of them), continuing ``prompt``.

    The arguments are checked at once (not at the first step). The prompt is fed once;
    then each step feeds the previous characters of all samples in one batched forward
    pass, carrying the recurrent state. Same ``seed``, same text. ``topic``: the topic id of a
    conditioned model for every sample, or one per sample (``None``: unconditioned)."""
    check_sampling_args(length, temperature, top_k, top_p, num_samples, seed)
    if not isinstance(prompt, str):
        raise UserError(f"prompt={prompt!r} is not text; quote it: 'prompt=\"{prompt}\"'")
    if not prompt:
        raise UserError("prompt is empty; give at least one character, e.g. prompt='today '")
    try:
        ids = torch.from_numpy(vocab.encode(prompt, strict=True).astype("int64"))
    except UserError as err:
        raise UserError(f"prompt={short_repr(prompt)} has {err}") from None
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if topic is not None:
        topic = torch.as_tensor(topic, dtype=torch.long).expand(num_samples)
    return _steps(model, vocab, ids, length, temperature, top_k, top_p, num_samples, generator, topic)


def topic_ids(names: list[str] | None, topic, every: bool = True) -> list[int] | None:
    """The ids of ``topic`` (a name, any case; ``all``: every topic; ``None``: none, the topic
    unknown) for a model whose topics are ``names`` (``None``: an unconditioned model). Without
    ``every`` (a command that shows one topic) ``all`` is refused."""
    if topic is None:
        return None
    if not names:
        raise UserError(
            f"topic={topic} needs a model trained with topics (model.topics=true); this checkpoint has "
            "none: leave out topic"
        )
    if str(topic).lower() == "all":
        if not every:
            raise UserError(
                f"topic=all is one topic at a time here; pass one of this model's topics: "
                f"{', '.join(names)} (or null: the topic unknown)"
            )
        return list(range(len(names)))
    lower = [name.lower() for name in names]
    if str(topic).lower() not in lower:
        raise UserError(
            f"topic={topic} is not one of this model's topics: {', '.join(names)} "
            f"({'or all, or null' if every else 'or null: the topic unknown'})"
        )
    return [lower.index(str(topic).lower())]


@torch.no_grad()
def _steps(model, vocab, ids, length, temperature, top_k, top_p, num_samples, generator, topic=None):
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        try:
            topic = None if topic is None else topic.to(device)
            logits, state = model(ids.to(device).expand(num_samples, -1), topic=topic)
        except (torch.OutOfMemoryError, RuntimeError) as err:  # the CPU allocator raises a RuntimeError
            if "memory" not in str(err):
                raise
            raise UserError(
                f"num_samples={num_samples} with a {len(ids)}-character prompt does not fit in the "
                f"memory of {device}; lower num_samples or shorten the prompt"
            ) from None
        for _ in range(length):
            chosen = next_ids(logits[:, -1], temperature, top_k, top_p, generator)
            yield [vocab.chars[i] for i in chosen.tolist()]
            logits, state = model(chosen[:, None].to(device), state, topic=topic)
    finally:
        model.train(was_training)


def generate_text(model: CharRNN, vocab: Vocabulary, prompt: str, length: int, **kwargs) -> list[str]:
    """The prompt followed by ``length`` generated characters, for each sample."""
    steps = list(generate(model, vocab, prompt, length, **kwargs))
    samples = kwargs.get("num_samples", 1)
    return [prompt + "".join(step[i] for step in steps) for i in range(samples)]

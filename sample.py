"""Generate text from a trained checkpoint: python sample.py ckpt=PATH 'prompt="Today "' length=300 temperature=0.8"""

from __future__ import annotations

import contextlib
import os
import sys

import hydra
from omegaconf import DictConfig

from charlm.config import command_line
from charlm.errors import exit_on_user_error
from charlm.module import load_checkpoint, newest_checkpoint, usable_device
from charlm.sampling import check_sampling_args, default_prompt, generate, topic_ids


def sample(cfg: DictConfig) -> None:
    """Print the samples of ``cfg``; notes (the checkpoint chosen for the user, the prompt used
    instead of the default) go to stderr once the settings are known to be good, just before
    the text, so a refused command still prints one line."""
    check_sampling_args(cfg.length, cfg.temperature, cfg.top_k, cfg.top_p, cfg.num_samples, cfg.seed)
    notes = []
    ckpt = cfg.ckpt
    if not ckpt:
        ckpt = newest_checkpoint(cfg.runs_dir)
        notes.append(f"no ckpt given: using the newest run's {ckpt}")
    device = usable_device(cfg.device)
    module = load_checkpoint(ckpt).to(device)
    topics = topic_ids(module.topics, cfg.get("topic"))  # None: unconditioned
    prompt = cfg.prompt
    if prompt is None:
        prompt, note = default_prompt(module.vocab)
        notes += [note] if note else []
    per_topic = cfg.num_samples
    rows = per_topic * (len(topics) if topics else 1)  # topic=all: num_samples of each topic, in one batch
    steps = generate(
        module.net,
        module.vocab,
        prompt,
        cfg.length,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        num_samples=rows,
        seed=cfg.seed,
        topic=None if topics is None else [t for t in topics for _ in range(per_topic)],
    )
    if cfg.num_samples > 1 and (cfg.temperature == 0 or cfg.top_k == 1):
        setting = "temperature=0" if cfg.temperature == 0 else "top_k=1"
        notes.append(
            f"{setting} is greedy decoding, which has one answer: the {cfg.num_samples} samples are the "
            "same; use temperature > 0 (and top_k > 1 or null) for different ones"
        )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if rows == 1:  # stream the characters as they are made
        sys.stdout.write(prompt)
        for (char,) in steps:
            sys.stdout.write(char)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    samples = [prompt] * rows
    for step in steps:
        samples = [text + char for text, char in zip(samples, step)]
    for i, text in enumerate(samples):
        topic = f" (topic {module.topics[topics[i // per_topic]]})" if topics else ""
        print(f"--- sample {i % per_topic + 1 if topics else i + 1}{topic}\n{text}")


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        try:
            sample(cfg)
        except KeyboardInterrupt:  # Ctrl-C stops a long text: end its line, no traceback
            sys.stdout.write("\n")
            sys.exit(130)
        except BrokenPipeError:  # `python sample.py ... | head`: the reader is gone; no traceback
            # (Python's advice: stdout to /dev/null, so the flush at exit does not fail again)
            with contextlib.suppress(Exception):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(128 + 13)  # as a program killed by SIGPIPE


if __name__ == "__main__":
    command_line(sys.argv, "python sample.py", "sample", "prompt", "ckpt", "runs_dir", "topic")
    main()

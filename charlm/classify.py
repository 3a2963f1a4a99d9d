"""The topic of a text, by the generative classifier of a topic-conditioned checkpoint: the text
is scored as an article under every topic (one batched forward), and the likelihoods with the
prior of the training articles give p(topic | text).

    python -m charlm.classify ckpt=PATH 'text="Oil prices rose ..."'
    python -m charlm.classify ckpt=PATH text_file=article.txt
"""

from __future__ import annotations

import sys

import numpy as np

from charlm.errors import UserError
from charlm.inspect import read_text_file
from charlm.module import CharLM, load_checkpoint, newest_checkpoint, usable_device
from charlm.sources import SEPARATOR
from charlm.topics import article_log_likelihoods, log_prior, posterior


def classify(module: CharLM, text: str) -> dict[str, float]:
    """p(topic | ``text``) for each of the model's topics, most likely first."""
    if not module.topics:
        raise UserError("this checkpoint has no topics: classify needs a model trained with model.topics=true")
    vocab = module.vocab
    separator = vocab.chars.index(SEPARATOR) if SEPARATOR in vocab.chars else 0
    ids = np.concatenate([[separator], vocab.encode(text.replace(SEPARATOR, " "))]).astype(np.int64)
    scores = article_log_likelihoods(module.net, [ids], separator)
    probs = posterior(scores, log_prior(module.hparams.topic_counts, module.net.topics))[0]
    return dict(sorted(zip(module.topics, probs.tolist()), key=lambda item: -item[1]))


def unknown_characters(vocab, text: str, key: str = "text") -> str | None:
    """A warning line when some characters of ``text`` are not in the model's vocabulary: they read as
    the unknown id, which says nothing of the topic. Refused when it knows none but whitespace: the
    answer would then be the prior's, however sure it looked."""
    ids = vocab.encode(text).tolist()
    unknown = [c for c, i in zip(text, ids) if not i]
    if not unknown:
        return None
    distinct = "".join(dict.fromkeys(unknown))
    shown = repr(distinct[:8]) + (f" and {len(distinct) - 8} more" if len(distinct) > 8 else "")
    counted = f"{len(unknown):,} of {len(text):,} characters"
    if all(c.isspace() for c, i in zip(text, ids) if i):
        raise UserError(
            f"{key}: the model knows none of its characters but spaces ({counted} are not in its "
            f"vocabulary: {shown}); classify text in the language and script it was trained on"
        )
    return (
        f"{counted} of {key} ({len(unknown) / len(text):.0%}) are not in the model's vocabulary: {shown}; "
        "they say nothing of the topic"
    )


def run(cfg, notes: list[str] | None = None) -> dict[str, float]:
    """What ``python -m charlm.classify`` does with its config; ``notes`` gets the checkpoint chosen
    when none is given (the newest run trained with topics, as sample.py takes the newest run)."""
    if (cfg.text is None) == (cfg.text_file is None):
        raise UserError("give the text to classify as text_file=FILE or 'text=\"...\"' (one of them)")
    ckpt = cfg.ckpt
    if cfg.text_file is not None:
        text = read_text_file(cfg.text_file, max_chars=None)  # inspect's: one line for a folder, a missing file ...
    else:
        text = str(cfg.text)
    if not text.strip():
        raise UserError("the text is empty; give some to classify")
    device = usable_device(cfg.device)
    if not ckpt:
        ckpt = newest_checkpoint(cfg.runs_dir, topics=True)
        if notes is not None:
            notes.append(f"no ckpt given: using the newest topic run's {ckpt}")
    module = load_checkpoint(ckpt)
    if not module.topics:
        raise UserError(f"ckpt={ckpt} has no topics; classify needs a model trained with model.topics=true")
    module = module.to(device)
    note = unknown_characters(module.vocab, text, "text" if cfg.text_file is None else f"text_file={cfg.text_file}")
    if note:
        print(f"warning: {note}", file=sys.stderr)
    return classify(module, text)


def _main() -> None:
    import sys

    import hydra

    from charlm.config import CONF_DIR, command_line
    from charlm.errors import exit_on_user_error

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="classify")
    def main(cfg) -> None:
        with exit_on_user_error():
            notes = []
            probabilities = run(cfg, notes)
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            for name, p in probabilities.items():
                print(f"{name:>12s}  {p:.3f}")

    command_line(sys.argv, "python -m charlm.classify", "classify", "text", "text_file", "ckpt", "runs_dir")
    main()


if __name__ == "__main__":
    _main()

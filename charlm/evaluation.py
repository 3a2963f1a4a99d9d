"""What ``python eval.py`` does: score a checkpoint on a split of a corpus with the metrics of the test
at the end of training (``charlm.scoring``: the same stream, scorer and metric set; the topic model's
classification accuracy where the corpus has topics), as a table, and as CSV or JSON with ``out=``.

The corpus is the checkpoint's own (its run folder's ``config.yaml``) unless ``data=...`` or
``data.<key>=...`` is given. The checkpoint's vocabulary is used: the split is read in the ids the
model knows, and characters it does not know are scored as its unknown id and reported in one line."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from charlm.errors import UserError
from charlm.module import load_checkpoint, newest_checkpoint, usable_device
from charlm.scoring import evaluate_stream, split_metrics
from charlm.topics import classify_articles
from charlm.vocabulary import Vocabulary
from charlm.windows import EvalStream

SPLITS = ("test", "val", "train")
FORMATS = (".csv", ".json")
UNITS = {
    "loss": "nats/char",
    "bpc": "bits/char",
    "bpc_uncond": "bits/char, the topic unknown",
    "topic_bits": "bits/char the topic is worth",
    "topic_acc": "of the articles classified right",
}


def check_args(cfg: DictConfig) -> Path | None:
    """``split`` and ``out`` refused in one line before any work; the ``out`` path, if given."""
    if cfg.split not in SPLITS:
        raise UserError(f"split={cfg.split} is not a split of the corpus; use test, val or train")
    if not cfg.out:
        return None
    out = Path(str(cfg.out)).expanduser()
    if out.suffix.lower() not in FORMATS:
        raise UserError(f"out={cfg.out} must end in .csv or .json (the format written), e.g. out=results.csv")
    if out.is_dir():
        raise UserError(f"out={cfg.out} is a folder; pass a file name, e.g. out={out / 'results.csv'}")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise UserError(
            f"out={cfg.out} cannot be written (no writable folder {out.parent}); pass a path in a folder "
            "you can write to"
        )
    return out


def data_config(cfg: DictConfig, overrides: list[str], ckpt: Path, notes: list[str]) -> DictConfig:
    """The data settings to score on: those of the checkpoint's run (``config.yaml`` of the folder
    holding ``checkpoints/``) with the ``data.<key>=`` overrides given, or ``cfg.data`` as composed
    when ``data=<name>`` picks another corpus kind or the run's config is not found (said in a note)."""
    given = [o.lstrip("+~") for o in overrides if re.match(r"[+~]*data([.=@/]|$)", o)]
    run_config = ckpt.parent.parent / "config.yaml"
    saved = OmegaConf.load(run_config).get("data") if run_config.is_file() else None
    if any(o.startswith("data=") for o in given) or saved is None:
        if saved is None and not given:
            notes.append(
                f"no config.yaml of a run beside {ckpt.parent}: scoring the corpus of data="
                f"{cfg.data.get('corpus')} as configured; pass data=... for the one it was trained on"
            )
        return cfg.data
    for override in given:
        key = override.split("=", 1)[0].removeprefix("data.")
        value = OmegaConf.select(cfg.data, key, default=None)
        if value is None and override.startswith("data.") and "=" not in override:  # ~data.key: removed
            saved.pop(key, None)
        else:
            OmegaConf.update(saved, key, value, force_add=True)
    return saved


def in_vocabulary(tokens: np.ndarray, data_vocab: Vocabulary, vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """``tokens`` (ids of the corpus's vocabulary) as ids of the checkpoint's ``vocab``, and the table
    that maps one to the other (0: a character the checkpoint does not know)."""
    table = vocab.encode("".join(data_vocab.chars)).astype(np.int64)
    table[0] = 0  # unknown to the corpus: unknown to the model
    if data_vocab.chars == vocab.chars:
        return tokens, table
    return table[np.asarray(tokens)], table


def unknown_note(tokens: np.ndarray, data_vocab: Vocabulary, table: np.ndarray, split: str, corpus: str) -> str | None:
    """One line on the characters of the split the checkpoint does not know (scored as its unknown
    id), or ``None``; refused when it knows none but whitespace: the scores would say nothing."""
    counts = np.bincount(np.asarray(tokens), minlength=len(data_vocab))
    unknown, total = int(counts[table == 0].sum()), int(counts.sum())
    if not unknown:
        return None
    names = [data_vocab.chars[i] for i in np.flatnonzero((table == 0) & (counts > 0)) if i]
    shown = (f": {''.join(names[:8])!r}" + (f" and {len(names) - 8} more" if len(names) > 8 else "")) if names else ""
    known = [data_vocab.chars[i] for i in np.flatnonzero((table != 0) & (counts > 0))]
    if all(c.isspace() for c in known):
        raise UserError(
            f"the {split} split of {corpus}: the checkpoint knows none of its characters but whitespace "
            f"({unknown:,} of {total:,} are not in its vocabulary{shown}); score text in the language and "
            "script it was trained on"
        )
    return (
        f"{unknown:,} of {total:,} characters of the {split} split of {corpus} ({unknown / total:.1%}) are not in "
        f"the checkpoint's vocabulary{shown}; they are scored as its unknown id"
    )


def run(cfg: DictConfig, overrides: list[str] = (), notes: list[str] | None = None) -> dict:
    """Score the checkpoint of ``cfg`` on its split; ``overrides``: the command line's (to tell which
    data settings were given). Returns the row written by ``out=``: the checkpoint, corpus, split and its
    characters, then the metrics without their split prefix (loss, bpc, ppl, and for a topic model on
    a corpus with topics bpc_uncond, topic_bits and topic_acc). ``notes`` gets what the user should know."""
    notes = [] if notes is None else notes
    check_args(cfg)
    device = usable_device(cfg.device)
    ckpt = cfg.ckpt
    if not ckpt:
        ckpt = newest_checkpoint(cfg.runs_dir)
        notes.append(f"no ckpt given: using the newest run's {ckpt}")
    ckpt = Path(str(ckpt)).expanduser()
    module = load_checkpoint(ckpt).to(device)
    data_cfg = data_config(cfg, list(overrides), ckpt, notes)
    datamodule = instantiate(data_cfg)
    datamodule.setup()
    split = cfg.split
    corpus = str(data_cfg.get("path") or data_cfg.get("hub_dataset"))
    data_tokens, labels = datamodule.held_out_topics(split)  # labels: None for a corpus without topics
    tokens, table = in_vocabulary(data_tokens, datamodule.vocab, module.vocab)
    note = unknown_note(data_tokens, datamodule.vocab, table, split, corpus)
    if note:
        notes.append(note)
    separator = datamodule.separator_id  # the article separator, in the checkpoint's ids (None: no articles)
    if separator is not None:
        separator = int(table[separator]) or None
    if module.topics and labels is not None and list(datamodule.topics or []) != list(module.topics):
        notes.append(
            f"the topics of {corpus} ({', '.join(datamodule.topics or [])}) are not the model's "
            f"({', '.join(module.topics)}): scored with the topic unknown, no topic accuracy"
        )
        labels = None
    elif module.topics and labels is None:
        notes.append(
            f"{corpus} has no topics: scored with the topic unknown (the unconditioned model), no topic accuracy"
        )
    if not module.topics:
        labels = None
    stream = EvalStream(tokens, datamodule.eval_rows, datamodule.eval_chunk, separator, labels=labels)
    metrics = split_metrics(split, topics=bool(module.topics)).to(device)
    values = evaluate_stream(module.net, (stream[i] for i in range(len(stream))), metrics, device=device)
    row = {"ckpt": str(ckpt), "corpus": corpus, "split": split, "characters": len(tokens)}
    row.update({key.split("/", 1)[1]: float(value) for key, value in values.items()})
    if module.topics and labels is not None:
        row["topic_acc"], _ = classify_articles(module.net, tokens, labels, separator, module.hparams.topic_counts)
    return row


def format_table(row: dict) -> str:
    """The results as a few aligned lines: what was scored, then one metric a line."""
    head = f"{row['ckpt']} on the {row['split']} split of {row['corpus']} ({row['characters']:,} characters)"
    metrics = [(k, v) for k, v in row.items() if k not in ("ckpt", "corpus", "split", "characters")]
    width = max(len(k) for k, _ in metrics)
    return "\n".join([head, *(f"  {k:<{width}}  {v:10.4f}  {UNITS.get(k, '')}".rstrip() for k, v in metrics)])


def write_results(row: dict, out: Path) -> None:
    """``row`` as CSV (a header and one row) or JSON, by the suffix of ``out``; written to a
    temporary file and renamed, so a failed write leaves no half-written file."""
    if out.suffix.lower() == ".json":
        text = json.dumps(row, indent=1) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(row), lineterminator="\n")
        writer.writeheader()
        writer.writerow(row)
        text = buffer.getvalue()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as err:
        raise UserError(
            f"out={out} cannot be written ({err.strerror}); pass a path in a folder you can write to"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)

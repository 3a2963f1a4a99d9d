"""See what a model learned: per-character surprisal, the model's top guesses, hidden units and
gate statistics, as one self-contained HTML page, and as a TensorBoard image at every validation
(``charlm.callbacks.SurprisalImage``).

    python -m charlm.inspect ckpt=PATH text_file=some.txt      # writes inspect.html beside the checkpoint
    python -m charlm.inspect ckpt=PATH 'text="The market fell ..."'

The computations are ``charlm.activations``, the page and the image ``charlm.page``; this module is
the command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from charlm.activations import MAX_CHARS, Inspection, check_text, cut_note, inspect_text
from charlm.errors import UserError
from charlm.page import page_html
from charlm.sampling import topic_ids


def write_page(
    module,
    text: str,
    out: Path,
    title: str,
    max_chars: int = MAX_CHARS,
    top_units: int = 5,
    key: str = "text",
    topic: int | None = None,
) -> Inspection:
    """Inspect ``text`` with a ``CharLM`` (under topic id ``topic`` of a conditioned model; ``None``:
    unknown) and write the page to ``out`` atomically (a temporary file, then a rename: a failed run
    leaves no half-written page)."""
    if out.is_dir():  # else found only by the rename, after all the work
        raise UserError(f"out={out} is a folder; pass the page's file name, e.g. out={out / 'inspect.html'}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        f = open(tmp, "w", encoding="utf-8")  # before the work: an unwritable out= is told at once
    except OSError as err:
        raise UserError(
            f"out={out} cannot be written ({err.strerror}); pass a path in a folder you can write to"
        ) from None
    try:
        with f:
            inspection = inspect_text(module.net, module.vocab, text, max_chars, top_units, key, topic)
            f.write(page_html(inspection, module.vocab, title, dict(module.hparams["model"])))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return inspection


def read_text_file(path: str | Path, max_chars: int | None = MAX_CHARS) -> str:
    """The UTF-8 text of ``text_file=path`` (inspect, classify), refused with one line when missing, a
    folder, unreadable, not UTF-8, or over ``max_chars`` characters (checked from the size first, so a
    huge file is not read; ``None``: no limit)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"text_file={path} is a folder; pass a UTF-8 text file")
    if not path.exists():
        raise UserError(f"text_file={path} does not exist; pass a UTF-8 text file")
    if max_chars is not None and path.stat().st_size > 4 * max_chars:  # a character is at most 4 bytes in UTF-8
        raise UserError(
            f"text_file={path} has more than max_chars={max_chars} characters; inspect a part of it "
            "or raise max_chars (every character is scored; the page shows the first ones)"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"text_file={path} is not UTF-8 (byte {err.start}); convert it, e.g. iconv -t utf-8") from None
    except OSError as err:
        raise UserError(
            f"text_file={path} cannot be read ({err.strerror}); pass a UTF-8 text file you can read"
        ) from None


def run(cfg) -> tuple[Path, Inspection]:
    """What ``python -m charlm.inspect`` does with its config: check it, load the checkpoint, write the page."""
    from charlm.module import load_checkpoint, usable_device

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
    device = usable_device(cfg.device)
    module = load_checkpoint(cfg.ckpt)
    topic = topic_ids(module.topics, cfg.topic, every=False)  # None: unknown, as sample.py
    topic = None if topic is None else topic[0]
    module = module.to(device)
    out = Path(cfg.out).expanduser() if cfg.out else Path(cfg.ckpt).expanduser().parent / "inspect.html"
    name = None if not module.topics else "unknown" if topic is None else module.topics[topic]
    title = f"{Path(source).name} \u2014 {Path(cfg.ckpt).name}" + (f", topic {name}" if name else "")
    inspection = write_page(module, text, out, title, cfg.max_chars, cfg.top_units, key, topic)
    inspection.topic = name
    if len(inspection.text) < len(text):
        print(f"note: {cut_note(len(inspection.text), len(text))}", file=sys.stderr)
    return out, inspection


def _main() -> None:
    import sys

    import hydra

    from charlm.config import CONF_DIR, command_line
    from charlm.errors import exit_on_user_error

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="inspect")
    def main(cfg) -> None:
        with exit_on_user_error():
            out, inspection = run(cfg)
            whole = inspection.whole
            topic = f" (topic {inspection.topic})" if inspection.topic else ""
            print(
                f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {whole['chars']:,} characters, "
                f"mean {whole['mean_bits']:.4f} bits per character{topic}; open it in a browser"
            )

    command_line(sys.argv, "python -m charlm.inspect", "inspect", "text", "text_file", "ckpt", "out", "topic")
    main()


if __name__ == "__main__":
    _main()

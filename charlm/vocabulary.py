"""Character vocabulary: characters <-> integer ids, vectorized with NumPy.

Rule for characters outside the vocabulary: id 0 is reserved for them and prints as
U+FFFD ("�"). Held-out data is encoded with that rule (an unknown character costs the
model whatever probability it gives id 0, which it never saw in training); sampling
prompts use ``strict=True`` and are refused with the unknown characters named, since a
prompt is something the user can fix.
"""

from __future__ import annotations

import numpy as np

from charlm.errors import UserError

UNKNOWN = "\ufffd"


class Vocabulary:
    """Maps characters to ids; ``chars[0]`` is always the unknown-character symbol."""

    def __init__(self, chars: list[str]):
        if not chars or chars[0] != UNKNOWN or any(len(c) != 1 for c in chars):
            raise UserError(f"not a charlm vocabulary: {chars[:5]!r}...; rebuild it with Vocabulary.from_text")
        self.chars = list(chars)
        codepoints = np.array([ord(c) for c in self.chars[1:]], dtype=np.int64)
        self.dtype = np.uint8 if len(self.chars) <= 256 else np.uint16
        # id of every code point up to the largest known one (0 = unknown): encoding is one gather
        self._ids = np.zeros(int(codepoints.max(initial=0)) + 2, dtype=self.dtype)
        self._ids[codepoints] = np.arange(1, len(self.chars), dtype=self.dtype)

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        """Build the vocabulary of every distinct character in ``text``, sorted by code point."""
        return cls.from_codepoints(distinct_codepoints(text))

    @classmethod
    def from_codepoints(cls, codepoints) -> Vocabulary:
        """Build the vocabulary of the given distinct code points (see ``distinct_codepoints``)."""
        return cls([UNKNOWN] + [chr(c) for c in sorted(set(int(c) for c in codepoints)) if chr(c) != UNKNOWN])

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str, strict: bool = False) -> np.ndarray:
        """Encode ``text`` to ids (uint8 when the vocabulary fits). Unknown characters map to
        id 0, or raise ``UserError`` naming them when ``strict``."""
        codepoints = _codepoints(text)
        ids = self._ids[np.minimum(codepoints, len(self._ids) - 1)]
        if strict and not ids.all():
            raise UserError(self.unknown_message(text, ids))
        return ids

    def unknown_message(self, text: str, ids: np.ndarray, shown: int = 8) -> str:
        """A short line (under 200 characters) naming the characters of ``text`` that are not in
        the vocabulary (the first ``shown`` of them, in order of appearance, and how many in all),
        and the vocabulary itself when it is short, else its size (a Chinese or Korean model
        knows thousands of characters: listing them would bury the message), with the vocabulary's size
        as the training log gives it, which counts the unknown-character id."""
        unknown = list(dict.fromkeys(np.asarray(list(text))[ids == 0].tolist()))
        names = repr("".join(unknown[:shown])) + ("" if len(unknown) <= shown else f" and {len(unknown) - shown} more")
        plural = "" if len(unknown) == 1 else "s"
        known = repr("".join(self.chars[1:]))
        # the size the training log gives ("vocabulary of 84") counts id 0 too: both numbers, said so
        known = (
            f"use only these: {known}"
            if len(known) <= 60
            else f"the model knows {len(self) - 1:,} characters (its vocabulary of {len(self):,} has one more id, "
            "for unknown ones)"
        )
        return f"{len(unknown)} character{plural} not in the model's vocabulary: {names}; {known}"

    def decode(self, ids) -> str:
        """Turn a sequence of ids back into text."""
        return "".join(self.chars[i] for i in np.asarray(ids).ravel().tolist())


def distinct_codepoints(text: str) -> np.ndarray:
    """The distinct code points of ``text``, sorted (one counting pass, no sort of the text)."""
    return np.flatnonzero(np.bincount(_codepoints(text)))


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)

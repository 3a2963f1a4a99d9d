import numpy as np
import pytest

from charlm.errors import UserError
from charlm.vocabulary import UNKNOWN, Vocabulary


def test_round_trip_and_compact_ids():
    text = "Hello, wörld! 123\nÜmlaut €"
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    assert ids.dtype == np.uint8
    assert vocab.decode(ids) == text
    assert vocab.chars[0] == UNKNOWN and len(vocab) == len(set(text)) + 1


def test_unknown_characters_map_to_id_zero_or_are_named_when_strict():
    vocab = Vocabulary.from_text("abc")
    assert vocab.encode("abxc").tolist() == [1, 2, 0, 3]
    with pytest.raises(UserError, match=r"'xy'"):
        vocab.encode("axby", strict=True)


def test_vocabulary_survives_a_plain_list():
    vocab = Vocabulary.from_text("the cat")
    again = Vocabulary(list(vocab.chars))
    assert again.encode("tac").tolist() == vocab.encode("tac").tolist()


def test_large_vocabulary_uses_uint16():
    vocab = Vocabulary.from_text("".join(chr(0x4E00 + i) for i in range(400)))
    assert vocab.encode(chr(0x4E00)).dtype == np.uint16


def test_unknown_characters_are_named_in_a_short_line_even_for_a_large_vocabulary():
    """A Korean model knows thousands of characters: the line names the unknown ones (the first
    few, in order, and their count) and the vocabulary's size, not the vocabulary."""
    vocab = Vocabulary.from_text("".join(chr(0xAC00 + i) for i in range(1500)))
    with pytest.raises(UserError) as refused:
        vocab.encode(chr(0xAC00) + "Hello, wonderful world\r\n", strict=True)
    message = str(refused.value)
    assert message == (
        "14 characters not in the model's vocabulary: 'Helo, wn' and 6 more; "
        "the model knows 1,500 characters (its vocabulary of 1,501 has one more id, for unknown ones)"
    )
    assert len(vocab) == 1501  # the number the training log gives: "vocabulary of 1501"
    assert len(message) < 200


def test_a_small_vocabulary_is_listed_with_the_unknown_character():
    with pytest.raises(UserError, match=r"^1 character not in the model's vocabulary: 'x'; use only these: 'abc'$"):
        Vocabulary.from_text("abc").encode("xaxa", strict=True)

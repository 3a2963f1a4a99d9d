"""The token cache is checked when it is opened: each way of damaging it that the design promises to
find (docs/data.md, "Token cache") is found, and the cache is encoded again from the source with one
warning line, or, when that cannot be done, the run stops with one line naming the folder to delete.
No damage leaves a state that fails every later run."""

import json
import logging
import os
import shutil
import time

import numpy as np
import pytest

import charlm.cache
from charlm.data import CharDataModule
from charlm.errors import UserError, exit_on_user_error
from charlm.sources import AgNewsCsv

from conftest import started_together

SPLIT_FILES = ("train", "val", "test", "train_labels", "val_labels", "test_labels")


def make_dm(csv, cache_dir):
    dm = CharDataModule(
        corpus="ag_news",
        path=str(csv),
        val_size=5,
        test_size=5,
        nchars=16,
        stride=16,
        batch_size=4,
        eval_rows=4,
        eval_chunk=32,
        cache_dir=str(cache_dir),
    )
    dm.setup("fit")
    return dm


def contents(cache):
    """Everything a run reads from the cache folder ``cache``."""
    meta = json.loads((cache / "meta.json").read_text())
    return meta["vocab"], meta["topics"], {name: np.load(cache / f"{name}.npy") for name in SPLIT_FILES}


def same(a, b) -> bool:
    return a[:2] == b[:2] and all(np.array_equal(a[2][k], b[2][k]) for k in SPLIT_FILES)


def truncate(name):
    def damage(cache):
        path = cache / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


def delete(name):
    return lambda cache: (cache / name).unlink()


def edit_array(name, change):
    """Rewrite the array ``name`` with ``change(array)``: same dtype and size, so only a checksum finds it."""

    def damage(cache):
        array = np.load(cache / f"{name}.npy")
        change(array)
        np.save(cache / f"{name}.npy", array)

    return damage


def edit_meta(change):
    def damage(cache):
        meta = json.loads((cache / "meta.json").read_text())
        change(meta)
        (cache / "meta.json").write_text(json.dumps(meta))

    return damage


def swap_two_characters(meta):
    vocab = meta["vocab"]
    i, j = vocab.index("a"), vocab.index("e")
    vocab[i], vocab[j] = vocab[j], vocab[i]


def garble_in_range(tokens):
    """Ids of the middle third moved to other ids of the vocabulary: every id stays valid."""
    third = len(tokens) // 3
    middle = tokens[third : 2 * third]
    middle[:] = (middle.astype(np.int64) % (int(tokens.max()) - 1) + 1).astype(tokens.dtype)


DAMAGE = {
    "train.npy truncated": truncate("train.npy"),
    "train_labels.npy truncated": truncate("train_labels.npy"),
    "meta.json deleted": delete("meta.json"),
    "meta.json not JSON": lambda cache: (cache / "meta.json").write_text('{"vocab": ["a", "b"'),
    "train_labels.npy deleted": delete("train_labels.npy"),
    "val_labels.npy deleted": delete("val_labels.npy"),
    "labels out of range": edit_array("train_labels", lambda a: a.__setitem__(slice(10, 20), 200)),
    "token ids out of range": edit_array("val", lambda a: a.__setitem__(slice(5, 7), 250)),
    "two characters swapped in the vocabulary": edit_meta(swap_two_characters),
    "every label set to 0": edit_array("train_labels", lambda a: a.fill(0)),
    "token ids garbled but in range": edit_array("train", garble_in_range),
    "a topic renamed in meta.json": edit_meta(lambda meta: meta["topics"].__setitem__(1, "Athletics")),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_cache_is_encoded_again_with_one_warning(tiny_csv, tmp_path, caplog, damage):
    cache = make_dm(tiny_csv, tmp_path / "cache").cache_path
    good = contents(cache)
    damage(cache)
    with caplog.at_level(logging.WARNING):
        dm = make_dm(tiny_csv, tmp_path / "cache")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith(f"the token cache {cache} was damaged (")
    assert dm.cache_path == cache and same(contents(cache), good)
    assert dm.vocab.chars == good[0] and dm.topics == good[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # and the next run reads the repaired cache as it is
        make_dm(tiny_csv, tmp_path / "cache")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [cache.name, cache.name + ".lock"]


def test_a_whole_cache_is_not_encoded_again(tiny_csv, tmp_path, caplog, monkeypatch):
    make_dm(tiny_csv, tmp_path / "cache")
    monkeypatch.setattr(CharDataModule, "_write_cache", lambda *a: pytest.fail("encoded a whole cache again"))
    with caplog.at_level(logging.WARNING):
        make_dm(tiny_csv, tmp_path / "cache")
    assert not caplog.records


def test_a_damaged_cache_without_its_source_stops_with_one_line_naming_the_folder(
    tiny_csv, tmp_path, monkeypatch, capsys, caplog
):
    cache = make_dm(tiny_csv, tmp_path / "cache").cache_path
    size = (cache / "train.npy").stat().st_size
    truncate("train.npy")(cache)

    def gone(self):  # the source cannot be read any more (a removed disk, a file deleted since)
        raise FileNotFoundError(2, "No such file or directory", str(tiny_csv))

    monkeypatch.setattr(AgNewsCsv, "corpus", gone)
    with pytest.raises(SystemExit) as exited, exit_on_user_error(), caplog.at_level(logging.WARNING):
        make_dm(tiny_csv, tmp_path / "cache")
    assert exited.value.code == 2 and not caplog.records  # the error line only
    assert capsys.readouterr().err == (
        f"error: the token cache {cache} is damaged (train.npy has {size // 2} bytes, not {size}: truncated or damaged) "
        f"and could not be encoded again (No such file or directory: {tiny_csv}); delete {cache} and run again\n"
    )
    shutil.rmtree(cache)  # what the line says; then, with the source back, the next run works
    monkeypatch.undo()
    assert make_dm(tiny_csv, tmp_path / "cache").cache_path == cache


def test_a_damaged_cache_in_a_folder_that_cannot_be_written_stops_with_one_line(tiny_csv, tmp_path, monkeypatch):
    cache = make_dm(tiny_csv, tmp_path / "cache").cache_path
    delete("meta.json")(cache)

    def read_only(path, key):
        raise UserError(f"{key}={path} is not a writable folder (Read-only file system); pass one you can write to")

    monkeypatch.setattr("charlm.data.writable_dir", read_only)
    with pytest.raises(UserError) as refused:
        make_dm(tiny_csv, tmp_path / "cache")
    assert str(refused.value) == (
        f"the token cache {cache} is damaged (it has no meta.json: a build that did not finish, or a deleted file) and "
        f"could not be encoded again (data.cache_dir={cache.parent} is not a writable folder (Read-only file system)); "
        f"delete {cache} and run again"
    )


def test_what_a_killed_build_left_is_removed_by_the_next_build(tiny_csv, tmp_path):
    cache = make_dm(tiny_csv, tmp_path / "cache").cache_path
    shutil.rmtree(cache)
    stale = cache.parent / f".tmp-{cache.name}-killed"  # a build killed (SIGKILL) before its rename
    stale.mkdir()
    (stale / "train.npy").write_bytes(b"\x93NUMPY half a file")
    assert make_dm(tiny_csv, tmp_path / "cache").cache_path == cache
    assert not stale.exists()


def _open_together(path, cache_dir, barrier, built_log):
    original = CharDataModule._write_cache

    def slow_write(self, cache, corpus):
        with open(built_log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # a build long enough that the other processes arrive while it runs
        original(self, cache, corpus)

    CharDataModule._write_cache = slow_write
    barrier.wait()
    make_dm(path, cache_dir)


def test_processes_opening_a_damaged_cache_together_encode_it_once(tiny_csv, tmp_path):
    cache = make_dm(tiny_csv, tmp_path / "cache").cache_path
    good = contents(cache)
    delete("meta.json")(cache)  # the case that failed every later run with "Errno 39: Directory not empty"
    built_log = tmp_path / "built.txt"
    assert started_together(_open_together, tiny_csv, tmp_path / "cache", built_log) == [0, 0, 0]
    assert len(built_log.read_text().split()) == 1
    assert same(contents(cache), good)


def test_renaming_a_topic_in_classes_txt_renames_it_in_the_data(tiny_csv, tmp_path):
    """The topics' names come from classes.txt beside the CSV; the cache follows an edit of it."""
    classes = tiny_csv.parent / "classes.txt"
    classes.write_text("World\nSports\nBusiness\nSci/Tech\n")
    assert make_dm(tiny_csv, tmp_path / "cache").topics == ["World", "Sports", "Business", "Sci/Tech"]
    classes.write_text("World\nAthletics\nBusiness\nSci/Tech\n")
    assert make_dm(tiny_csv, tmp_path / "cache").topics == ["World", "Athletics", "Business", "Sci/Tech"]


def test_a_large_file_is_checked_in_blocks_that_find_a_change_within_one_or_longer_than_a_gap(tmp_path, monkeypatch):
    """Beyond ``CHECK_BLOCKS`` blocks a file is checksummed in that many blocks spread evenly: a change inside
    a block (the first holds the .npy header) and any change longer than the gap between blocks are found."""
    from charlm.cache import CHECK_BLOCKS, file_checksum

    monkeypatch.setattr(charlm.cache, "CHECK_BLOCK_BYTES", 64)  # the same rule on a small file
    path = tmp_path / "large.npy"
    data = np.random.default_rng(0).integers(0, 256, 64 * CHECK_BLOCKS * 10, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    good = file_checksum(path)
    for start, length in ((0, 1), (len(data) - 1, 1), (len(data) // 2, len(data) // (CHECK_BLOCKS - 1))):
        changed = bytearray(data)
        changed[start : start + length] = bytes(255 - b for b in changed[start : start + length])
        path.write_bytes(bytes(changed))
        assert file_checksum(path) != good, (start, length)

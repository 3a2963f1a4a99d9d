"""The "Bad input" table of docs/reliability.md, row by row: a non-zero exit, one line on stderr naming the bad
value and the fix, no traceback, and nothing half-written that breaks the next run.

Every row runs in this process through the calls its entry point makes (fast): the composed config
of the same overrides, then ``train`` (train.py) or the checks, loading and generation of sample.py,
under ``exit_on_user_error``. Rows marked ``CLI`` also run as real ``train.py`` / ``sample.py``
processes, at least one per group, all started together; a few rows (Hydra's own checks, the
Hub, the device) run only there."""

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hydra import compose, initialize_config_dir

from charlm.classify import run as classify_run
from charlm.config import CONF_DIR, compose_config, writable_dir
from charlm.data import CharDataModule
from charlm.errors import UserError, exit_on_user_error
from charlm.evaluation import run as eval_run
from charlm.inspect import run as inspect_run
from charlm.module import FORMAT_VERSION, CharLM, load_checkpoint
from charlm.rundirs import note_created, removed_if_refused
from charlm.sampling import check_sampling_args, default_prompt, generate
from charlm.training import train
from charlm.vocabulary import Vocabulary

from conftest import ROOT, run_script

TEXT = "".join(f"line {i:04d}: the quick brown fox jumps over the lazy dog.\n" for i in range(300))
NOT_RUN = "the checkpoint's payload ran"
CLI, HERE, BOTH = "cli", "here", "both"  # where a row runs: a real process, this process, or both

# (script, arguments as typed, where, the message after "error: "); {d} is the folder of the inputs
ROWS = [
    (
        "train.py",
        "data=text data.path={d}/missing.txt",
        HERE,
        "data.path={d}/missing.txt does not exist; pass an existing file or folder",
    ),
    (
        "train.py",
        "data=text data.path={d}/empty.txt",
        HERE,
        "data.path={d}/empty.txt is empty; pass a file with text in it",
    ),
    (
        "train.py",
        "data=text data.path={d}/photo.jpg",
        HERE,
        "data.path={d}/photo.jpg looks binary (it has NUL bytes); pass a UTF-8 text file",
    ),
    (
        "train.py",
        "data=text data.path={d}/latin1.txt",
        HERE,
        "data.path={d}/latin1.txt is not UTF-8 (byte 3); convert it, e.g. iconv -t utf-8",
    ),
    (
        "train.py",
        "data.path={d}/people.csv",
        HERE,
        "data.path={d}/people.csv: line 1 is not AG News CSV (class index 1-4, title, description), got "
        "['name', 'age']; for plain text use data=text",
    ),
    (
        "train.py",
        "data=folder data.path={d}/missing",
        HERE,
        "data.path={d}/missing does not exist; pass an existing folder of .txt files",
    ),
    (
        "train.py",
        "data=folder data.path={d}/tiny.txt",
        HERE,
        "data.path={d}/tiny.txt is a file; data=folder needs a folder of .txt files (for one text file use data=text)",
    ),
    (
        "train.py",
        "data=folder data.path={d}/empty",
        HERE,
        "data.path={d}/empty is an empty folder; put .txt files in it, one article each",
    ),
    (
        "train.py",
        "data=folder data.path={d}/notes",
        HERE,
        "data.path={d}/notes has no .txt files (2 other entries, e.g. a.md); put the articles in .txt files, one "
        "article each",
    ),
    (
        "train.py",
        "data=folder data.path={d}/two",
        HERE,
        "data.path={d}/two has 2 .txt files; data=folder needs at least 3 (train, val and test are split by file): "
        "add files",
    ),
    (
        "train.py",
        "data=folder data.path={d}/mixed",
        HERE,
        "data.path={d}/mixed: b.txt is not UTF-8 (byte 3); convert it, e.g. iconv -t utf-8",
    ),
    (
        "train.py",
        "data=folder data.path={d}/etx",
        HERE,
        "data.path={d}/etx: b.txt holds the character '\\x03' that data=folder puts between files; remove it from "
        "the file",
    ),
    (
        "train.py",
        "data=text data.path={d}/short.txt",
        BOTH,
        "the training text of {d}/short.txt has 45 characters, fewer than one window (data.nchars + 1 = 101); "
        "lower data.nchars or use a longer corpus",
    ),
    (
        "train.py",
        "data=text data.path={d}/tiny.txt data.cache_dir={d}/cache callbacks.samples.prompt=순환",
        CLI,
        "callbacks.samples.prompt='순환' has 2 characters not in the model's vocabulary: '순환'; use only these: "
        "'\\n .0123456789:abcdefghijklmnopqrstuvwxyz'",
    ),
    ("train.py", "data.nchars=0", HERE, "data.nchars=0 must be a whole number >= 1"),
    ("train.py", "data.nchars=1.5", HERE, "data.nchars=1.5 must be a whole number >= 1"),
    ("train.py", "data.stride=0", HERE, "data.stride=0 must be a whole number >= 1"),
    ("train.py", "data.batch_size=-8", HERE, "data.batch_size=-8 must be a whole number >= 1"),
    ("train.py", "data.order=shuffled", HERE, "data.order='shuffled' is not known; use windows, streams, articles"),
    (
        "train.py",
        "data=text data.path={d}/tiny.txt data.cache_dir={d}/cache data.order=articles",
        HERE,
        "data.order=articles needs articles (data=ag_news, data=folder); data.corpus=text has none: use "
        "data.order=windows or streams",
    ),
    (
        "train.py",
        "model.topics=true data.order=streams",
        HERE,
        "model.topics=true trains on data.order=windows only, not data.order=streams; leave out one of them",
    ),
    (
        "train.py",
        "callbacks.validation.max_share=2",
        HERE,
        "callbacks.validation.max_share=2 must be a fraction in (0, 1], or null for no cap",
    ),
    ("train.py", "model.layers=0", HERE, "model.layers=0 must be a whole number >= 1"),
    ("train.py", "model.layers=abc", HERE, "model.layers='abc' must be a whole number >= 1"),
    ("train.py", "model.hidden_size=0", HERE, "model.hidden_size=0 must be a whole number >= 1"),
    (
        "train.py",
        "model.cell=transformer",
        HERE,
        "model.cell='transformer' is not known; use one of lstm, gru, rnn, mingru, minlstm",
    ),
    (
        "train.py",
        "+model.foo=1",
        HERE,
        "model.foo is not a model setting; the settings are cell, hidden_size, layers, dropout, embedding_dim, "
        "topics, topic_dim, topic_dropout, topic_mode, expansion, residual, norm, scan",
    ),
    (
        "train.py",
        "data=text data.path={d}/tiny.txt data.cache_dir={d}/cache model.topics=true",
        HERE,
        "model.topics=true needs a corpus with topics (data=ag_news); data.corpus=text has none: leave out model.topics",
    ),
    (
        "train.py",
        "model.topic_mode=middle",
        HERE,
        "model.topic_mode='middle' is not known; use input (every step) or state (initial state)",
    ),
    ("train.py", "model.topics=-1", HERE, "model.topics=-1 must be true (condition on the data's topics) or false"),
    ("train.py", "model.topic_dim=0", HERE, "model.topic_dim=0 must be a whole number >= 1"),
    ("train.py", "model.topic_dropout=1.0", HERE, "model.topic_dropout=1.0 must be a number in [0, 1)"),
    # the minimal cells' block settings (charlm.cells.Minimal), and the classic cells refusing them
    (
        "train.py",
        "model.cell=mingru model.expansion=0.5",
        HERE,
        "model.expansion=0.5 must be a number in [1, 16] (state units per hidden unit)",
    ),
    (
        "train.py",
        "model.cell=minlstm model.expansion=true",
        HERE,
        "model.expansion=True must be a number in [1, 16] (state units per hidden unit)",
    ),
    (
        "train.py",
        "model.cell=mingru model.residual=maybe",
        HERE,
        "model.residual='maybe' must be true or false (or null: the cell's default)",
    ),
    (
        "train.py",
        "model.cell=minlstm model.norm=1",
        HERE,
        "model.norm=1 must be true or false (or null: the cell's default)",
    ),
    (
        "train.py",
        "model.cell=mingru model.scan=fast",
        HERE,
        "model.scan='fast' is not known; use one of auto, log, chunked, loop, step",
    ),
    (
        "train.py",
        "model.cell=lstm model.residual=true",
        HERE,
        "model.residual=True is a setting of the mingru, minlstm cells, not of lstm; leave it out (null) or use model.cell=mingru",
    ),
    (
        "train.py",
        "model=mingru model.cell=gru",
        HERE,
        "model.expansion=1 is a setting of the mingru, minlstm cells, not of gru; leave it out (null) or use model.cell=mingru",
    ),
    (
        "train.py",
        "model.cell=rnn model.scan=log",
        HERE,
        "model.scan='log' is a setting of the mingru, minlstm cells, not of rnn; leave it out (null) or use model.cell=mingru",
    ),
    ("train.py", "model.dropout=1.0", HERE, "model.dropout=1.0 must be a number in [0, 1)"),
    ("train.py", "model.dropout=-0.1", HERE, "model.dropout=-0.1 must be a number in [0, 1)"),
    ("train.py", "optimizer.lr=0", HERE, "optimizer.lr=0 must be a number > 0"),
    (
        "train.py",
        "trainer.precision=fp8",
        HERE,
        "trainer.precision=fp8 is not known; use auto (the fastest that runs here) or one of 32-true, bf16-mixed, "
        "16-mixed, bf16-true, 16-true, 64-true",
    ),
    ("train.py", "data.on_device=yes", HERE, "data.on_device='yes' must be true, false or auto"),
    ("train.py", "seed=abc", HERE, "seed='abc' must be a whole number in 0..4294967295 (2**32 - 1)"),
    ("train.py", "seed=-1", HERE, "seed=-1 must be a whole number in 0..4294967295 (2**32 - 1)"),
    ("train.py", "seed=99999999999", HERE, "seed=99999999999 must be a whole number in 0..4294967295 (2**32 - 1)"),
    (
        "train.py",
        "data=text data.path={d}/tiny.txt data.seed=-1",
        HERE,
        "data.seed=-1 must be a whole number in 0..4294967295 (2**32 - 1)",
    ),
    (
        "train.py",
        "ckpt_path={d}/evil.ckpt",
        HERE,
        "ckpt_path={d}/evil.ckpt cannot be loaded safely: it holds a pickled object (posix.system) that could run "
        "code; refused without running it — use a checkpoint written by charlm",
    ),
    (
        "train.py",
        "data=text data.path={d}/tiny.txt ckpt_path={d}/outputs/runs/old",
        HERE,
        "ckpt_path={d}/outputs/runs/old is a folder, not a checkpoint file; pass one, e.g. "
        "ckpt_path={d}/outputs/runs/old/checkpoints/best.ckpt",
    ),
    (
        "train.py",
        "data=text data.path={d}/korean.txt ckpt_path={d}/model.ckpt",
        HERE,
        "ckpt_path={d}/model.ckpt was trained on another vocabulary (41 characters, this data has 34; only in the "
        "checkpoint: 'abcdefghijklmnopqrst'...; only in this data: '가갈개게넘는다뛰른를번빠색어여우으줄째'); continue it on "
        "the data it was trained on (see its run's config.yaml), or leave out ckpt_path to train a new model",
    ),
    (
        "train.py",
        "data=text data.path={d}/tiny.txt ckpt_path={d}/model.ckpt",
        HERE,
        "ckpt_path={d}/model.ckpt has other model settings than this run (model.embedding_dim: 4 there, 16 here; "
        "model.hidden_size: 16 there, 384 here); pass the checkpoint's (model.embedding_dim=4 model.hidden_size=16) "
        "or leave out ckpt_path",
    ),
    (
        "train.py",
        "trainer.max_time=banana",
        HERE,
        "trainer.max_time='banana' must be a duration DD:HH:MM:SS, e.g. 00:00:30:00, or null for no limit",
    ),
    (
        "train.py",
        "trainer.max_epochs=-5",
        HERE,
        "trainer.max_epochs=-5 must be a whole number >= 1, or -1 for no limit",
    ),
    (
        "train.py",
        "trainer.max_time=00:00:00:00",
        HERE,
        "trainer.max_time='00:00:00:00' is a budget of zero: nothing would be trained; give a duration > 0, e.g. "
        "00:00:30:00, or null for no limit",
    ),
    (
        "train.py",
        "trainer.max_steps=0",
        HERE,
        "trainer.max_steps=0 is a budget of zero: nothing would be trained; give a number of steps >= 1, or -1 for no "
        "limit",
    ),
    (
        "train.py",
        "trainer.max_epochs=0",
        HERE,
        "trainer.max_epochs=0 is a budget of zero: nothing would be trained; give a number of epochs >= 1, or -1 for "
        "no limit",
    ),
    (
        "train.py",
        "resume={d}/outputs/runs/typo",
        CLI,
        "resume={d}/outputs/runs/typo does not exist; pass the folder of a run that saved checkpoints/last.ckpt, e.g. "
        "resume=outputs/runs/<run>",
    ),
    (
        "train.py",
        "trainer.devices=abc",
        HERE,
        "trainer.devices='abc' must be a whole number >= 1, a list of device ids, or auto",
    ),
    (
        "train.py",
        "trainer.val_check_interval=2.5",
        HERE,
        "trainer.val_check_interval=2.5 must be a fraction of an epoch in (0, 1], a whole number of training batches, "
        "or null (once per epoch)",
    ),
    *(
        [
            (
                "train.py",
                "trainer.accelerator=gpu",
                CLI,  # only where there is no GPU
                "trainer.accelerator='gpu' is not usable here (No supported gpu backend found!); use auto (a GPU when there "
                "is one) or cpu",
            )
        ]
        if not torch.cuda.is_available()
        else []
    ),
    (
        "train.py",
        "callbacks.checkpoint.save_on_train_epoch_end=true",
        HERE,
        "callbacks.checkpoint.save_on_train_epoch_end=true would write checkpoints that do not resume exactly after a "
        "stop in mid-epoch; set it to false (checkpoints are then written when validation ends)",
    ),
    (
        "train.py",
        "hydra.run.dir={d}/notes.txt/run",
        CLI,
        "hydra.run.dir={d}/notes.txt/run is not a writable folder (Not a directory); pass one you can write to",
    ),
    (
        "train.py",
        "data=text data.path={d}/tiny.txt data.cache_dir={d}/cache callbacks.train_eval.chars=1",
        HERE,
        "callbacks.train_eval.chars=1 must be a whole number >= 2",
    ),
    (
        "train.py",
        "data=text data.path={d}/tiny.txt data.cache_dir={d}/notes.txt/cache",
        HERE,
        "data.cache_dir={d}/notes.txt/cache is not a writable folder (Not a directory); pass one you can write to",
    ),
    (
        "train.py",
        "",
        CLI,  # HF_HUB_OFFLINE=1 (run_script sets it): the Hub is unreachable
        "could not load fancyzhx/ag_news from the Hugging Face Hub (Couldn't reach 'fancyzhx/ag_news' on the Hub "
        "(OfflineModeIsEnabled)); offline? use a local copy: data.path=/path/to/ag_news (a folder with train.csv "
        "and test.csv, or one CSV file)",
    ),
    ("sample.py", "temperature=-1", HERE, "temperature=-1 must be a number >= 0 (0 = greedy)"),
    ("sample.py", "temperature=nan", HERE, "temperature=nan must be a number >= 0 (0 = greedy)"),
    ("sample.py", "temperature=inf", CLI, "temperature=inf must be a number >= 0 (0 = greedy)"),
    ("sample.py", "top_k=0", HERE, "top_k=0 must be a whole number >= 1, or null for no limit"),
    ("sample.py", "top_p=0", HERE, "top_p=0 must be in (0, 1], or null for no limit"),
    ("sample.py", "top_p=1.5", HERE, "top_p=1.5 must be in (0, 1], or null for no limit"),
    ("sample.py", "length=-1", HERE, "length=-1 must be a whole number >= 0"),
    (
        "sample.py",
        "seed=abc",
        HERE,
        "seed='abc' must be a whole number in 0..4294967295 (2**32 - 1), or null for a different text each time",
    ),
    (
        "sample.py",
        "ckpt={d}/model.ckpt seed=-1",
        HERE,
        "seed=-1 must be a whole number in 0..4294967295 (2**32 - 1), or null for a different text each time",
    ),
    (
        "sample.py",
        "ckpt={d}/model.ckpt seed=99999999999",
        HERE,
        "seed=99999999999 must be a whole number in 0..4294967295 (2**32 - 1), or null for a different text each time",
    ),
    (
        "sample.py",
        "ckpt={d}/model.ckpt prompt=Today",
        HERE,
        "prompt='Today' has 1 character not in the model's vocabulary: 'T'; use only these: "
        "'\\n .0123456789:abcdefghijklmnopqrstuvwxyz'",
    ),
    (
        "sample.py",
        "ckpt={d}/model.ckpt prompt=순환",
        CLI,
        "prompt='순환' has 2 characters not in the model's vocabulary: '순환'; use only these: "
        "'\\n .0123456789:abcdefghijklmnopqrstuvwxyz'",
    ),
    (
        "sample.py",
        "ckpt={d}/model.ckpt prompt=",
        HERE,
        "prompt is empty; give at least one character, e.g. prompt='today '",
    ),
    (
        "sample.py",
        "ckpt={d}/model.ckpt temperature=1e-300 top_k=true",
        HERE,
        "top_k=True must be a whole number >= 1, or null for no limit",
    ),
    (
        "sample.py",
        "ckpt={d}/model.ckpt device=meta",
        CLI,
        "device=meta is not usable here (a meta tensor holds no data); use cpu, or cuda on a machine with a GPU",
    ),
    (
        "sample.py",
        "ckpt={d}/model.ckpt num_samples=1000000000000",
        HERE,
        "num_samples=1000000000000 with a 6-character prompt does not fit in the memory of cpu; lower num_samples or "
        "shorten the prompt",
    ),
    (
        "sample.py",
        "ckpt={d}/missing.ckpt",
        HERE,
        "ckpt={d}/missing.ckpt does not exist; pass a .ckpt file from a run's checkpoints/ folder",
    ),
    (
        "sample.py",
        "ckpt={d}/outputs/runs/old",
        HERE,
        "ckpt={d}/outputs/runs/old is a folder, not a checkpoint file; pass one, e.g. "
        "ckpt={d}/outputs/runs/old/checkpoints/best.ckpt",
    ),
    (
        "sample.py",
        "ckpt={d}/truncated.ckpt",
        HERE,
        "ckpt={d}/truncated.ckpt cannot be loaded: it is truncated, corrupt or not a checkpoint (PytorchStreamReader "
        "failed reading zip archive: failed finding central directory); use a checkpoint written by charlm",
    ),
    (
        "sample.py",
        "ckpt={d}/evil.ckpt",
        HERE,
        "ckpt={d}/evil.ckpt cannot be loaded safely: it holds a pickled object (posix.system) that could run code; "
        "refused without running it — use a checkpoint written by charlm",
    ),
    (
        "sample.py",
        "ckpt={d}/future.ckpt",
        HERE,
        f"ckpt={{d}}/future.ckpt has format_version={FORMAT_VERSION + 1}, not {FORMAT_VERSION}, the one this charlm "
        "reads; use it with the charlm version that wrote it, or retrain",
    ),
    (
        "sample.py",
        "ckpt={d}/model.ckpt device=gpu0",
        CLI,
        "device=gpu0 is not usable here (Invalid device string: 'gpu0'); use cpu, or cuda on a machine with a GPU",
    ),
    ("charlm.inspect", "text=hello", HERE, "ckpt is not given; pass ckpt=outputs/runs/<run>/checkpoints/best.ckpt"),
    (
        "charlm.inspect",
        "ckpt={d}/model.ckpt",
        HERE,
        "give the text to inspect as text_file=FILE or 'text=\"...\"' (one of them)",
    ),
    (
        "charlm.inspect",
        "ckpt={d}/model.ckpt text_file={d}/missing.txt",
        HERE,
        "text_file={d}/missing.txt does not exist; pass a UTF-8 text file",
    ),
    (
        "charlm.inspect",
        "ckpt={d}/model.ckpt text_file={d}/latin1.txt",
        HERE,
        "text_file={d}/latin1.txt is not UTF-8 (byte 3); convert it, e.g. iconv -t utf-8",
    ),
    (
        "charlm.inspect",
        "ckpt={d}/model.ckpt text_file={d}/tiny.txt max_chars=1000",
        HERE,
        "text_file={d}/tiny.txt has more than max_chars=1000 characters; inspect a part of it or raise max_chars "
        "(every character is scored; the page shows the first ones)",
    ),
    (
        "charlm.inspect",
        "ckpt={d}/model.ckpt text_file={d}/tiny.txt max_chars=10000",
        HERE,
        "text_file={d}/tiny.txt has 16,800 characters, more than max_chars=10000; inspect a part of it or raise "
        "max_chars (every character is scored; the page shows the first ones)",
    ),
    (
        "charlm.inspect",
        "ckpt={d}/model.ckpt text=a",
        HERE,
        "text has 1 character; give at least 2 (the first has no context, so it is not scored)",
    ),
    ("charlm.inspect", "ckpt={d}/model.ckpt text=hello max_chars=1", HERE, "max_chars=1 must be a whole number >= 2"),
    (
        "charlm.inspect",
        "ckpt={d}/missing.ckpt text=hello",
        HERE,
        "ckpt={d}/missing.ckpt does not exist; pass a .ckpt file from a run's checkpoints/ folder",
    ),
    (
        "charlm.inspect",
        "ckpt={d}/model.ckpt text=hello out={d}/notes.txt/page.html",
        HERE,
        "out={d}/notes.txt/page.html cannot be written (Not a directory); pass a path in a folder you can write to",
    ),
    (
        "charlm.inspect",
        "ckpt={d}/model.ckpt text_file={d}/texts",
        HERE,
        "text_file={d}/texts is a folder; pass a UTF-8 text file",
    ),
    (
        "charlm.inspect",
        "ckpt={d}/model.ckpt text=hello out={d}/texts",
        HERE,
        "out={d}/texts is a folder; pass the page's file name, e.g. out={d}/texts/inspect.html",
    ),
    (
        "charlm.inspect",
        "ckpt={d}/model.ckpt text=hello device=meta",
        HERE,
        "device=meta is not usable here (a meta tensor holds no data); use cpu, or cuda on a machine with a GPU",
    ),
    (
        "charlm.classify",
        "ckpt={d}/topics.ckpt text_file={d}/texts",
        HERE,
        "text_file={d}/texts is a folder; pass a UTF-8 text file",
    ),
    (
        "charlm.classify",
        "ckpt={d}/topics.ckpt text=hello device=meta",
        HERE,
        "device=meta is not usable here (a meta tensor holds no data); use cpu, or cuda on a machine with a GPU",
    ),
    (
        "charlm.classify",
        "ckpt={d}/topics.ckpt text='日本語のテキスト🚀'",
        HERE,
        "text: the model knows none of its characters but spaces (9 of 9 characters are not in its vocabulary: "
        "'日本語のテキスト' and 1 more); classify text in the language and script it was trained on",
    ),
    (
        "eval.py",
        "ckpt={d}/missing.ckpt",
        HERE,
        "ckpt={d}/missing.ckpt does not exist; pass a .ckpt file from a run's checkpoints/ folder",
    ),
    (
        "eval.py",
        "ckpt={d}/model.ckpt split=dev",
        HERE,
        "split=dev is not a split of the corpus; use test, val or train",
    ),
    (
        "eval.py",
        "ckpt={d}/model.ckpt out={d}/results.txt",
        HERE,
        "out={d}/results.txt must end in .csv or .json (the format written), e.g. out=results.csv",
    ),
    (
        "eval.py",
        "ckpt={d}/model.ckpt out={d}/notes.txt/results.csv",
        HERE,
        "out={d}/notes.txt/results.csv cannot be written (no writable folder {d}/notes.txt); pass a path in a folder "
        "you can write to",
    ),
    (
        "eval.py",
        "ckpt={d}/model.ckpt data=text data.path={d}/hangul.txt data.cache_dir={d}/cache",
        HERE,
        "the test split of {d}/hangul.txt: the checkpoint knows none of its characters but whitespace (35 of 45 are "
        "not in its vocabulary: '가나다라마바사'); score text in the language and script it was trained on",
    ),
]
HYDRA_ROWS = [  # Hydra's own multi-line message for a key that does not exist; its first line
    ("train.py", "model.hiden_size=3", "Could not override 'model.hiden_size'."),
]


class Payload:
    """Pickles as a call of ``touch <marker>``: loading it unsafely creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def save_like_lightning(module: CharLM, path) -> None:
    """The two keys of a Lightning checkpoint that sampling needs."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """A folder holding the table's inputs, and an older run with a good ``best.ckpt`` in ``outputs/runs``."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "tiny.txt").write_text(TEXT)
    (d / "empty.txt").write_bytes(b"")
    (d / "korean.txt").write_text(
        "".join(f"{i}번째 줄: 빠른 갈색 여우가 게으른 개를 뛰어넘는다.\n" for i in range(300))
    )
    (d / "hangul.txt").write_text("가나다라 마바사 " * 100)
    (d / "short.txt").write_text("a corpus far shorter than one window of characters\n")
    (d / "latin1.txt").write_bytes("café au lait\n".encode("latin-1") * 20)
    (d / "photo.jpg").write_bytes(bytes(range(256)) * 4)
    (d / "people.csv").write_text("name,age\nAnn,31\n")
    (d / "notes.txt").write_text("a regular file, so nothing can be created under it (not even by root)\n")
    (d / "texts").mkdir()  # a folder where a file belongs
    for folder, files in {
        "empty": {},
        "notes": {"a.md": b"notes", "b.csv": b"1,2"},  # data=folder inputs
        "two": {"a.txt": b"one", "b.txt": b"two"},
        "mixed": {"a.txt": b"fine", "b.txt": "caf\u00e9".encode("latin-1"), "c.txt": b"fine"},
        "etx": {"a.txt": b"fine", "b.txt": b"end\x03of text", "c.txt": b"fine"},
    }.items():
        (d / folder).mkdir()
        for name, content in files.items():
            (d / folder / name).write_bytes(content)
    torch.manual_seed(0)
    module = CharLM(vocab=Vocabulary.from_text(TEXT).chars, model=dict(hidden_size=16, embedding_dim=4))
    save_like_lightning(module, d / "model.ckpt")
    topics = CharLM(
        vocab=module.vocab.chars,
        model=dict(hidden_size=16, embedding_dim=4, topics=4),
        topics=["World", "Sports", "Business", "Sci/Tech"],
        topic_counts=[1, 1, 1, 1],
    )
    save_like_lightning(topics, d / "topics.ckpt")
    (d / "truncated.ckpt").write_bytes((d / "model.ckpt").read_bytes()[:1000])
    torch.save({"state_dict": {}, "hyper_parameters": {"vocab": Payload(d / "pwned")}}, d / "evil.ckpt")
    module.hparams["format_version"] = FORMAT_VERSION + 1
    save_like_lightning(module, d / "future.ckpt")
    old_run = d / "outputs" / "runs" / "old" / "checkpoints"
    old_run.mkdir(parents=True)
    shutil.copy(d / "model.ckpt", old_run / "best.ckpt")
    return d


def run_here(script: str, args: list[str], d) -> None:
    """What ``script args`` does up to its first error, in this process."""
    if script == "train.py":
        cfg = compose_config([f"data.cache_dir={d}/cache", *args], d / "run")
        (d / "run").mkdir(exist_ok=True)
        train(cfg, d / "run")
        return
    if script == "charlm.inspect":
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            inspect_run(compose("inspect", overrides=args))
        return
    if script == "eval.py":
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            eval_run(compose("eval", overrides=args), args)
        return
    if script == "charlm.classify":
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            classify_run(compose("classify", overrides=args))
        return
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("sample", overrides=args)
    check_sampling_args(cfg.length, cfg.temperature, cfg.top_k, cfg.top_p, cfg.num_samples, cfg.seed)
    module = load_checkpoint(cfg.ckpt)
    prompt = cfg.prompt if cfg.prompt is not None else default_prompt(module.vocab)[0]
    next(
        generate(
            module.net,
            module.vocab,
            prompt,
            cfg.length,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            num_samples=cfg.num_samples,
            seed=cfg.seed,
        )
    )


def rows(*where):
    """The ``ROWS`` run ``where``, as test parameters named after their command."""
    return [pytest.param(s, a, m, id=f"{s} {a}") for s, a, w, m in ROWS if w in where]


@pytest.mark.parametrize("script, args, message", rows(HERE, BOTH))
def test_row_gives_its_one_line(d, capsys, script, args, message):
    with pytest.raises(SystemExit) as exited, exit_on_user_error():
        run_here(script, args.format(d=d).split(), d)
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"error: {message.format(d=d)}\n"
    assert not (d / "pwned").exists(), NOT_RUN


@pytest.fixture(scope="module")
def cli(d):
    """The results of the ``CLI`` and ``BOTH`` rows and of ``HYDRA_ROWS``, run as real processes in
    ``d`` (several at once), then of ``sample.py`` with its default checkpoint (the newest run's
    best.ckpt) after all those failed runs. ``HF_HOME`` is empty, so the Hub has no cached copy."""
    commands = [(s, a) for s, a, where, _ in ROWS if where != HERE] + [(s, a) for s, a, _ in HYDRA_ROWS]
    env = {"HF_HOME": str(d / "hf"), "PYTHONPATH": str(ROOT)}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        # the default corpus, with a Hub that does not answer (nothing listens on port 9) and offline mode off
        unreachable = pool.submit(
            run_script,
            ROOT / "train.py",
            cwd=d,
            env={**env, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"},
        )
        results = pool.map(
            lambda command: run_script(*entry_point(command[0]), *command[1].format(d=d).split(), cwd=d, env=env),
            commands,
        )
        results = dict(zip(commands, results))
        results["unreachable"] = unreachable.result()
    results["newest"] = run_script(ROOT / "sample.py", "prompt=the", "length=5", "temperature=0", cwd=d)
    return results


def entry_point(script: str) -> list:
    """How a user starts ``script``: a file of the checkout, or a module (``charlm.inspect``) with ``-m``."""
    return ["-m", script] if script.startswith("charlm.") else [ROOT / script]


def one_line(result) -> str:
    """The single stderr line of a refused command, after checking the exit status and that no traceback came."""
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0], result.stderr
    return lines[0]


@pytest.mark.parametrize("script, args, message", rows(CLI, BOTH))
def test_command_gives_one_line_and_exit_2(d, cli, script, args, message):
    result = cli[script, args]
    assert one_line(result) == f"error: {message.format(d=d)}"
    assert result.returncode == 2
    assert script == "train.py" or result.stdout == ""  # no text before the error
    assert not (d / "pwned").exists(), NOT_RUN


@pytest.mark.parametrize("script, args, first_line", HYDRA_ROWS)
def test_mistyped_key_gets_hydras_message(cli, script, args, first_line):
    result = cli[script, args]
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    assert result.stderr.splitlines()[0] == first_line


def test_an_unreachable_hub_is_told_in_one_line_without_retries(cli):
    """Found by one request, not after datasets' 6 tries over 30 s, each with a "Retrying in Ns" warning."""
    result = cli["unreachable"]
    assert one_line(result) == (
        "error: could not load fancyzhx/ag_news from the Hugging Face Hub (no answer from http://127.0.0.1:9: [Errno 111] "
        "Connection refused); offline? use a local copy: data.path=/path/to/ag_news (a folder with train.csv and "
        "test.csv, or one CSV file)"
    )
    assert result.returncode == 2 and "Retrying" not in result.stdout + result.stderr


def test_failed_runs_leave_nothing_that_breaks_the_next_one(d, cli):
    """The failed runs leave no run folder (that sample.py could take for the newest run), and the cache
    holds no half-written entry: the next run encodes and loads its corpus as usual."""
    runs = d / "outputs" / "runs"
    assert [run.name for run in runs.iterdir()] == ["old"]  # the refused runs' own folders are gone
    newest = cli["newest"]  # sample.py's default checkpoint: the older good run's
    assert newest.returncode == 0 and newest.stdout.startswith("the"), newest.stderr
    cache = d / "outputs" / "cache"
    half_written = [e for e in cache.glob("*") if e.suffix != ".lock" and not (e / "meta.json").exists()]
    assert not half_written  # no .tmp-*, no cache folder without its meta.json (written last)
    dm = CharDataModule(
        corpus="text", path=str(d / "tiny.txt"), nchars=16, stride=16, batch_size=4, cache_dir=str(cache)
    )
    dm.setup("fit")
    assert len(dm.train_dataloader()) > 0


def test_a_refused_run_removes_only_a_folder_it_created_that_holds_no_checkpoint(tmp_path):
    """``resume=`` folders, folders that were there before, and folders with checkpoints are kept."""
    new, old, trained = tmp_path / "new", tmp_path / "old", tmp_path / "trained"
    old.mkdir()
    for folder in (new, old, trained):
        note_created(folder)
        (folder / ".hydra").mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text("seed: 1\n")
    (trained / "checkpoints").mkdir()
    (trained / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    for folder, keep in ((new, True), (new, False), (old, False), (trained, False)):
        with pytest.raises(UserError), removed_if_refused(folder, keep=keep):
            raise UserError("refused")
        assert folder.exists() == (folder is not new or keep), (folder, keep)
    bug = tmp_path / "bug"
    note_created(bug)
    bug.mkdir()
    with pytest.raises(RuntimeError), removed_if_refused(bug):
        raise RuntimeError("a bug, not a refusal: the folder keeps its train.log for the report")
    assert bug.exists()


MEMORY_MESSAGE = (
    "model.hidden_size=100000 with model.layers=1 needs at least 640 GB for its parameters, gradients "
    "and AdamW state, more than the 24 GB of memory free on cpu; choose a smaller model.hidden_size or "
    "model.layers"
)


def test_a_model_larger_than_memory_is_refused_before_it_is_allocated(d, capsys, monkeypatch):
    """Its weights alone would take 160 GB: told with the figure before anything is allocated, on a
    machine given 24 GB free (the docs row shows that line)."""
    monkeypatch.setattr("charlm.precision.free_memory", lambda device: 24 * 10**9)
    with pytest.raises(SystemExit) as exited, exit_on_user_error():
        run_here("train.py", f"data=text data.path={d}/tiny.txt model.hidden_size=100000".split(), d)
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"error: {MEMORY_MESSAGE}\n"
    assert f"`error: {MEMORY_MESSAGE}`" in (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")


UNKNOWN_WARNING = (
    "2 of 11 characters of text (18%) are not in the model's vocabulary: 'ÿ'; they say nothing of the topic"
)


def test_classify_says_how_much_of_the_text_it_does_not_know(d, capsys):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        probabilities = classify_run(compose("classify", overrides=[f"ckpt={d}/topics.ckpt", "text='the ÿÿ fox.'"]))
    assert capsys.readouterr().err == f"warning: {UNKNOWN_WARNING}\n"
    assert sum(probabilities.values()) == pytest.approx(1)
    assert f"`warning: {UNKNOWN_WARNING}`" in (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")


def test_a_mistyped_resume_folder_is_not_created(d, cli):
    """Hydra makes the run folder from ``resume=`` (its hydra.run.dir): one that does not exist is
    refused before that, so no stray folder is left at the mistyped path."""
    assert cli["train.py", "resume={d}/outputs/runs/typo"].returncode == 2
    assert not (d / "outputs" / "runs" / "typo").exists()


def test_an_output_folder_that_cannot_be_written_is_refused(d):
    with pytest.raises(UserError, match=r"hydra.sweep.dir=.*notes.txt/sweep is not a writable folder"):
        writable_dir(d / "notes.txt" / "sweep", "hydra.sweep.dir")
    assert writable_dir(d / "fine" / "sweep", "hydra.sweep.dir").is_dir()


def test_checkpoints_load_weights_only_and_no_code_is_evaluated():
    """The security rules, kept by reading the code: every checkpoint load (``torch.load``, Lightning's
    ``ckpt_path``) says ``weights_only=True``, and nothing calls ``eval`` or ``exec``."""
    sources = [*ROOT.glob("*.py"), *ROOT.glob("charlm/*.py"), *ROOT.glob("benchmarks/*.py")]
    lines = [line for path in sources for line in path.read_text().splitlines()]
    loads = [
        line
        for line in lines
        if re.search(r"torch\.load\(|load_from_checkpoint|\.(fit|test|validate)\(.*ckpt_path", line)
    ]
    assert len(loads) >= 4 and all("weights_only=True" in line for line in loads), loads
    assert not [line for line in lines if re.search(r"(?<![\w.])(eval|exec)\(", line)]


def test_every_row_is_in_the_docs_table():
    """docs/reliability.md shows each row's exact line (data paths shortened: the folder of the inputs left out)."""
    table = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8").replace("\\|", "|")
    missing = [
        f"{script} {args}"
        for script, args, _, message in ROWS
        if f"`error: {message.replace('{d}/', '')}`" not in table
    ]
    assert not missing, f"rows missing from docs/reliability.md: {missing}"


def test_resume_without_the_runs_settings_names_them_before_anything_loads(tmp_path):
    """``python train.py resume=<run>`` of a run trained with ``data=text data.path=... model.layers=2``:
    one line with the settings to pass again (it was AG News' download failing, or, with the data
    settings given, a model mismatch ending "or leave out ckpt_path", which the user had not passed)."""
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    run.mkdir()
    trained = compose_config(["data=text", f"data.path={tmp_path}/t.txt", "model.layers=2"], run)
    OmegaConf.save(trained, run / "config.yaml", resolve=True)  # what the first run wrote
    written = (run / "config.yaml").read_text()
    again = compose_config([f"resume={run}", f"data.cache_dir={tmp_path}/other"], run)
    with pytest.raises(UserError) as refused:
        train(again, run)
    assert str(refused.value) == (
        f"resume={run} was trained with other settings (model.layers: 2 there, 1 here; data.corpus: text there, "
        f"ag_news here; data.path: {tmp_path}/t.txt there, None here); continue it with its own: python train.py "
        f"model.layers=2 data.corpus=text data.path={tmp_path}/t.txt ... resume={run} (its config.yaml has every "
        "setting)"
    )
    assert (run / "config.yaml").read_text() == written  # kept for the next try
    same = compose_config(["data=text", f"data.path={tmp_path}/t.txt", "model.layers=2", f"resume={run}"], run)
    with pytest.raises(UserError, match="t.txt does not exist"):  # the settings match: on to the data
        train(same, run)

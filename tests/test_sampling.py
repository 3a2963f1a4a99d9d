from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from charlm.callbacks import TextSamples
from charlm.errors import UserError
from charlm.model import CharRNN
from charlm.module import CharLM
from charlm.sampling import default_prompt, generate, generate_text
from charlm.vocabulary import Vocabulary

from conftest import ROOT, run_script

VOCAB = Vocabulary.from_text("abcdefghijklmnopqrstuvwxyz .")


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = CharRNN(len(VOCAB), cell="lstm", hidden_size=32, layers=2)
    with torch.no_grad():  # sharpen the output so sampling differs visibly from greedy
        net.head.weight.mul_(20)
    return net


def test_greedy_is_deterministic_and_the_limit_of_temperature(model):
    greedy = generate_text(model, VOCAB, "the ", 60, temperature=0)
    assert greedy == generate_text(model, VOCAB, "the ", 60, temperature=0)
    assert greedy == generate_text(model, VOCAB, "the ", 60, temperature=1e-6, seed=3)
    assert greedy != generate_text(model, VOCAB, "the ", 60, temperature=1.5, seed=3)


def test_same_seed_same_text_other_seed_other_text(model):
    a = generate_text(model, VOCAB, "the ", 80, temperature=1.0, seed=7)
    assert a == generate_text(model, VOCAB, "the ", 80, temperature=1.0, seed=7)
    assert a != generate_text(model, VOCAB, "the ", 80, temperature=1.0, seed=8)


def test_top_k_1_and_tiny_top_p_equal_greedy(model):
    greedy = generate_text(model, VOCAB, "a", 60)
    assert generate_text(model, VOCAB, "a", 60, temperature=2.0, top_k=1, seed=1) == greedy
    assert generate_text(model, VOCAB, "a", 60, temperature=2.0, top_p=1e-6, seed=1) == greedy


def test_top_k_limits_the_choice(model):
    logits, _ = model(torch.from_numpy(VOCAB.encode("q").astype("int64"))[None])
    allowed = set(torch.topk(logits[0, -1, 1:], 2).indices.add(1).tolist())
    firsts = {generate_text(model, VOCAB, "q", 1, temperature=5.0, top_k=2, seed=s)[0][-1] for s in range(40)}
    assert {VOCAB.chars[i] for i in allowed} >= firsts and len(firsts) == 2


def test_samples_advance_together_and_match_single_runs(model):
    batch = generate_text(model, VOCAB, "the ", 30, temperature=0, num_samples=4)
    assert batch == generate_text(model, VOCAB, "the ", 30, temperature=0) * 4
    steps = list(generate(model, VOCAB, "x", 5, temperature=1.0, num_samples=3, seed=0))
    assert len(steps) == 5 and all(len(step) == 3 for step in steps)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="hello WORLD"), "5 characters not in the model's vocabulary: 'WORLD'"),
        (dict(prompt=""), "prompt is empty"),
        (dict(temperature=-1), "temperature=-1"),
        (dict(length=-5), "length=-5"),
        (dict(top_k=0), "top_k=0"),
        (dict(top_p=0.0), "top_p=0.0"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(temperature=float("nan")), "temperature=nan must be a number >= 0"),
        (dict(temperature=float("inf")), "temperature=inf must be a number >= 0"),
        (dict(temperature=True), "temperature=True"),
        (dict(top_p=float("nan")), "top_p=nan"),
        (dict(top_k=True), "top_k=True"),
    ],
)
def test_bad_sampling_arguments_are_refused_before_any_text(model, kwargs, message):
    args = dict(prompt="hello", length=10) | kwargs
    with pytest.raises(UserError, match=message):
        generate(model, VOCAB, args.pop("prompt"), args.pop("length"), **args)


@pytest.mark.parametrize("temperature", [1e-38, 1e-300, 5e-324])
def test_a_temperature_too_small_for_any_other_choice_is_greedy(model, temperature):
    """softmax(logits / T) overflows for tiny T unless computed from logits - max: then it is
    one-hot, i.e. greedy decoding, for every number of samples and with top-k / top-p too."""
    greedy = generate_text(model, VOCAB, "the ", 40, temperature=0)
    assert generate_text(model, VOCAB, "the ", 40, temperature=temperature, seed=1) == greedy
    assert (
        generate_text(model, VOCAB, "the ", 40, temperature=temperature, top_k=3, top_p=0.5, seed=1, num_samples=2)
        == greedy * 2
    )


def test_a_huge_temperature_samples_every_character_alike(model):
    """1e300 is almost uniform over the vocabulary (not NaN), the unknown id still never chosen."""
    text = generate_text(model, VOCAB, "q", 600, temperature=1e300, seed=0)[0][1:]
    assert set(text) == set(VOCAB.chars[1:])


def test_extreme_top_k_and_top_p_are_fine(model):
    greedy = generate_text(model, VOCAB, "a", 30)
    assert generate_text(model, VOCAB, "a", 30, temperature=1.0, top_p=1e-300, seed=2) == greedy
    assert generate_text(model, VOCAB, "a", 30, temperature=1.0, top_k=10**9, seed=2) == generate_text(
        model, VOCAB, "a", 30, temperature=1.0, seed=2
    )


def test_broken_weights_are_named_not_a_multinomial_error(model):
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(UserError, match="not finite numbers"):
        generate_text(model, VOCAB, "a", 3, temperature=1.0)


def test_more_samples_than_memory_holds_are_refused(model):
    with pytest.raises(UserError, match=r"num_samples=1000000000000 with a 2-character prompt does not fit"):
        generate_text(model, VOCAB, "ab", 2, num_samples=10**12)


def test_the_default_prompt_fits_the_vocabulary():
    assert default_prompt(VOCAB) == ("today ", None)
    for text, start in [("순환 신경망\n", "\n"), ("순환 신경망", " "), ("aaaa", "a")]:
        prompt, note = default_prompt(Vocabulary.from_text(text))
        assert prompt == start and f"starting from {start!r} instead" in note


def test_text_samples_adapt_the_default_prompt_and_refuse_a_bad_one_before_training():
    """A corpus of only 'a' has none of the characters of "today ": the samples start from 'a'."""
    torch.manual_seed(0)
    module = CharLM(vocab=Vocabulary.from_text("a").chars, model=dict(hidden_size=8, embedding_dim=4))
    samples = TextSamples()
    samples.on_fit_start(None, module)
    assert samples._prompt == "a"
    for bad, message in [
        (dict(prompt="today "), r"^callbacks.samples.prompt='today ' has 5 characters not in"),
        (dict(temperatures=[0.5, float("nan")]), r"^callbacks.samples.temperatures: nan must be"),
        (dict(prompt="a", length=-2), r"^callbacks.samples.length=-2 must be"),
    ]:
        with pytest.raises(UserError, match=message):
            TextSamples(**bad).on_fit_start(None, module)
    assert TextSamples(temperatures=0.5).temperatures == [0.5]


@pytest.mark.slow
def test_sample_py_as_typed(tmp_path):
    """The real sample.py: a prompt typed with a trailing space or in Hangul is taken as typed, a
    temperature of 1e-300 is greedy, the default prompt adapts to a model without its letters,
    and stderr says which checkpoint was taken and why greedy samples are all the same."""
    text = "순환 신경망은 글자를 하나씩 읽는다. ab ab\n" * 20
    torch.manual_seed(0)
    module = CharLM(vocab=Vocabulary.from_text(text).chars, model=dict(hidden_size=16, embedding_dim=4))
    run = tmp_path / "outputs" / "runs" / "r" / "checkpoints"
    run.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, run / "best.ckpt")
    ckpt = f"ckpt={run / 'best.ckpt'}"
    commands = [
        (ckpt, "prompt=순환", "length=12", "temperature=1e-300"),
        (ckpt, "length=3", "temperature=0", "num_samples=2"),
        ("prompt=ab ", "length=3", "temperature=0"),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        hangul, default, newest = pool.map(lambda args: run_script(ROOT / "sample.py", *args, cwd=tmp_path), commands)
    assert hangul.returncode == 0 and hangul.stderr == "", hangul.stderr
    assert hangul.stdout == generate_text(module.net, module.vocab, "순환", 12, temperature=0)[0] + "\n"
    assert default.returncode == 0 and default.stdout.startswith("--- sample 1\n\n"), default.stderr
    assert default.stderr.splitlines() == [
        "note: the default prompt 'today ' has characters the model does not know; starting from '\\n' instead "
        "(choose one with prompt=...)",
        "note: temperature=0 is greedy decoding, which has one answer: the 2 samples are the same; use "
        "temperature > 0 (and top_k > 1 or null) for different ones",
    ]
    assert newest.returncode == 0 and newest.stdout.startswith("ab ") and len(newest.stdout) == 7, newest.stderr
    assert newest.stderr == "note: no ckpt given: using the newest run's outputs/runs/r/checkpoints/best.ckpt\n"


@pytest.mark.parametrize(
    "typed, prompt",
    [
        ("Today ", "Today "),  # prompt="Today " in a shell: Hydra would trim the space
        ("순환", "순환"),
        ("café", "café"),  # Hydra's lexer refuses most non-ASCII letters
        ("Hello, world", "Hello, world"),  # a comma: a sweep for Hydra
        ("123", "123"),
        ("true", "true"),  # a number, a bool for Hydra
        ("it's \\'", "it's \\'"),
        ("a\\", "a\\"),
        ("(x", "(x"),
        ("'Today '", "Today "),
        ('"순환"', "순환"),  # quoted for Hydra, as the README shows: Hydra's reading
        ("null", None),  # the default prompt
    ],
)
def test_a_prompt_on_the_command_line_is_taken_as_typed(typed, prompt):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from charlm.config import literal_prompt_overrides

    for key in ("prompt", "callbacks.samples.prompt"):
        argv = ["sample.py", "length=5", f"{key}={typed}", f"other.{key}={typed}"]
        literal_prompt_overrides(argv, key)
        assert argv[:2] == ["sample.py", "length=5"] and argv[3] == f"other.{key}={typed}"  # others untouched
        assert OverridesParser.create().parse_override(argv[2]).value() == prompt


@pytest.mark.slow
def test_ctrl_c_ends_a_long_text_without_a_traceback(tmp_path):
    """length=10**9 streams for hours: Ctrl-C ends the line and exits with 130, nothing else."""
    import os
    import signal
    import subprocess
    import sys

    torch.manual_seed(0)
    module = CharLM(vocab=VOCAB.chars, model=dict(hidden_size=8, embedding_dim=4))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "m.ckpt")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "sample.py"), f"ckpt={tmp_path / 'm.ckpt'}", "length=1000000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # as in a terminal, whatever started pytest: Python takes Ctrl-C only where SIGINT is not ignored at
        # its start, and a shell's background job (`cmd &`) starts with it ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout.read(50)  # it is generating
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err == b"" and out.endswith(b"\n")


def test_a_reader_that_goes_away_ends_sample_py_quietly(tiny_run, monkeypatch, capsys):
    """``python sample.py ... | head -c 20``: head exits, the next write fails with BrokenPipeError;
    sample.py ends with the status of a program killed by SIGPIPE and no traceback (it printed one)."""
    import io
    import runpy
    import sys

    class Pipe(io.StringIO):
        def write(self, text):
            if self.tell() >= 20:
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

        def fileno(self):
            raise io.UnsupportedOperation("not a file")  # no descriptor to point at /dev/null here

    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    monkeypatch.setattr(sys, "argv", ["sample.py", f"ckpt={ckpt}", "length=1000", "hydra.output_subdir=null"])
    monkeypatch.setattr(sys, "stdout", Pipe())
    monkeypatch.chdir(tiny_run)
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "sample.py"), run_name="__main__")
    assert exited.value.code == 141
    assert "Traceback" not in capsys.readouterr().err

import pytest
import torch

from charlm.errors import UserError
from charlm.model import CharRNN
from charlm.sampling import generate, generate_text
from charlm.vocabulary import Vocabulary

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


@pytest.mark.parametrize("kwargs, message", [
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
])
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
    assert generate_text(model, VOCAB, "the ", 40, temperature=temperature, top_k=3, top_p=0.5, seed=1,
                         num_samples=2) == greedy * 2


def test_a_huge_temperature_samples_every_character_alike(model):
    """1e300 is almost uniform over the vocabulary (not NaN), the unknown id still never chosen."""
    text = generate_text(model, VOCAB, "q", 600, temperature=1e300, seed=0)[0][1:]
    assert set(text) == set(VOCAB.chars[1:])


def test_extreme_top_k_and_top_p_are_fine(model):
    greedy = generate_text(model, VOCAB, "a", 30)
    assert generate_text(model, VOCAB, "a", 30, temperature=1.0, top_p=1e-300, seed=2) == greedy
    assert generate_text(model, VOCAB, "a", 30, temperature=1.0, top_k=10**9, seed=2) == \
        generate_text(model, VOCAB, "a", 30, temperature=1.0, seed=2)


def test_broken_weights_are_named_not_a_multinomial_error(model):
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(UserError, match="not finite numbers"):
        generate_text(model, VOCAB, "a", 3, temperature=1.0)


def test_more_samples_than_memory_holds_are_refused(model):
    with pytest.raises(UserError, match=r"num_samples=1000000000000 with a 2-character prompt does not fit"):
        generate_text(model, VOCAB, "ab", 2, num_samples=10**12)

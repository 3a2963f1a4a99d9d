import itertools

import pytest
import torch

from charlm.errors import UserError
from charlm.model import CharRNN, parameter_count


@pytest.mark.parametrize(
    "cell, layers, embedding_dim", list(itertools.product(["lstm", "gru", "rnn"], [1, 2, 3], [0, 8]))
)
def test_output_shapes_and_carried_state(cell, layers, embedding_dim):
    model = CharRNN(vocab_size=11, cell=cell, hidden_size=12, layers=layers, dropout=0.1, embedding_dim=embedding_dim)
    model.eval()
    ids = torch.randint(0, 11, (3, 7))
    logits, state = model(ids)
    assert logits.shape == (3, 7, 11)
    h = state[0] if cell == "lstm" else state
    assert h.shape == (layers, 3, 12)
    # feeding the sequence in two parts with the carried state gives the same logits
    first, state = model(ids[:, :4])
    second, _ = model(ids[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), logits)


def test_dropout_regularizes_a_one_layer_model_in_training_only():
    """model.dropout also drops the last layer's output, so a 1-layer model (which nn.LSTM's
    between-layer dropout leaves alone) is regularized: two training passes differ, eval passes do not."""
    torch.manual_seed(0)
    ids = torch.randint(0, 11, (4, 9))
    model = CharRNN(vocab_size=11, hidden_size=16, layers=1, dropout=0.5).train()
    assert not torch.equal(model(ids)[0], model(ids)[0])
    model.eval()
    torch.testing.assert_close(model(ids)[0], model(ids)[0], rtol=0, atol=0)
    plain = CharRNN(vocab_size=11, hidden_size=16, layers=1, dropout=0.0).train()
    torch.testing.assert_close(plain(ids)[0], plain(ids)[0], rtol=0, atol=0)
    # the same parameters with and without dropout: old checkpoints load either way
    assert plain.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cell="transformer"), "model.cell='transformer'"),
        (dict(layers=0), "model.layers=0"),
        (dict(hidden_size=0), "model.hidden_size=0"),
        (dict(dropout=1.0), "model.dropout=1.0"),
        (dict(dropout=-0.1), "model.dropout=-0.1"),
        (dict(embedding_dim=-1), "model.embedding_dim=-1"),
    ],
)
def test_bad_model_settings_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
        CharRNN(vocab_size=5, **kwargs)


@pytest.mark.parametrize(
    "cell, layers, embedding_dim, topics, topic_mode",
    list(itertools.product(["lstm", "gru", "rnn"], [1, 3], [0, 5], [0, 4], ["input", "state"])),
)
def test_parameter_count_from_the_settings_is_the_modules(cell, layers, embedding_dim, topics, topic_mode):
    """What ``charlm.precision.check_model_memory`` counts before building a model is what it holds."""
    args = dict(
        cell=cell,
        hidden_size=7,
        layers=layers,
        embedding_dim=embedding_dim,
        topics=topics,
        topic_dim=3,
        topic_mode=topic_mode,
    )
    assert parameter_count(11, **args) == sum(p.numel() for p in CharRNN(11, **args).parameters())


@pytest.mark.parametrize(
    "cell, layers, block",
    list(
        itertools.product(
            ["mingru", "minlstm"],
            [1, 3],
            [dict(residual=False, norm=False), dict(norm=True), dict(norm=True, expansion=1.5)],
        )
    ),
)
def test_a_minimal_cells_parameter_count_from_the_settings_is_the_modules(cell, layers, block):
    """The same for the minimal cells, with their block settings (a norm's weights, an expansion's
    output projection) and a topic in the initial state."""
    args = dict(cell=cell, hidden_size=8, layers=layers, embedding_dim=5, topics=4, topic_dim=3, topic_mode="state")
    args.update(block)
    assert parameter_count(11, **args) == sum(p.numel() for p in CharRNN(11, **args).parameters())

"""charlm.scoring, the one scorer of val, test, the training sample, eval.py, the inspector and the classifier:
its numbers against a plain cross-entropy loop, and the training sample's metrics kept apart from val's."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.precision import Precision

from charlm.callbacks import TrainSampleScore
from charlm.data import CharDataModule
from charlm.model import CharRNN
from charlm.module import CharLM
from charlm.scoring import SplitMetrics, evaluate_stream, split_metrics
from charlm.windows import EvalStream

SEP = 1


def stream_tokens(n=400, vocab=9, seed=0):
    """Random tokens with separators (id 1) at irregular places: rows of different lengths."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, vocab, n)
    tokens[np.sort(rng.choice(np.arange(1, n), 25, replace=False))] = SEP
    tokens[0] = SEP
    return tokens


def plain_loss(net, tokens, starts, lengths, labels=None, topic=True) -> float:
    """Each row read whole in one forward from a fresh state; nats per scored character, written out."""
    total, count = 0.0, 0
    for start, length in zip(starts, lengths):
        if length < 2:
            continue
        row = torch.from_numpy(tokens[start : start + length]).long()
        kwargs = {}
        if labels is not None and topic:
            kwargs["topic"] = torch.from_numpy(labels[start : start + length - 1]).long()[None]
        with torch.no_grad():
            logits, _ = net(row[None, :-1], **kwargs)
        logits = logits[0].double()
        log_z = logits.exp().sum(-1).log()
        total += float((log_z - logits[torch.arange(length - 1), row[1:]]).sum())
        count += length - 1
    return total / count


@pytest.mark.parametrize("topics", [0, 4])
def test_the_scorer_is_a_plain_cross_entropy_loop_over_the_stream(topics):
    """Carried state over chunks, padding not counted, and (topic model) the unconditioned twin on the
    same chunks: what a plain loop over whole rows gives. Fails if the state is not carried, if padding
    is counted, or if the twin reads the topics."""
    torch.manual_seed(0)
    net = CharRNN(9, cell="lstm", hidden_size=8, layers=2, embedding_dim=3, topics=topics).eval()
    tokens = stream_tokens()
    labels = np.random.default_rng(1).integers(0, 4, len(tokens)) if topics else None
    stream = EvalStream(tokens, rows=4, chunk=7, separator_id=SEP, labels=labels)
    assert len(stream) > 2 and len(set(stream.lengths)) > 1  # several chunks, rows padded to the longest
    values = evaluate_stream(net, (stream[i] for i in range(len(stream))), split_metrics("val", topics=bool(topics)))
    loss = plain_loss(net, tokens, stream.starts, stream.lengths, labels)
    assert float(values["val/loss"]) == pytest.approx(loss, rel=1e-5)
    assert float(values["val/bpc"]) == pytest.approx(loss / math.log(2), rel=1e-5)
    assert float(values["val/ppl"]) == pytest.approx(math.exp(loss), rel=1e-5)
    if topics:
        uncond = plain_loss(net, tokens, stream.starts, stream.lengths, labels, topic=False)
        assert float(values["val/bpc_uncond"]) == pytest.approx(uncond / math.log(2), rel=1e-5)
        assert float(values["val/topic_bits"]) == pytest.approx((uncond - loss) / math.log(2), abs=1e-5)
    else:
        assert set(values) == {"val/loss", "val/bpc", "val/ppl"}


def test_the_training_sample_has_its_own_metrics(tiny_text, tmp_path, monkeypatch):
    """TrainSampleScore scores the training text into a fresh metric set of its own: the module's val
    metrics, part way through a validation, are neither updated nor reset by it."""
    dm = CharDataModule(
        corpus="text", path=str(tiny_text), nchars=16, eval_rows=4, eval_chunk=32, cache_dir=str(tmp_path / "cache")
    )
    dm.setup()
    torch.manual_seed(0)
    module = CharLM(vocab=dm.vocab.chars, model={"cell": "gru", "hidden_size": 8}).eval()
    val = dm.eval_stream("val")
    with torch.no_grad():
        module.validation_step(val[0], 0)  # a validation under way
    before = {name: t.clone() for name, t in module.val_metrics.loss.metric_state.items()}
    updated, logged = [], {}
    original = SplitMetrics.update
    monkeypatch.setattr(SplitMetrics, "update", lambda self, *a, **k: (updated.append(self), original(self, *a, **k)))
    monkeypatch.setattr(module, "log_dict", lambda values, **kwargs: logged.update(values))
    trainer = SimpleNamespace(datamodule=dm, sanity_checking=False, precision_plugin=Precision())
    callback = TrainSampleScore(chars=300)
    callback.on_validation_epoch_end(trainer, module)
    assert updated and all(m is callback.metrics for m in updated)
    assert callback.metrics is not module.val_metrics and callback.metrics.prefix == "train_eval"
    after = module.val_metrics.loss.metric_state
    assert all(torch.equal(before[name], after[name]) for name in before)
    sample = dm.eval_stream("train", 300)
    expected = evaluate_stream(module.net, (sample[i] for i in range(len(sample))), split_metrics("train_eval"))
    assert set(logged) == {"train_eval/loss", "train_eval/bpc", "train_eval/ppl"}
    assert float(logged["train_eval/bpc"]) == float(expected["train_eval/bpc"])

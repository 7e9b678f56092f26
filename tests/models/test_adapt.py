"""Dynamic evaluation: texts read in order, the RNN adapting to each once scored, on a
copy of its own per call."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rnnlm.models.adapt import Adaptation, score_adapting
from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.results import ScoreResult
from tests.conftest import make_checkpoint

DOC = ["the cat sat on the mat.", "the cat sat on the mat.", "a bird sang in the tree."]


@pytest.fixture(scope="module", params=["char", "word-ngram", "char-residual"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    root = tmp_path_factory.mktemp("adapt")
    kind = request.param.split("-")[0]
    order = 0 if request.param == "char" else 3
    path = make_checkpoint(root / "m", kind, ngram_order=order, mix_weight=0.7,
                           residual="residual" in request.param)  # fmt: skip
    return Engine(load_checkpoint(path))


def _weights(engine: Engine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.model.parameters()]


def test_it_adapts_to_what_it_has_read(engine: Engine) -> None:
    static = engine.score_batch(DOC)
    adapted = score_adapting(engine, DOC, adapt=Adaptation(lr=0.5))
    # The first text is read by the model as trained; the same text again is likelier
    # once read, and the adapted RNN is the part that changed.
    assert adapted[0].logprob == pytest.approx(static[0].logprob, abs=1e-4)
    assert adapted[1].logprob > static[1].logprob
    assert adapted[1].ngram_logprob == static[1].ngram_logprob

    def rnn(r: ScoreResult) -> float:
        return r.logprob if r.rnn_logprob is None else r.rnn_logprob

    assert rnn(adapted[1]) > rnn(static[1]) + 0.5
    assert [r.num_tokens for r in adapted] == [r.num_tokens for r in static]


def test_nothing_leaks_out_of_a_call(engine: Engine) -> None:
    before, static = _weights(engine), engine.score_batch(DOC, per_token=True)
    first = score_adapting(engine, DOC, per_token=True, adapt=Adaptation(lr=0.5))
    again = score_adapting(engine, DOC, per_token=True, adapt=Adaptation(lr=0.5))
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(engine), strict=True))
    assert [r.logprob for r in engine.score_batch(DOC)] == [r.logprob for r in static]
    assert [r.logprob for r in first] == [r.logprob for r in again]
    for r in first:
        assert r.tokens is not None
        assert sum(t.logprob for t in r.tokens) == pytest.approx(r.logprob, abs=1e-6)


def test_decay_one_keeps_nothing(engine: Engine) -> None:
    static = engine.score_batch(DOC)
    kept = score_adapting(engine, DOC, adapt=Adaptation(lr=0.5, decay=1.0))
    for a, b in zip(kept, static, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_empty_and_unscorable_texts(engine: Engine) -> None:
    out = score_adapting(engine, ["", "the", ""], bos=False, eos=False)
    assert [r.num_tokens for r in out] == [0, len(engine.tokenizer.encode("the")) - 1, 0]
    assert score_adapting(engine, []) == []


@pytest.mark.parametrize(
    "bad",
    [{"lr": 0.0}, {"lr": -1.0}, {"lr": math.nan}, {"lr": math.inf}, {"lr": 11.0},
     {"decay": -0.1}, {"decay": 1.5}],
)  # fmt: skip
def test_bad_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Adaptation(**bad)


def test_a_bidirectional_model_adapts_its_forward_rnn(tmp_path: Path) -> None:
    e = Engine(load_checkpoint(make_checkpoint(tmp_path / "b", "char", bidirectional=True)))
    static = e.score_batch(DOC)
    adapted = score_adapting(e, DOC, adapt=Adaptation(lr=0.5))
    assert adapted[1].logprob > static[1].logprob
    assert adapted[1].backward_logprob is not None

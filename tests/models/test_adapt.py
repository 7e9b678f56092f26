"""Adapting: texts read in order, the RNN adapting to each once scored, on a copy of its
own per call, and the cache of the texts read mixed in."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlm.models.adapt import MAX_CACHE, Adaptation, Cache, score_adapting
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
    [{"lr": -1.0}, {"lr": math.nan}, {"lr": math.inf}, {"lr": 11.0},
     {"decay": -0.1}, {"decay": 1.5}, {"cache": -1}, {"cache": 1.5}, {"cache": True},
     {"cache": MAX_CACHE + 1}],
)  # fmt: skip
def test_bad_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Adaptation(**bad)


def test_a_bidirectional_model_adapts_its_forward_rnn(tmp_path: Path) -> None:
    e = Engine(load_checkpoint(make_checkpoint(tmp_path / "b", "char", bidirectional=True)))
    static = e.score_batch(DOC)
    adapted = score_adapting(e, DOC, adapt=Adaptation(lr=0.5))
    assert adapted[1].logprob > static[1].logprob
    assert adapted[1].backward_logprob is not None


# ------------------------------------------------------------------------ the cache

REFRAIN = "row, row, row your boat, gently down the stream."
SONG = [REFRAIN, "merrily merrily merrily merrily", REFRAIN, "life is but a dream.", REFRAIN] * 3


def test_the_cache_learns_what_repeats_in_the_document(engine: Engine) -> None:
    static = engine.score_batch(SONG)
    cached = score_adapting(engine, SONG, adapt=Adaptation(lr=0.0))  # the cache alone
    # μ is 0 until enough tokens had a guess: the first texts are the model's own.
    assert cached[0].logprob == pytest.approx(static[0].logprob, abs=1e-5)
    assert cached[1].logprob == pytest.approx(static[1].logprob, abs=1e-5)
    # Later, each refrain is found whole in the text read: far likelier than the
    # model's own, while the RNN and the n-gram parts are still the trained model's.
    for a, b in zip(cached[-5:], static[-5:], strict=True):
        if a.text == REFRAIN:
            assert a.logprob > b.logprob + 0.5 * b.num_tokens  # half a nat a token at least
        for part in ("rnn_logprob", "ngram_logprob"):  # one text alone, or 15 in a batch
            assert getattr(a, part) == pytest.approx(getattr(b, part), abs=1e-5)
    assert sum(r.logprob for r in cached) > sum(r.logprob for r in static) + 10
    # Nothing of the engine changed, and a second call gives the same scores.
    assert [r.logprob for r in engine.score_batch(SONG)] == [r.logprob for r in static]
    again = score_adapting(engine, SONG, adapt=Adaptation(lr=0.0))
    assert [r.logprob for r in again] == [r.logprob for r in cached]
    # No cache and no step: the static scores.
    off = score_adapting(engine, SONG, adapt=Adaptation(lr=0.0, cache=0))
    assert [r.logprob for r in off] == pytest.approx([r.logprob for r in static], abs=1e-5)


def test_per_token_scores_add_up_with_the_cache(engine: Engine) -> None:
    out = score_adapting(engine, SONG, per_token=True, adapt=Adaptation(lr=0.0))
    for r in out:
        assert r.tokens is not None and len(r.tokens) == r.num_tokens
        assert sum(t.logprob for t in r.tokens) == pytest.approx(r.logprob, abs=1e-6)
    assert all(r.tokens is None for r in score_adapting(engine, SONG[:2]))


def _read(cache: Cache, texts: list[list[int]], vocab: int) -> None:
    for full in texts:
        cache.mix(full, np.full(len(full) - 1, -math.log(vocab)))
        cache.read(full)


def test_the_mixed_distribution_sums_to_one_whatever_is_predicted() -> None:
    """μ and the guess read the history and the texts before only: over every token v
    taken as the one predicted, Σ_v P(v) = 1 (a uniform model under the cache)."""
    vocab, rng = 12, np.random.default_rng(0)
    line = [1, *rng.integers(3, vocab, 30).tolist(), 2]
    cache = Cache(4096)
    _read(cache, [line, line[:20] + [2], line, line], vocab)
    assert cache.mu.max() > 0.5  # fit on the texts read: the repeats are guessed right
    for cut in (1, 5, 12, 31):
        history = line[:cut]
        total = sum(
            math.exp(cache.mix([*history, v], np.full(cut, -math.log(vocab)))[-1])
            for v in range(vocab)
        )
        assert total == pytest.approx(1.0, abs=1e-9)


def test_the_cache_holds_at_most_its_size_and_refits_as_it_grows() -> None:
    vocab, rng = 20, np.random.default_rng(1)
    texts = [[1, *rng.integers(3, vocab, 40).tolist(), 2] for _ in range(6)] * 4
    cache = Cache(100)
    fits = []
    for full in texts:
        _read(cache, [full], vocab)
        assert cache.match is not None and len(cache.match.stream) <= 100
        fits.append(cache.fitted_at)
    assert fits[-1] == cache.seen or cache.seen < 1.5 * fits[-1]  # grown by half: fit again
    assert len(set(fits)) > 2

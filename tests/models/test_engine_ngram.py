"""The engine with an n-gram: scores, samples and top alternatives all under the mixture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlm.models.batch import Batch, sample
from rnnlm.models.checkpoint import Checkpoint, load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.errors import CheckpointError
from rnnlm.models.ngram import histories_of
from rnnlm.models.ngram_next import layout_of
from rnnlm.models.sampling import SampleParams
from rnnlm.models.tokenizers import EOS
from tests.conftest import TEXT, make_checkpoint

TEXTS = ["the cat sat on the mat.", "a dog", "", "zzq!", "the bird sang in the tree."]


KINDS = ["char", "word", "char-buckets", "word-buckets", "char-residual", "word-buckets-residual",
         "char-buckets-match", "word-match", "char-residual-match", "char-gate",
         "char-buckets-gate-match", "word-gate"]  # fmt: skip


@pytest.fixture(scope="module", params=KINDS)
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """A model mixed with its n-gram at one λ, or at a different λ in every mixing bucket;
    a residual model's RNN over that n-gram (models/model.py); a match model mixed in over
    the rest (models/match.py); λ from a gate (models/gate.py)."""
    root = tmp_path_factory.mktemp("mixed")
    kind = request.param.split("-")[0]
    order = 5 if kind == "char" else 3
    path = make_checkpoint(root / "m", kind, ngram_order=order,
                           bucket_weights="buckets" in request.param,
                           residual="residual" in request.param,
                           match_mu=0.3 if "match" in request.param else 0.0,
                           gate="gate" in request.param)  # fmt: skip
    return Engine(load_checkpoint(path))


def _alone(engine: Engine) -> Engine:
    """The same weights without the n-gram."""
    ck = engine.checkpoint
    return Engine(Checkpoint(ck.path, ck.model, ck.tokenizer, ck.config))


def _unmatched(engine: Engine, text: str, p_model: np.ndarray) -> np.ndarray:
    """P of each token of `text` (and <eos>) before the match was mixed in: the model's P
    less μ·[t = guess], over 1 − μ (models/match.py); P itself without a match model."""
    if engine.match is None:
        return p_model
    ids = [engine.start_id, *engine.tokenizer.encode(text), EOS]
    states = engine.match.scan(np.array([ids[:-1]]))[0]
    guess, mu = engine.match.weights(states)
    return (p_model - mu * (guess == np.array(ids[1:]))) / (1 - mu)


def _rnn_part(engine: Engine, text: str) -> list[float]:
    """ln P_rnn of each token of `text` (and <eos>): the RNN alone, or a residual RNN's
    softmax(logits + ln P_ngram), computed here from the model's layers and the n-gram."""
    if not engine.residual:
        return _alone(engine).score_token_ids([engine.tokenizer.encode(text)])[0][1]
    ids = [engine.start_id, *engine.tokenizer.encode(text), EOS]
    inputs = np.array([ids[:-1]], dtype=np.int64)
    assert engine.ngram is not None and engine.model.decoder is not None
    probs = layout_of(engine.ngram).probabilities(histories_of(inputs, engine.ngram.order)[0])
    with torch.no_grad(), np.errstate(divide="ignore"):
        feats, _ = engine.model.features(torch.from_numpy(inputs))
        logits = engine.model.decoder(feats[0]).double() + torch.from_numpy(np.log(probs))
    lp = torch.log_softmax(logits, dim=-1)
    return lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist()


def test_a_residual_model_needs_its_ngram(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "r", "char", ngram_order=3, residual=True)
    ck = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="residual"):
        _alone(Engine(ck))
    with pytest.raises(ValueError, match="prior"):
        ck.model.log_probs(torch.zeros(1, ck.model.config.out_features))
    config = json.loads((path / "config.json").read_text())
    del config["ngram"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="residual model"):
        load_checkpoint(path)


def test_a_score_is_the_mixture_of_its_components(engine: Engine) -> None:
    plain = [_rnn_part(engine, t) for t in TEXTS]
    gated = engine.mix_gate is not None
    parts = engine.score_components([engine.tokenizer.encode(t) for t in TEXTS], features=gated)
    assert engine.mix_table is not None
    for r, p, (_, _, bucket, phi) in zip(engine.score_batch(TEXTS, per_token=True), plain, parts,
                                         strict=True):  # fmt: skip
        assert r.tokens is not None
        assert r.rnn_logprob == pytest.approx(sum(p), abs=1e-4)  # the RNN's part, unchanged
        assert sum(t.logprob for t in r.tokens) == pytest.approx(r.logprob, abs=1e-6)
        if not r.num_tokens:
            continue
        # Per token: ln(λ·P_rnn + (1-λ)·P_ngram), λ that of the history's mixing bucket
        # (one λ for all in a model without buckets), or the gate's from the bucket and
        # φ (tests/models/test_gate.py checks φ); the n-gram's part is what remains.
        lam = engine.mix_table[bucket]
        if engine.mix_gate is not None:
            assert phi is not None
            lam = engine.mix_gate.weights(np.array(bucket), np.array(phi)[:, :2],
                                          np.array(phi)[:, 2:])  # fmt: skip
        p_rnn = np.exp(p)
        p_mix = _unmatched(engine, r.text, np.exp([t.logprob for t in r.tokens]))
        p_ngram = (p_mix - lam * p_rnn) / (1 - lam)
        assert (p_ngram > 0).all()
        assert r.ngram_logprob == pytest.approx(float(np.log(p_ngram).sum()), abs=1e-4)
    # A model that is 80% n-gram scores real text better than its random RNN alone.
    text = TEXT[0]
    rnn = sum(_rnn_part(engine, text))
    assert engine.score_batch([text])[0].logprob > rnn or engine.residual


def test_scores_do_not_depend_on_the_batch(engine: Engine) -> None:
    together = engine.score_batch(TEXTS)
    for text, r in zip(TEXTS, together, strict=True):
        alone = engine.score_batch([text])[0]
        assert alone.logprob == pytest.approx(r.logprob, rel=1e-6, abs=1e-5)
        assert alone.ngram_logprob == pytest.approx(r.ngram_logprob, abs=1e-9)


def test_without_bos_the_first_token_is_context_only(engine: Engine) -> None:
    full = engine.score_batch(["the cat"], per_token=True)[0]
    cut = engine.score_batch(["the cat"], bos=False, per_token=True)[0]
    assert cut.num_tokens == full.num_tokens - 1
    assert cut.logprob != pytest.approx(full.logprob)


def test_the_next_token_distribution_is_a_distribution(engine: Engine) -> None:
    batch = Batch(engine)
    gens = [engine.generation(p, SampleParams(max_tokens=5, seed=1)) for p in ("", "the c", "a")]
    batch.add(gens)
    for _ in range(3):
        assert batch.next_logprobs is not None
        total = batch.next_logprobs.double().exp().sum(-1)
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)
        batch.step()


def test_a_sample_scores_back_to_its_logprob_and_reproduces_in_any_batch(engine: Engine) -> None:
    params = SampleParams(max_tokens=40, seed=11, temperature=0.9, top_k=20)
    alone = sample(engine, "the ", params, n=3)
    p1 = SampleParams(max_tokens=40, seed=11, temperature=0.9, top_k=20)
    crowd = sample(engine, "the ", p1, n=3)  # the same three, side by side
    assert [s.text for s in alone] == [s.text for s in crowd]
    for i, s in enumerate(alone):
        solo = sample(engine, "the ", SampleParams(**{**params.__dict__, "seed": 11 + i}), n=1)[0]
        assert solo.text == s.text and solo.logprob == pytest.approx(s.logprob, abs=1e-4)
        # A sample's logprob is under the model's own distribution: the mixture.
        prompt = engine.score_batch(["the "], eos=False)[0].logprob
        scored = engine.score_batch(["the " + s.text], eos=s.finish_reason == "eos")[0]
        assert s.logprob == pytest.approx(scored.logprob - prompt, abs=1e-3)


def test_greedy_follows_the_mixture(engine: Engine) -> None:
    s = sample(engine, "", SampleParams(max_tokens=8, temperature=0, logprobs=True), n=1)[0]
    assert s.tokens is not None and s.num_tokens >= 1
    # Each greedy token is the argmax of the mixture at its position.
    ids = [t.id for t in s.tokens]
    ended = ids[-1] == EOS
    seq = ids[:-1] if ended else ids
    ((scored_ids, _, tops),) = engine.score_token_ids([seq], eos=ended, top=1)
    assert [alt[0][0] for alt in tops] == scored_ids == ids


def test_top_alternatives_come_from_the_mixture(engine: Engine) -> None:
    r = engine.score_batch(["the cat"], top=3)[0]
    assert r.tokens is not None
    for t in r.tokens:
        assert t.top is not None and len(t.top) == 3
        values = [v for _, v in t.top]
        assert values == sorted(values, reverse=True)
        assert t.logprob <= values[0] + 1e-6
        assert sum(math.exp(v) for v in values) <= 1 + 1e-6


def test_lambda_one_is_the_rnn_alone(tmp_path: Path) -> None:
    ck = load_checkpoint(make_checkpoint(tmp_path / "m", "char", ngram_order=4, mix_weight=1.0))
    mixed, plain = Engine(ck), _alone(Engine(ck))
    for a, b in zip(mixed.score_batch(TEXTS), plain.score_batch(TEXTS), strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
    p = SampleParams(max_tokens=30, seed=5)
    assert [s.text for s in sample(mixed, "", p, 2)] == [s.text for s in sample(plain, "", p, 2)]


def test_a_stream_mode_model_mixes_after_eos(tmp_path: Path) -> None:
    ck = load_checkpoint(make_checkpoint(tmp_path / "s", "char", mode="stream", ngram_order=4))
    engine = Engine(ck)
    r = engine.score_batch(["the cat"])[0]
    assert r.rnn_logprob is not None and r.ngram_logprob is not None
    s = sample(engine, "", SampleParams(max_tokens=20, seed=2), n=1)[0]
    scored = engine.score_batch([s.text], eos=s.finish_reason == "eos")[0]
    assert s.logprob == pytest.approx(scored.logprob, abs=1e-3)


def test_the_sampling_layout_is_built_for_sampling_only(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m", "char", ngram_order=4, mix_weight=0.5)
    scorer = Engine(load_checkpoint(path))
    scorer.score_batch(TEXTS)
    assert scorer.ngram is not None and scorer.ngram.layout is None  # scoring never builds it
    first = sample(scorer, "the", SampleParams(max_tokens=12, seed=3))[0]  # built on first use
    server = Engine(load_checkpoint(path))
    server.prepare_sampling()
    assert server.ngram is not None and server.ngram.layout is not None
    again = sample(server, "the", SampleParams(max_tokens=12, seed=3))[0]
    assert again.text == first.text and again.logprob == first.logprob
    plain = Engine(load_checkpoint(make_checkpoint(tmp_path / "p", "char")))
    plain.prepare_sampling()  # nothing to build


def test_a_residual_models_steps_are_the_same_on_the_host_and_in_torch(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "r", "char", ngram_order=4, residual=True,
                           bucket_weights=True)  # fmt: skip
    host, torch_path = Engine(load_checkpoint(path)), Engine(load_checkpoint(path), host=False)
    p = SampleParams(max_tokens=30, seed=9, logprobs=True)
    a, b = sample(host, "the ", p, 2), sample(torch_path, "the ", p, 2)
    assert [s.text for s in a] == [s.text for s in b]
    for x, y in zip(a, b, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4)

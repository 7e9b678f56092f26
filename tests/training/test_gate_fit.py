"""Fitting the mixing gate (training/mixture.py's `fit_gate`, `choose_gate`) and where
training fits one (`attach_ngram`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.gate import GATE_MAX_VOCAB
from rnnlm.models.ngram import KID_BINS, mix_logprobs
from rnnlm.training import mixture
from rnnlm.training.mixture import attach_ngram, choose_gate, fit_gate, gate_weights
from rnnlm.training.train import TrainConfig, train

SMALL = dict(hidden=48, embedding=16, layers=1, batch_size=16, eval_every=20, warmup=10, lr=0.01)


def _parts(n: int, informative: bool, seed: int = 0):  # type: ignore[no-untyped-def]
    """Tokens where either the RNN or the n-gram is right (P 0.8 against 0.05), which one
    drawn with probability σ(2·z0 − 1.5·z3), z standard normal, φ = z on other scales and
    offsets (as entropies and peaks are: the fit standardises them and must fold that
    back); with `informative` False, φ shuffled, so it says nothing of which."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    truth = 1 / (1 + np.exp(-(2 * z[:, 0] - 1.5 * z[:, 3])))
    phi = z * np.array([5.0, 0.2, 3.0, 0.5]) + np.array([10.0, -3.0, 2.0, -8.0])
    rnn_right = rng.random(n) < truth
    rnn = np.log(np.where(rnn_right, 0.8, 0.05))
    ngram = np.log(np.where(rnn_right, 0.05, 0.8))
    bucket = rng.integers(0, 4, n)
    if not informative:
        phi = phi[rng.permutation(n)]
    return (rnn, ngram, bucket), phi


def test_a_gate_learns_which_part_to_trust_from_the_features() -> None:
    parts, phi = _parts(4000, informative=True)
    table = np.full(KID_BINS, 0.5)  # one context length's buckets: order 1
    gate = fit_gate(parts, phi, table)
    # On φ's own scale the truth's slopes are 2/5 and -1.5/0.5, none on the other two
    # (the likeliest λ is a stretched q, not q itself: the signs and sizes, roughly).
    assert 0.2 < gate.slopes[0] < 1.2 and -8.0 < gate.slopes[3] < -1.5
    assert abs(gate.slopes[1]) < 1.0 and abs(gate.slopes[2]) < 0.1
    rnn, ngram, bucket = parts
    gated = mix_logprobs(rnn, ngram, gate_weights(gate, bucket, phi)).mean()
    assert gated > mix_logprobs(rnn, ngram, table[bucket]).mean() + 0.1  # nats a token
    chosen, gain = choose_gate(parts, phi, order=1, table=table, buckets=False)
    assert chosen is not None and gain > 0.1


def test_a_gate_is_not_kept_where_the_features_say_nothing() -> None:
    parts, phi = _parts(4000, informative=False)
    table = np.full(KID_BINS, 0.5)
    chosen, gain = choose_gate(parts, phi, order=1, table=table, buckets=True)
    assert chosen is None and gain <= 0


def test_a_bucket_with_few_tokens_keeps_the_tables_lambda() -> None:
    parts, phi = _parts(4000, informative=True)
    rnn, ngram, bucket = parts
    bucket = bucket.copy()
    bucket[:5] = 7  # five tokens in bucket 7, all where the RNN is right
    rnn[:5], ngram[:5] = np.log(0.8), np.log(0.05)
    table = np.full(KID_BINS, 0.5)
    gate = fit_gate((rnn, ngram, bucket), phi, table)
    z = gate.bias + gate.slopes @ phi.mean(0)  # λ's logit at the mean φ, by bucket
    assert gate.bias[7] - gate.bias[8] == pytest.approx(0.0, abs=1e-9)  # neither moved
    assert abs(z[0] - z[7]) < 1.0


def test_training_tries_a_gate_for_small_vocabularies_only(
    tmp_path: Path, char_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's n-gram report says what the gate gained on held-out validation text, and
    the gate is in the checkpoint exactly when that is a gain; none is tried above
    GATE_MAX_VOCAB, or where λ is given."""
    cfg = dict(max_steps=10, ngram_order=3, match_len=0, **SMALL)
    train(TrainConfig(**cfg), char_corpus, tmp_path / "run", progress=False)  # type: ignore[arg-type]
    best = tmp_path / "run" / "best"
    section = json.loads((best / "config.json").read_text())["ngram"]
    assert isinstance(section["gate_gain"], float)
    kept = section["gate_gain"] > 0
    assert (section["lambda_gate"] is not None) == kept
    assert (load_checkpoint(best).mix_gate is not None) == kept
    ck = load_checkpoint(best)
    assert ck.tokenizer.vocab_size <= GATE_MAX_VOCAB and ck.ngram is not None
    info = {"source": "estimated"}
    given = attach_ngram(best, ck.ngram, info, char_corpus, weight=0.4, match_len=0)
    assert given["gate_gain"] is None and load_checkpoint(best).mix_gate is None
    monkeypatch.setattr(mixture, "GATE_MAX_VOCAB", ck.tokenizer.vocab_size - 1)
    fitted = attach_ngram(best, ck.ngram, info, char_corpus, match_len=0)
    assert fitted["gate_gain"] is None and fitted["lambda_from"] == "validation"


def test_the_test_splits_features_are_computed_only_for_a_kept_gate(
    tmp_path: Path, char_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """φ needs each part's whole distribution: validation's always where a gate is tried,
    the test split's only once one is kept; the final fit starts from the served table."""
    cfg = dict(max_steps=5, ngram_order=3, match_len=0, **SMALL)
    train(TrainConfig(**cfg), char_corpus, tmp_path / "run", progress=False)  # type: ignore[arg-type]
    best = tmp_path / "run" / "best"
    ck = load_checkpoint(best)
    assert ck.ngram is not None
    asked: list[tuple[int, bool]] = []
    real = mixture.components_and_features

    def spy(checkpoint, ngram, split, max_tokens=None, features=False):  # type: ignore[no-untyped-def]
        asked.append((len(split), features))
        return real(checkpoint, ngram, split, max_tokens, features)

    monkeypatch.setattr(mixture, "components_and_features", spy)
    tables: list[np.ndarray] = []
    for keep in (False, True):
        asked.clear()

        def choose(parts, phi, order, table, buckets, keep=keep):  # type: ignore[no-untyped-def]
            tables.append(table)
            return (fit_gate(parts, phi, table, steps=1), 0.01) if keep else (None, -0.01)

        monkeypatch.setattr(mixture, "choose_gate", choose)
        report = attach_ngram(best, ck.ngram, {"source": "estimated"}, char_corpus, match_len=0)
        assert [f for _, f in asked] == [True, keep]  # validation, then test
        assert (report["lambda_gate"] is not None) == keep
        served = report["lambda_buckets"] or [report["lambda"]] * ck.ngram.buckets()
        np.testing.assert_allclose(tables[-1], served)

"""μ of the match model (training/match_fit.py), and a run that ends with the match model
mixed in: the figures recorded are the served model's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.match import BUCKETS, OCC_CLASSES
from rnnlm.models.weights import MU_MAX, fit_mu
from rnnlm.training.corpus import TokenSplit
from rnnlm.training.match_fit import choose_mu
from rnnlm.training.train import TrainConfig, train

SMALL = dict(hidden=48, embedding=16, layers=1, batch_size=16, eval_every=20, warmup=10, lr=0.01)


def test_mu_is_the_likeliest_share_of_the_guess_in_each_bucket() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    bucket = rng.choice([0, 4, 5, 40], size=n)
    # Bucket 4: the guess right 80% of the time, where the model gives the token 0.1.
    # Bucket 5: right 20%. Bucket 40: never. Bucket 0: no match, whatever.
    p_hit = np.select([bucket == 4, bucket == 5], [0.8, 0.2], 0.0)
    hit = rng.random(n) < p_hit
    model = np.log(np.full(n, 0.1))
    mu = fit_mu(hit, model, bucket)
    assert mu.shape == (BUCKETS,) and mu[0] == 0
    # Σ ln((1-μ)·0.1 + μ·hit) peaks where μ + (1-μ)·0.1 = the share of hits
    assert mu[4] == pytest.approx((0.8 - 0.1) / 0.9, abs=0.05)
    assert mu[5] == pytest.approx((0.2 - 0.1) / 0.9, abs=0.05)
    assert mu[40] == 0
    # A bucket with no tokens of its own takes its length's μ (bucket 6 shares 4's and 5's)
    assert (bucket == 6).sum() == 0 and 1 + (6 - 1) // OCC_CLASSES == 1 + (4 - 1) // OCC_CLASSES
    assert 0 < mu[6] < mu[4]
    # A guess always right is still not certain
    assert fit_mu(np.ones(n, bool), model, np.full(n, 4))[4] == MU_MAX


def test_a_match_that_never_guesses_right_is_left_out() -> None:
    n = 1000
    assert choose_mu(np.zeros(n, bool), np.log(np.full(n, 0.2)), np.full(n, 7)) is None
    assert choose_mu(np.ones(n, bool), np.log(np.full(n, 0.2)), np.full(n, 7)) is not None
    assert choose_mu(np.ones(1, bool), np.zeros(1), np.ones(1, np.int64)) is None  # too few


def test_a_run_ends_with_the_match_model_and_records_what_the_engine_serves(
    tmp_path: Path, char_corpus: Path
) -> None:
    summary = train(TrainConfig(max_steps=10, ngram_order=3, **SMALL), char_corpus,
                    tmp_path / "run", progress=False)  # fmt: skip
    ck = load_checkpoint(tmp_path / "run" / "best")
    # Docstrings repeat: a 10-step RNN and a 3-gram gain from a 64-character match.
    assert ck.match is not None and summary["match"]["kept"]
    assert len(ck.match.stream) == len(TokenSplit(char_corpus, "train").tokens) + len(
        TokenSplit(char_corpus, "train")
    )  # each training line after the start token
    valid = ck.config["ngram"]["perplexity"]["valid"]
    assert valid["with_match"] < valid["mixture"]
    assert summary["test_ppl_mixture"] == ck.config["metrics"]["test_ppl_mixture"]
    # The test perplexity recorded is the served model's: the engine's scores of the split.
    test = TokenSplit(char_corpus, "test")
    seqs = [test.sequence(i)[:-1].tolist() for i in range(len(test))]
    scored = Engine(ck).score_token_ids(seqs)
    lps = [lp for _, lp_row, _ in scored for lp in lp_row]
    assert summary["test_ppl"] == pytest.approx(math.exp(-sum(lps) / len(lps)), rel=1e-5)
    assert summary["test_ppl"] == ck.config["metrics"]["test_ppl"]
    # --match-len 0: none, and the model's figures are the mixture's.
    plain = train(TrainConfig(max_steps=10, ngram_order=3, match_len=0, **SMALL), char_corpus,
                  tmp_path / "plain", progress=False)  # fmt: skip
    assert load_checkpoint(tmp_path / "plain" / "best").match is None
    assert "match" not in plain and plain["test_ppl"] == plain["test_ppl_mixture"]

"""The weight of a two-part mixture w·P_a + (1−w)·P_b that is likeliest on held-out
tokens: λ of the RNN against the n-gram (training/mixture.py), and μ per bucket of a
match model's guess against the rest: the training text's, fit on validation
(training/match_fit.py), and the cache of a document read in order, fit on the text
already read (models/adapt.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from rnnlm.models.match import BUCKETS, LENGTH_CLASSES, OCC_CLASSES, length_class

Floats = np.ndarray[Any, np.dtype[np.float64]]
DEFAULT_WEIGHT = 0.5  # λ where there is no validation text to fit it on
MIN_BUCKET_TOKENS = 50  # tokens a match bucket needs for a μ of its own
MU_MAX = 0.999  # a guess is never certain: a wrong one keeps 0.1% of the model's P


def fit_mixing_weight(rnn: Floats, ngram: Floats) -> float:
    """The λ in [0, 1] that maximises Σ ln(λ·P_rnn + (1−λ)·P_ngram) (natural-log inputs).

    The sum is concave in λ, so its derivative Σ (r − 1) / (1 + λ·(r − 1)), with
    r = P_rnn / P_ngram per token, falls from λ = 0 to λ = 1: the best λ is an end
    where the derivative keeps its sign, else where it crosses zero (bisection, to
    1e-9: EM's fixed point, reached without EM's slow crawl near an end).
    """
    if not len(rnn):
        return DEFAULT_WEIGHT
    r = np.exp(np.clip(np.asarray(rnn, np.float64) - np.asarray(ngram, np.float64), -700, 700))

    def slope(lam: float) -> float:
        # -inf at λ = 1 where the first part gives a token 0 (a match's wrong guess).
        with np.errstate(divide="ignore"):
            return float(np.sum((r - 1.0) / (1.0 + lam * (r - 1.0))))

    if slope(0.0) <= 0:
        return 0.0
    if slope(1.0) >= 0:
        return 1.0
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-9:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def fit_mu(hit: np.ndarray[Any, Any], model: Floats, bucket: np.ndarray[Any, Any]) -> Floats:
    """μ per match bucket (BUCKETS,) from each token's hit (the guess was it), the model's
    ln P of it without the match, and its bucket (models/match.py's `bucket`; 0: no
    guess, μ 0). A bucket with fewer than MIN_BUCKET_TOKENS tokens takes the μ of its
    length class, or failing that the μ of every guess."""
    with np.errstate(divide="ignore"):
        guess = np.log(hit.astype(np.float64))  # ln P_guess(t): 0 or -inf
    mu = np.zeros(BUCKETS)
    some = bucket > 0
    if not some.any():
        return mu
    mu[1:] = min(fit_mixing_weight(guess[some], model[some]), MU_MAX)
    lc = length_class(np.maximum(bucket, 1))
    for c in range(LENGTH_CLASSES):
        m = some & (lc == c)
        if m.sum() >= MIN_BUCKET_TOKENS:
            first = 1 + c * OCC_CLASSES
            mu[first : first + OCC_CLASSES] = min(fit_mixing_weight(guess[m], model[m]), MU_MAX)
    for b in range(1, BUCKETS):
        m = bucket == b
        if m.sum() >= MIN_BUCKET_TOKENS:
            mu[b] = min(fit_mixing_weight(guess[m], model[m]), MU_MAX)
    return mu

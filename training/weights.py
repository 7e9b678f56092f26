"""The weight of a two-part mixture w·P_a + (1−w)·P_b that is likeliest on held-out
tokens: λ of the RNN against the n-gram (training/mixture.py), μ of the match model's
guess against the rest (training/match_fit.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

Floats = np.ndarray[Any, np.dtype[np.float64]]
DEFAULT_WEIGHT = 0.5  # λ where there is no validation text to fit it on


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

"""The match model into a checkpoint: its text (the training split as the model read
it) and μ per bucket, fit on the validation split over the model without it.

μ is the match's share in (1 − μ)·P + μ·[t = guess] (models/match.py), fit by maximum
likelihood as λ is (models/weights.py's `fit_mixing_weight`: the log-likelihood is
concave in μ), one per bucket of the match's length and occurrences: a bucket with
fewer than `MIN_BUCKET_TOKENS` validation tokens takes the μ of its length, or failing
that the μ of every match. The match is kept only where it predicts held-out text
better than the model without it (fit on one half of the validation tokens, scored on
the other, and the other way round), as the λ buckets are.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from rnnlm.models.match import BUCKETS, MatchModel, training_stream
from rnnlm.models.ngram import mix_logprobs
from rnnlm.models.tokenizers import EOS, PAD
from rnnlm.models.weights import fit_mu
from rnnlm.training.corpus import TokenSplit

Floats = np.ndarray[Any, np.dtype[np.float64]]
Ints = np.ndarray[Any, np.dtype[np.int64]]
_ROWS = 256  # sequences scanned at a time


def build_match(train: TokenSplit, start: int, mode: str, max_len: int) -> MatchModel:
    """The match model of the training split (μ 0 until fit)."""
    stream = training_stream((train.sequence(i) for i in range(len(train))), start, mode)
    return MatchModel(stream, np.zeros(BUCKETS), max_len)


def states_before(
    match: MatchModel, seqs: Sequence[Sequence[int]], start: int
) -> tuple[Ints, Ints]:
    """The match's state before every token the engine scores of `seqs` (each without
    its <eos>: the tokens, then <eos>, after the start token), in that order: (N, 3),
    and the tokens (N,)."""
    states, targets = [], []
    for i in range(0, len(seqs), _ROWS):
        chunk = [[start, *s] for s in seqs[i : i + _ROWS]]
        lens = np.array([len(c) for c in chunk])
        ids = np.full((len(chunk), int(lens.max())), PAD, np.int64)
        for r, c in enumerate(chunk):
            ids[r, : len(c)] = c
        at = np.arange(ids.shape[1]) < lens[:, None]
        states.append(match.scan(ids, lens)[at])
        targets.append(np.concatenate([[*c[1:], EOS] for c in chunk]).astype(np.int64))
    if not states:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
    return np.concatenate(states), np.concatenate(targets)


def with_match(model: Floats, hit: np.ndarray[Any, Any], mu: Floats) -> Floats:
    """ln((1 − μ)·P + μ·[t = guess]) per token: models/ngram.py's mixture."""
    with np.errstate(divide="ignore"):
        guess = np.log(hit.astype(np.float64))
    return mix_logprobs(model, guess, 1.0 - mu)


def choose_mu(hit: np.ndarray[Any, Any], model: Floats, bucket: Ints) -> Floats | None:
    """μ per bucket if the match predicts held-out validation text better than the model
    without it (two-fold, over the two halves of the tokens), else None."""
    half = len(model) // 2
    if not half:
        return None
    gain = 0.0
    halves = (slice(0, half), slice(half, None))
    for fit_on, score_on in (halves, halves[::-1]):
        mu = fit_mu(hit[fit_on], model[fit_on], bucket[fit_on])
        scored = with_match(model[score_on], hit[score_on], mu[bucket[score_on]])
        gain += float(scored.sum() - model[score_on].sum())
    return fit_mu(hit, model, bucket) if gain > 0 else None


def fit_match(
    match: MatchModel,
    valid_seqs: Sequence[Sequence[int]],
    valid_model: Floats,
    start: int,
) -> tuple[MatchModel | None, dict[str, Any]]:
    """μ fit on the validation tokens (the model's ln P of each without the match, in
    `states_before`'s order): the match model, or None where it does not pay."""
    t0 = time.monotonic()
    states, targets = states_before(match, valid_seqs, start)
    guess, bucket = match.guess(states)
    hit = guess == targets
    mu = choose_mu(hit, valid_model, bucket)
    report = {
        "max_len": match.max_len,
        "tokens": len(match.stream),
        "valid_guessed": float(hit.mean()) if len(hit) else None,
        "valid_matched": float((states[:, 0] > 0).mean()) if len(hit) else None,
        "mu_from": "validation" if mu is not None else "dropped: no gain on held-out text",
        "seconds": round(time.monotonic() - t0, 2),
    }
    if mu is None:
        return None, report
    return MatchModel(match.stream, mu, match.max_len, match._index), report


def test_logprobs(
    match: MatchModel, seqs: Sequence[Sequence[int]], model: Floats, start: int
) -> Floats:
    """The model's ln P of each token of `seqs` with the match mixed in, from its ln P
    without (in `states_before`'s order)."""
    states, targets = states_before(match, seqs, start)
    return match.token_logprobs(model, targets, states)  # the engine's own

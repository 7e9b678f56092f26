"""Estimating the n-gram inside a model: interpolated modified Kneser-Ney.

The same model KenLM's `lmplz` builds (Chen & Goodman 1998; Heafield et al.
2013), over the corpus's own token ids, in the stages `lmplz` runs, each a few
numpy calls over sorted arrays of packed n-gram keys (no Python dict anywhere):

1. count      every window of 1..N tokens that fits inside a sequence
              `<s> t1 … tn </s>` (`<s>`: the model's start token), never one
              that ends at `<s>`. A window of order k is keyed by the index of
              its last k-1 tokens at order k-1 and its first token (the trie of
              models/ngram.py), so one `np.unique` per order counts it.
2. adjust     the highest order keeps its counts; a lower-order n-gram's count
              becomes the number of distinct tokens seen before it (its
              continuation count), except an n-gram that starts with `<s>`,
              which nothing can precede: it keeps its count.
3. discount   three per order from the count-of-counts n1..n4 of the adjusted
              counts: Y = n1/(n1+2·n2), D_j = j − (j+1)·Y·n_{j+1}/n_j. Where
              they cannot be computed (some n_j is 0, or D_j is outside
              [0, j], as for a small character alphabet) the fallback KenLM
              uses with --discount_fallback: 0.5, 1, 1.5, and a note says so.
4. initial    u(w | h) = (a(h w) − D(a(h w))) / Σ_v a(h v) and the mass left
              for the shorter context γ(h) = Σ_j D_j·N_j(h•) / Σ_v a(h v).
5. interpolate  P(w | h) = u(w | h) + γ(h)·P(w | h without its oldest token),
              down to the uniform distribution over the tokens a model can
              predict (all but `<pad>` and `<bos>`). γ(h) is the backoff weight
              of h, as in the ARPA file lmplz writes.

Memory: the token ids, copied once with a start token per sequence, plus a few
arrays of one int64 per token at a time (about 40 bytes per training token at
the peak), plus the model itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnnlm.models.errors import RnnlmError
from rnnlm.models.ngram import NgramModel
from rnnlm.models.tokenizers import BOS, PAD

FALLBACK = (0.5, 1.0, 1.5)  # KenLM's --discount_fallback defaults

Array = np.ndarray[Any, np.dtype[Any]]


@dataclass
class Estimate:
    """What estimation produced, besides the model: for config.json and the logs."""

    order: int
    counts: list[int]  # n-grams per order
    discounts: list[list[float]]  # [D1, D2, D3+] per order
    fallback_orders: list[int] = field(default_factory=list)  # orders that used FALLBACK
    tokens: int = 0
    sequences: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "counts": self.counts,
            "discounts": [[round(d, 6) for d in ds] for ds in self.discounts],
            "fallback_orders": self.fallback_orders,
            "tokens": self.tokens,
            "sequences": self.sequences,
            "seconds": round(self.seconds, 2),
        }


def discounts(adjusted: Array) -> tuple[list[float], bool]:
    """Modified Kneser-Ney's D1, D2, D3+ from one order's adjusted counts; and
    whether the fallback had to stand in (Chen & Goodman eq. 26, as lmplz)."""
    n = [int(np.count_nonzero(adjusted == j)) for j in range(5)]  # n[j]: how many have count j
    if min(n[1], n[2], n[3]) == 0:
        return list(FALLBACK), True
    y = n[1] / (n[1] + 2 * n[2])
    d = [j - (j + 1) * y * n[j + 1] / n[j] for j in (1, 2, 3)]
    if any(not 0 <= dj <= j for j, dj in zip((1, 2, 3), d, strict=True)):
        return list(FALLBACK), True
    return d, False


def _discount_of(adjusted: Array, d: list[float]) -> Array:
    """D(a) for each adjusted count a: 0, D1, D2, D3+ for a = 0, 1, 2, >= 3."""
    table = np.array([0.0, *d], dtype=np.float64)
    out: Array = table[np.minimum(adjusted, 3)]
    return out


def with_starts(tokens: Array, offsets: Array, start_id: int) -> tuple[Array, Array]:
    """The sequences as `<s> t1 … tn </s>` back to back, and for each position how
    many tokens its sequence has up to and including it (1 at each `<s>`)."""
    lengths = np.diff(offsets).astype(np.int64) + 1
    seq = np.insert(np.asarray(tokens, dtype=np.int32), offsets[:-1], start_id)
    firsts = np.cumsum(lengths) - lengths  # where each sequence's <s> now sits
    avail = np.arange(len(seq), dtype=np.int64) - np.repeat(firsts, lengths) + 1
    return seq, avail.astype(np.int32)


def estimate(
    tokens: Array,
    offsets: Array,
    order: int,
    vocab_size: int,
    start_id: int = BOS,
    fallback_note: Any = None,
) -> tuple[NgramModel, Estimate]:
    """Interpolated modified Kneser-Ney of `order` over sequences `tokens[offsets[i]:
    offsets[i+1]]` (each ending in `</s>`, as the corpus stores them)."""
    t0 = time.monotonic()
    if order < 1:
        raise RnnlmError(f"the n-gram order must be at least 1, not {order}")
    if len(offsets) < 2 or offsets[-1] == 0:
        raise RnnlmError("no training text to estimate an n-gram from")
    V = vocab_size
    seq, avail = with_starts(tokens, offsets, start_id)
    if seq.max() >= V or seq.min() < 0:
        raise RnnlmError(f"token ids outside the vocabulary of {V}")
    # ---- 1. count. Order 1: every position but the starts.
    raw = [np.bincount(seq[avail >= 2], minlength=V).astype(np.int64)]
    keys: list[Array] = [np.zeros(0, np.int64)]
    ctxs: list[Array] = [np.zeros(0, np.int64)]  # per n-gram: the index of its context
    rank_prev: Array = seq.astype(np.int64)  # index at the previous order, per position
    for k in range(2, order + 1):
        pos = np.flatnonzero(avail >= k)  # none when no sequence is k tokens long: then
        key = rank_prev[pos] * V + seq[pos - k + 1]  # this order stays empty
        uniq, first, inverse, count = np.unique(
            key, return_index=True, return_inverse=True, return_counts=True
        )
        del key
        # The context (w1 … wk-1) of each n-gram is the (k-1)-gram that ends one
        # position earlier, wherever the n-gram occurs: take its first occurrence.
        ctxs.append(rank_prev[pos[first] - 1])
        keys.append(uniq)
        raw.append(count.astype(np.int64))
        rank = np.full(len(seq), -1, np.int64)
        rank[pos] = inverse.reshape(-1)
        del pos, first, inverse
        rank_prev = rank
    del rank_prev, seq, avail
    # ---- 2. adjust.
    adjusted = [raw[order - 1]]
    for k in range(order - 1, 0, -1):
        continuation = np.bincount(keys[k] // V, minlength=len(raw[k - 1])).astype(np.int64)
        if k == 1:
            adjusted.insert(0, continuation)
        else:
            begins = keys[k - 1] % V == start_id  # nothing precedes <s>: its own count
            adjusted.insert(0, np.where(begins, raw[k - 1], continuation))
    # ---- 3. discount.
    ds, fallback = [], []
    for k in range(1, order + 1):
        d, fell_back = discounts(adjusted[k - 1])
        ds.append(d)
        if fell_back:
            fallback.append(k)
            if fallback_note is not None:
                fallback_note(
                    f"n-gram: order {k}: discounts fall back to {FALLBACK} (count-of-counts "
                    "too sparse for modified Kneser-Ney, as for a small alphabet)"
                )
    # ---- 4. initial probabilities and backoffs; 5. interpolate, from order 1 up.
    predictable = np.ones(V, bool)
    predictable[[PAD, BOS]] = False
    a1 = adjusted[0].astype(np.float64)
    total = a1.sum()
    gamma0 = (_discount_of(adjusted[0], ds[0]) * (adjusted[0] > 0)).sum() / total
    p = (a1 - _discount_of(adjusted[0], ds[0])).clip(min=0) / total
    p = np.where(predictable, p + gamma0 / predictable.sum(), 0.0)
    probs: list[Array] = [p]
    backoffs: list[Array] = []
    for k in range(2, order + 1):
        a, ctx = adjusted[k - 1], ctxs[k - 1]
        n_ctx = len(probs[k - 2])
        af = a.astype(np.float64)
        d_of = _discount_of(a, ds[k - 1])
        denom = np.bincount(ctx, weights=af, minlength=n_ctx)
        mass = np.bincount(ctx, weights=d_of, minlength=n_ctx)
        has = denom > 0
        gamma = np.where(has, mass / np.where(has, denom, 1.0), 1.0)  # no children: back off whole
        u = (af - d_of) / denom[ctx]
        probs.append(u + gamma[ctx] * probs[k - 2][keys[k - 1] // V])
        backoffs.append(gamma)
    with np.errstate(divide="ignore"):
        logprob = [np.log(pk).astype(np.float32) for pk in probs]
    model = NgramModel(
        order=order,
        vocab_size=V,
        start_id=start_id,
        keys=[k.astype(np.int64) for k in keys],
        logprob=logprob,
        backoff=[np.log(g).astype(np.float32) for g in backoffs],
    )
    info = Estimate(
        order=order,
        counts=model.counts(),
        discounts=ds,
        fallback_orders=fallback,
        tokens=int(offsets[-1]),
        sequences=len(offsets) - 1,
        seconds=time.monotonic() - t0,
    )
    return model, info

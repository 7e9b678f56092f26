"""The n-gram's next-token distribution, for sampling: where each history stands in
the n-gram, advanced one token at a time, and P(· | history) from there.

Sampling asks for the whole distribution after every token. Walking a history
down the trie (models/ngram.py) takes one binary search per order, one after
the other (each context's index is the next one's key): nine searches over
tables of up to 650,000 keys for a character 10-gram, each a dozen cache misses.
Instead, a row carries its *contexts* from token to token, as KenLM's decoder
carries its state: `contexts[r, j-1]` is the stored context of the row's last j
tokens, as a number among all contexts (those of one token first, then of two,
…), or -1 past the longest one stored. After token t, the context of j+1 tokens
is (the old context of j tokens, t): a continuation of that context, if stored.
Every context's continuations lie in one array sorted by (context, last token),
so one search over it finds the new contexts of every row and every order at
once (`advance`); a prompt is walked the long way once (`contexts`).

The distribution (`distribution`) gathers the continuations of every row's
contexts in one pass: a stored probability is written once, at the longest
context that continues with it (each continuation knows its own place after
the context one token shorter, and marks it as overridden), divided by the
backoff factor up to that context; the caller applies each row's whole factor.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnlm.models.ngram import KID_BINS, Floats, Int64s, kid_bin

if TYPE_CHECKING:
    from rnnlm.models.ngram import NgramModel


def layout_of(model: NgramModel) -> NextTokens:
    """The model's layout for next-token distributions, built on first use (0.6 s for a
    character 10-gram of 2.6M n-grams) and kept on the model (`NgramModel.layout`)."""
    if model.layout is None:
        model.layout = NextTokens(model)
    layout: NextTokens = model.layout
    return layout


class NextTokens:
    """An n-gram's contexts and their continuations, laid out for sampling. Built once
    per model: about 28 bytes per n-gram beside the model's own 15 and its index's 7."""

    def __init__(self, model: NgramModel) -> None:
        self.model = model
        n, V = model.order, model.vocab_size
        self.order, self.vocab_size = n, V
        self.unigram = np.exp(model.logprob[0].astype(np.float64))  # (V,)
        # Per context (all lengths, one after another): where its continuations start, the
        # ln of the backoff factor of a history whose longest stored context it is (the sum
        # over its suffixes), and such a history's mixing bucket.
        base, offsets, backed, bucket = [], [], [], []
        # Per continuation (sorted by context, then last token): the key context · V +
        # last token, the stored ln P, where the same continuation of the context one token
        # shorter lies, and what it is as a context of its own.
        key, last, logprob, shorter, context = [], [], [], [], []
        n_ctx = n_cont = 0
        last_k = np.arange(V, dtype=np.int64)  # the last token of every n-gram of order j
        place_prev = np.zeros(0, np.int64)  # where each n-gram of order j lies among entries
        for j in range(1, n):  # contexts of j tokens, continued by the n-grams of order j+1
            off = model.children(j + 1)[0]
            sizes = np.diff(off)
            ctx = model.context_index(j + 1)  # each (j+1)-gram's context, at order j
            last_k = last_k[model.keys[j] // V]
            order = np.argsort(ctx * V + last_k, kind="stable")
            base.append(n_ctx)
            offsets.append(off[:-1] + n_cont)
            seen = sizes > 0
            own = np.where(seen, j * KID_BINS + kid_bin(np.maximum(sizes, 1)), 0)
            if j == 1:
                backed.append(model.backoff[0].astype(np.float64))
                bucket.append(own)
                shorter.append(np.full(len(order), -1, np.int64))
            else:  # the context without its oldest token, at order j-1
                suffix = model.keys[j - 1] // V
                backed.append(backed[-1][suffix] + model.backoff[j - 1])
                bucket.append(np.where(seen, own, bucket[-1][suffix]))
                # (w2 … wj+1): an n-gram of order j, continuing a context of j-1 tokens
                shorter.append(place_prev[model.keys[j][order] // V])
            key.append((ctx[order] + n_ctx) * V + last_k[order])
            last.append(last_k[order])
            logprob.append(model.logprob[j][order])
            # As a context of j+1 tokens, if the history is that long.
            as_ctx = order + n_ctx + model.size(j) if j + 1 < n else np.full(len(order), -1)
            context.append(as_ctx)
            place_prev = np.empty(len(order), np.int64)
            place_prev[order] = np.arange(n_cont, n_cont + len(order))
            n_ctx += model.size(j)
            n_cont += len(order)
        offsets.append(np.array([n_cont], np.int64))
        small = np.int32 if n_ctx + n_cont < 2**31 else np.int64
        self.base = np.array(base, np.int64)  # (n-1,) where the contexts of j tokens start
        self.offsets = _joined(offsets, small)
        self.backed = _joined(backed, np.float64)
        self.bucket = _joined(bucket, np.int16)
        # Sorted; 32 bits where they fit (searched as such: 4 bytes a key less to miss).
        self.key = _joined(key, np.int32 if n_ctx * V < 2**31 else np.int64)
        self.last = _joined(last, np.int16 if V <= 2**15 else np.int32)  # the key's token
        self.logprob = _joined(logprob, np.float32)
        self.shorter = _joined(shorter, small)
        self.context = _joined(context, small)

    def nbytes(self) -> int:
        arrays = [self.offsets, self.backed, self.bucket, self.key, self.last, self.logprob]
        return int(sum(a.nbytes for a in [*arrays, self.shorter, self.context]))

    # ----------------------------------------------------------------- contexts

    def contexts(self, histories: Int64s) -> Int64s:
        """Each history's stored contexts: histories (B, order-1) -> (B, order-1), the
        newest token last, -1 where the history is shorter or the n-gram never saw it."""
        walked = self.model.walk(histories)  # indices within each order
        return np.where(walked >= 0, walked + self.base, -1)

    def advance(self, contexts: Int64s, tokens: Int64s) -> Int64s:
        """The contexts after each row's next token: (B, order-1), tokens (B,) -> (B, order-1).

        The same as `contexts` of the histories with the token appended, by one search."""
        n, V = self.order, self.vocab_size
        out = np.empty(contexts.shape, np.int64)
        if n == 1:
            return out
        out[:, 0] = tokens  # every token is a context of one token (order 1 is dense)
        if n > 2:
            old = contexts[:, : n - 2]  # (B, n-2): contexts of 1 … n-2 tokens continue
            want = (old * V + np.asarray(tokens, dtype=np.int64)[:, None]).astype(self.key.dtype)
            pos = np.searchsorted(self.key, want.reshape(-1)).reshape(want.shape)
            np.minimum(pos, len(self.key) - 1, out=pos)
            found = (self.key[pos] == want) & (old >= 0)
            out[:, 1:] = np.where(found, self.context[pos], -1)
        return out

    # ------------------------------------------------------------- distribution

    def distribution(
        self, contexts: Int64s, dtype: type
    ) -> tuple[np.ndarray[Any, Any], Floats, Int64s]:
        """P(· | history) but for a factor per row (B, V), the factor (B,), and each row's
        mixing bucket (B,), from the rows' contexts (B, order-1)."""
        V = self.vocab_size
        B = contexts.shape[0]
        probs: np.ndarray[Any, Any] = np.empty((B, V), dtype=dtype)
        probs[:] = self.unigram
        if B == 1:
            return self._distribution_one(contexts[0], probs)
        stored_at = contexts >= 0
        rows, cols = stored_at.nonzero()  # row-major: each row's contexts, shortest first
        if not len(rows):
            return probs, np.ones(B), np.zeros(B, np.int64)
        g = contexts[rows, cols]
        # A row's factor and bucket are those of its longest stored context.
        longest = contexts[np.arange(B), np.maximum(stored_at.sum(axis=1) - 1, 0)]
        factor = np.where(longest >= 0, np.exp(self.backed[longest]), 1.0)
        bucket = np.where(longest >= 0, self.bucket[longest], 0).astype(np.int64)
        # Every continuation of every context (E entries), grouped as `g`.
        lo = self.offsets[g].astype(np.int64)
        sizes = self.offsets[g + 1] - lo
        shift = lo - (np.cumsum(sizes) - sizes)  # entry i of group k lies at shift[k] + i
        group = np.repeat(np.arange(len(g)), sizes)
        flat = np.arange(len(group)) + shift[group]
        # A continuation also stored after the next longer context is written there: each
        # entry of a context of 2 or more tokens marks its own entry one context shorter
        # (in the previous group, the same row's), which is then left out, so that no
        # index repeats in the one assignment below (numpy leaves the order in which it
        # writes repeated indices unspecified).
        longer = cols[group] > 0
        keep = np.ones(len(group), bool)
        keep[self.shorter[flat[longer]] - shift[group[longer] - 1]] = False
        flat, group = flat[keep], group[keep]
        # Stored, divided by the backoff factor up to its context (the caller multiplies by
        # the row's whole factor): ln P - the context's backed-off sum.
        stored = np.exp(self.logprob[flat] - self.backed[g][group])
        probs.reshape(-1)[rows[group] * V + self.last[flat]] = stored
        return probs, factor, bucket

    def probabilities(
        self, histories: Int64s, scale: float = 1.0, dtype: type = np.float64
    ) -> np.ndarray[Any, Any]:
        """scale · P(· | history) over the whole vocabulary: histories (B, order-1) -> (B, V).

        Each row sums to `scale` (ids never predicted have 0)."""
        probs, factor, _ = self.distribution(self.contexts(histories), dtype)
        probs *= (factor * scale).astype(dtype)[:, None]
        return probs

    def mixture_part(
        self, histories: Int64s, weights: Floats, dtype: type = np.float64
    ) -> tuple[np.ndarray[Any, Any], Int64s]:
        """The n-gram's share of a mixture whose λ (the RNN's share) is `weights[bucket]`:
        ((1 − λ) · P(· | history) (B, V), each row's bucket (B,)), for histories (B, order-1)."""
        return self.mixture_part_at(self.contexts(histories), weights, dtype)

    def mixture_part_at(
        self, contexts: Int64s, weights: Floats, dtype: type = np.float64
    ) -> tuple[np.ndarray[Any, Any], Int64s]:
        """`mixture_part` from the rows' contexts (`contexts` of the histories, or
        `advance`d from the last ones): what sampling asks after each token."""
        probs, factor, bucket = self.distribution(contexts, dtype)
        lam = np.asarray(weights, np.float64)[bucket]
        probs *= (factor * (1.0 - lam)).astype(dtype)[:, None]
        return probs, bucket

    def log_probabilities_at(
        self, contexts: Int64s, dtype: type = np.float64
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], Int64s]:
        """ln P(· | history) (B, V), the prior a residual model's logits are added to
        (models/model.py; -inf for ids never predicted), P itself (B, V, a new array the
        caller may change) and each row's mixing bucket (B,), from the rows' contexts."""
        probs, factor, bucket = self.distribution(contexts, dtype)
        probs *= factor.astype(dtype)[:, None]
        with np.errstate(divide="ignore"):
            log_probs = np.log(probs)
        return log_probs, probs, bucket

    def prior_and_part_at(
        self, contexts: Int64s, weights: Floats, dtype: type = np.float64
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], Int64s]:
        """What a residual model asks after each token: ln P(· | history) (B, V), and
        `mixture_part_at`'s (1 − λ)·P (B, V) and buckets, from one distribution."""
        prior, probs, bucket = self.log_probabilities_at(contexts, dtype)
        probs *= (1.0 - np.asarray(weights, np.float64)[bucket]).astype(dtype)[:, None]
        return prior, probs, bucket

    def _distribution_one(
        self, contexts: Int64s, probs: np.ndarray[Any, Any]
    ) -> tuple[np.ndarray[Any, Any], Floats, Int64s]:
        """`distribution` of one row, context by context with slices: what sampling one
        stream asks after every token (half the numpy calls of the batched path, each on
        a slice rather than an index array)."""
        stored = [c for c in contexts.tolist() if c >= 0]  # shortest first
        if not stored:
            return probs, np.ones(1), np.zeros(1, np.int64)
        spans = self.offsets[np.array(stored)[:, None] + _SPAN].tolist()
        backed = self.backed[stored].tolist()
        row = probs[0]
        for (lo, hi), b in zip(spans, backed, strict=True):
            if hi > lo:  # a longer context writes after, over what a shorter one wrote
                row[self.last[lo:hi]] = np.exp(
                    np.subtract(self.logprob[lo:hi], b, dtype=np.float64)
                )
        factor = np.array([math.exp(backed[-1])])
        return probs, factor, np.array([self.bucket[stored[-1]]], np.int64)


_SPAN = np.array([0, 1])  # a context's first continuation, and the next context's


def _joined(parts: list[Any], dtype: type) -> np.ndarray[Any, Any]:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

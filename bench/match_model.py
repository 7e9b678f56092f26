"""A match model over the training text: the longest stretch of it that ends as the
history ends, and what followed each time.

Issue #31, lever 3; an experiment `bench/mixers.py` mixes in, not served. Compressors
(lpaq, paq8, cmix) keep a *match model*: find the longest earlier stretch of the input
that ends like the current context and predict the byte that came after it. A
character 10-gram sees nine characters back; a match reaches `max_len` tokens back,
to a whole repeated line. Here the earlier text is the training split, and every
occurrence of that stretch counts, not only the last:

    P_match(t | h) = n(s t) / n(s),   s = the longest suffix of h that occurs in the
                                      training text followed by a token

(Liu et al. 2024 call this the ∞-gram). s depends on the history only, so P_match is a
distribution over the vocabulary whatever the token predicted.

The index is a suffix array of the training stream read backwards, sorted on the first
`max_len` tokens only (prefix doubling; entries equal that far may lie in any order,
which no query can tell apart). Read backwards, the history's suffixes are the prefixes
of one query, so lengthening the match by a token narrows the query's interval of the
array to the entries with that token at that offset: two binary searches, for every
position at once (numpy, lockstep). The continuations are counted with a rank table:
for every `block` entries of the array, how many of each next token came before.

`counted_part` makes the counts a distribution for `bench/mixers.py`, `match_bucket`
and `match_features` what its mixers read of the match: functions of the history only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlm.models.match import sort_by_prefix  # the served match model's sort

Ints = np.ndarray[Any, np.dtype[np.int64]]
# ln P where a part gives exactly 0 (the counts' unseen tokens, the RNN's specials), for
# every part the mixers mix: finite, so 0 · ln P = 0.
FLOOR = -50.0


def training_stream(sequences: Iterable[np.ndarray[Any, Any]], start: int) -> Ints:
    """The texts as the model reads them, one after another: each from the start token to
    its <eos> (each sequence given with its <eos>)."""
    parts = [np.concatenate([[start], np.asarray(s, np.int64)]) for s in sequences]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class MatchIndex:
    """The training stream's match model: `lookup(histories)` -> each history's longest
    match length and the counts of the tokens that followed it."""

    def __init__(self, stream: Ints, vocab: int, max_len: int = 64, block: int = 128) -> None:
        self.vocab, self.max_len, self.block = vocab, max_len, block
        rev = np.ascontiguousarray(stream[::-1], dtype=np.int64)
        self.n = n = len(rev)
        self.sa = sort_by_prefix(rev, max_len)
        # The token at offset d of the entry at j is rev_pad[sa[j] + d]; -1 past the end,
        # below every token as in the sort.
        self.rev_pad = np.concatenate([rev, np.full(max_len + 1, -1, np.int64)])
        # What followed each occurrence: the token before it in the reversed stream.
        # `vocab` where nothing did (the stream's last token).
        nxt = np.where(self.sa > 0, rev[np.maximum(self.sa - 1, 0)], vocab)
        self.nxt_pad = np.concatenate([nxt, np.full(block, vocab, np.int64)])
        blocks = (n + block - 1) // block
        width = vocab + 1
        padded = np.concatenate([nxt, np.full(blocks * block - n, vocab, np.int64)])
        per_block = np.bincount(np.repeat(np.arange(blocks), block) * width + padded,
                                minlength=blocks * width).reshape(blocks, width)  # fmt: skip
        self.cum = np.zeros((blocks + 1, width), np.int64)  # counts of nxt[: b·block]
        self.cum[1:] = np.cumsum(per_block, axis=0)

    def _lower_bound(self, lo: Ints, hi: Ints, token: Ints, offset: int) -> Ints:
        """Per row, the first j in [lo, hi) whose entry's token at `offset` is >= token
        (the entries in [lo, hi) share their first `offset` tokens, so sorted on it)."""
        a, b = lo.copy(), hi.copy()
        while True:
            open_ = a < b
            if not open_.any():
                return a
            mid = (a + b) // 2
            at = self.rev_pad[self.sa[np.minimum(mid, self.n - 1)] + offset]
            right = open_ & (at < token)
            a = np.where(right, mid + 1, a)
            b = np.where(open_ & ~right, mid, b)

    def interval(self, histories: Ints) -> tuple[Ints, Ints, Ints]:
        """histories (N, W), newest last, -1 before the start -> (length, lo, hi): the
        longest suffix (at most max_len tokens) that occurs, and its entries [lo, hi)."""
        query = histories[:, ::-1][:, : self.max_len]  # newest first
        qlen = (query >= 0).sum(1)
        N = len(query)
        lo, hi = np.zeros(N, np.int64), np.full(N, self.n, np.int64)
        length = np.zeros(N, np.int64)
        alive = np.arange(N)
        for d in range(query.shape[1]):
            alive = alive[qlen[alive] > d]
            if not len(alive):
                break
            tok = query[alive, d]
            new_lo = self._lower_bound(lo[alive], hi[alive], tok, d)
            new_hi = self._lower_bound(new_lo, hi[alive], tok + 1, d)
            found = new_hi > new_lo
            alive = alive[found]
            lo[alive], hi[alive], length[alive] = new_lo[found], new_hi[found], d + 1
        return length, lo, hi

    def _counts_below(self, ends: Ints) -> Ints:
        """(N, V+1): how many of each next token among entries [0, end) of each row."""
        base = (ends // self.block) * self.block
        out: Ints = self.cum[ends // self.block].copy()
        offs = np.arange(self.block)
        tok = self.nxt_pad[base[:, None] + offs]  # (N, block)
        take = offs < (ends - base)[:, None]
        rows = np.broadcast_to(np.arange(len(ends))[:, None], tok.shape)
        width = self.vocab + 1
        flat = (rows * width + tok)[take]
        out += np.bincount(flat, minlength=len(ends) * width).reshape(len(ends), width)
        return out

    def lookup(self, histories: Ints) -> tuple[Ints, Ints]:
        """(length (N,), counts (N, V)): the longest match and n(s t) for every token t.
        A history whose newest token never occurs (length 0) gets no counts."""
        length, lo, hi = self.interval(histories)
        counts = self._counts_below(hi) - self._counts_below(lo)
        counts[length == 0] = 0
        return length, counts[:, : self.vocab]


def counted_part(length: Ints, counts: Ints, one_guess: bool = False) -> tuple[Tensor, Tensor]:
    """A match model's ln P (N, V) and stats (N, 3) from its lookup (`MatchIndex.lookup`,
    or `no_match`); uniform where nothing matched (a token the indexed text lacks, or no
    text yet). `one_guess`: all of P on the token that most often followed (the lowest id
    of a tie), as a compressor's match model guesses one byte: what a state of one
    pointer would give."""
    vocab = counts.shape[1]
    if one_guess:
        guess = counts.argmax(1)[:, None]
        seen = counts.sum(1, keepdims=True) > 0
        counts = np.zeros_like(counts)
        np.put_along_axis(counts, guess, seen.astype(np.int64), axis=1)
    total = counts.sum(1, keepdims=True)
    dist = np.where(total > 0, counts / np.maximum(total, 1), 1 / vocab)
    with np.errstate(divide="ignore"):
        lp = torch.from_numpy(np.log(dist)).clamp(min=FLOOR)
    stats = np.stack([length, total[:, 0], (counts > 0).sum(1)], 1).astype(np.float64)
    return lp, torch.from_numpy(stats)


# Match-length buckets: 0 … 16 one each, then 17-24, 25-32, 33-48, 49 and over; each
# split by how many distinct tokens followed the match (1, 2-3, 4 or more): a long match
# always followed by one token is a near-certain guess, one with many is not.
_LEN_EDGES = torch.tensor([*range(1, 18), 25, 33, 49], dtype=torch.float64)
MATCH_BUCKETS = (len(_LEN_EDGES) + 1) * 3


def no_match(n: int, vocab: int) -> tuple[Ints, Ints]:
    """A lookup with nothing indexed: no match for any of n histories."""
    return np.zeros(n, np.int64), np.zeros((n, vocab), np.int64)


def match_bucket(stats: Tensor, by_kinds: bool = True) -> Tensor:
    """(N, 3) length, occurrences, distinct next tokens -> (N,) bucket, history only.
    by_kinds=False: by the length alone (what one pointer into the text knows)."""
    length = torch.bucketize(stats[:, 0].contiguous(), _LEN_EDGES, right=True)
    if not by_kinds:
        return length * 3
    kinds = torch.bucketize(stats[:, 2].contiguous(), torch.tensor([2.0, 4.0], dtype=torch.float64),
                            right=True)  # fmt: skip
    return length * 3 + kinds


def match_features(lp: Tensor, stats: Tensor) -> Tensor:
    """A match model's part of φ (N, MATCH_BUCKETS + 4): its bucket one-hot, ln of the
    occurrences and of the distinct tokens after them, its distribution's entropy and
    largest ln P."""
    onehot = F.one_hot(match_bucket(stats), MATCH_BUCKETS).double()
    cols = [stats[:, 1].log1p(), stats[:, 2].log1p(), -(lp.exp() * lp).sum(1),
            lp.max(1).values]  # fmt: skip
    return torch.cat([onehot, torch.stack(cols, 1)], 1)

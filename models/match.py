"""The match model: the longest stretch of the training text that ends as the history
ends, and the token that most often came after it (issue #31; docs/ngram.md).

A character 10-gram sees nine characters back. Compressors (lpaq, paq8, cmix) add a
*match model*: find the longest earlier stretch of the text that ends like the current
context and predict the token that followed it. Here the earlier text is the training
split, as the model read it (`training_stream`), and the model's distribution becomes

    P(t | h) = (1 − μ) · P_mixture(t | h) + μ · [t = guess(h)]

where s is the longest suffix of h (at most `max_len` tokens) that occurs in the
training text, guess(h) the token that followed its occurrences (the median of them in
the index's order, see below), and μ the weight of the match's bucket: its length and
how often s occurs (`bucket`), fit on the validation split (training/mixture.py). s, the
guess and the bucket depend on the history only, so P sums to 1 whatever is predicted.

The index is an FM index over a suffix array of the text (`Index`): the text's suffixes
sorted on their first `max_len` + 1 tokens (prefix doubling), and for each entry the
token before it (the Burrows-Wheeler transform), kept as the sorted keys `key` such that
the entries of c·P are `[lf(c, lo), lf(c, hi))` for P's entries `[lo, hi)`: a
pattern grows a token to the *left* (older) with two binary searches. The longest
suffix of a history is so found newest token first, one step per token of the match
(`scan`: every position of a batch of texts at once; `advance`: a stream's next token,
the match's own tokens read back from the text). The entries of s are sorted on the
token after s, so the middle entry's is the token that followed more than half of the
occurrences if one did: the guess, without counting.

A match state per stream is `(length, lo, hi)`: three int64 columns that ride beside
the n-gram's contexts through sampling and beam states (models/engine.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from rnnlm.models.errors import CheckpointError
from rnnlm.models.ngram import mix_logprobs

MATCH_FILE = "match.safetensors"
MAX_LEN = 64  # tokens a match reaches back: a long repeated line's worth of characters
WIDTH = 3  # a match state's columns: length, lo, hi
# Up to this many streams, `advance` goes row by row in Python ints (13 µs a row for
# fortunes' characters), above it all rows at once in numpy (120 µs for 32 rows).
_ROW_BY_ROW = 16
# From this many searches on, `Index.narrow` sorts them first (scoring's scan: 6,000 at a
# time for 64 lines of characters; 0.17 µs a search sorted, 0.45 µs not).
_SORTED_FROM = 512

Ints = np.ndarray[Any, np.dtype[np.int64]]
Floats = np.ndarray[Any, np.dtype[np.floating[Any]]]

# μ's buckets: no match (μ = 0), then by the match's length (1 … 16 one by one, 17–24,
# 25–32, 33–48, 49 and more) and how many times it occurs (1, 2–7, 8 and more: a match
# seen once guesses from one occurrence, one seen often from a majority, if any).
_LEN_EDGES = np.array([*range(2, 18), 25, 33, 49])
_OCC_EDGES = (2, 8)
LENGTH_CLASSES = len(_LEN_EDGES) + 1
_LENGTH_CLASS = np.searchsorted(_LEN_EDGES, np.arange(_LEN_EDGES[-1] + 1), side="right")
_LENGTH_CLASS_LIST = [int(c) for c in _LENGTH_CLASS]  # the same, for one row's scalars
OCC_CLASSES = len(_OCC_EDGES) + 1
BUCKETS = 1 + LENGTH_CLASSES * OCC_CLASSES


def training_stream(
    sequences: Iterable[Sequence[int] | np.ndarray[Any, Any]], start: int, mode: str
) -> Ints:
    """The training texts as the model read them: in sentence mode each from the start
    token to its <eos>; in stream mode one text after another, the first after the start
    token (each sequence given with its closing <eos>)."""
    seqs = [np.asarray(s, np.int64) for s in sequences]
    if not seqs:
        return np.zeros(0, np.int64)
    first = np.array([start], np.int64)
    parts = [first, *seqs] if mode == "stream" else [np.concatenate([first, s]) for s in seqs]
    out: Ints = np.concatenate(parts).astype(np.int64)
    return out


def sort_by_prefix(text: Ints, depth: int) -> Ints:
    """Start positions of `text`'s suffixes in the order of their first `depth` tokens
    (at least; ties beyond are in no set order). Prefix doubling: after each round the
    rank of a suffix orders it by twice as many tokens as before. Tokens must be >= -1;
    past the end sorts before every token, as -1 does."""
    n = len(text)
    rank = text.astype(np.int64) + 1  # 0: past the end (or -1), before every token
    order = np.argsort(rank, kind="stable")
    length = 1
    while length < depth and n:
        after = np.zeros(n, np.int64)
        after[: max(n - length, 0)] = rank[length:]
        key = rank * (int(rank.max()) + 1) + after  # < n² ≤ 2⁶³ for n < 3·10⁹
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        rank = np.empty(n, np.int64)
        rank[order] = 1 + np.concatenate([[0], np.cumsum(sorted_key[1:] != sorted_key[:-1])])
        length *= 2
        if rank.max() == n:  # all distinct: more tokens change nothing
            break
    return order


class Index:
    """The FM index of a text (see the module's docstring). Built once per model, at
    the first use: 3-4 s and 24 bytes a token for 2.3M characters."""

    def __init__(self, stream: Ints, max_len: int) -> None:
        # The text ends with a sentinel (-1) below every token, so that every token is
        # some entry's predecessor and every suffix is ordered against every other.
        text = np.concatenate([np.asarray(stream, np.int64), [-1]])
        self.n = N = len(text)  # entries
        sa = sort_by_prefix(text, max_len + 1)
        before = text[sa - 1]  # the token before each entry (sa = 0: the sentinel)
        # lf(c, i) = #entries whose predecessor < c + #entries j < i whose predecessor is c
        # = searchsorted(key, (c + 1) · (N + 1) + i), key sorted (predecessors shifted by 1
        # so that the sentinel's is 0).
        self.stride = N + 1
        key = np.sort((before + 1) * self.stride + np.arange(N))
        # 32 bits where they fit: half the memory a search reads.
        self.key = key.astype(np.int32) if key[-1] < 2**31 else key
        self.sa = sa.astype(np.int32) if N < 2**31 else sa
        # text, padded so that a match's next token may be read at any length: -1 past it.
        self.text = np.concatenate([text, np.full(max_len + 2, -1)]).astype(self.sa.dtype)

    def narrow(self, tokens: Ints, lo: Ints, hi: Ints) -> tuple[Ints, Ints]:
        """The entries [lo', hi') of c·P from P's [lo, hi): per row, token c (M,). One
        search for both ends, in the keys' own width."""
        base = (tokens + 1) * self.stride
        both = np.concatenate([base + lo, base + hi]).astype(self.key.dtype)
        if len(both) < _SORTED_FROM:
            ends = self.key.searchsorted(both).astype(np.int64)
        else:  # in increasing order, a search starts where the last one ended: 2.6x faster
            order = np.argsort(both)
            ends = np.empty(len(both), np.int64)
            ends[order] = self.key.searchsorted(both[order])
        return ends[: len(lo)], ends[len(lo) :]

    def nbytes(self) -> int:
        return int(self.sa.nbytes + self.text.nbytes + self.key.nbytes)


@dataclass
class MatchModel:
    """The training text and μ per bucket; the index is built on first use."""

    stream: np.ndarray[Any, Any]  # (n,) the training text, token ids (int32)
    mu: Floats  # (BUCKETS,) the match's weight per bucket; mu[0] = 0 (no match)
    max_len: int = MAX_LEN
    _index: Index | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.stream = np.asarray(self.stream).astype(np.int32)  # token ids: 4 bytes do
        self.mu = np.asarray(self.mu, np.float64)
        if self.mu.shape != (BUCKETS,):
            raise ValueError(f"μ needs {BUCKETS} buckets, not {self.mu.shape}")
        if not ((self.mu >= 0) & (self.mu < 1)).all():
            raise ValueError("every μ must be in [0, 1)")
        if self.max_len < 1:
            raise ValueError(f"max_len must be at least 1, not {self.max_len}")

    @property
    def index(self) -> Index:
        if self._index is None:
            self._index = Index(self.stream, self.max_len)
        return self._index

    # ------------------------------------------------------------------ states

    def empty(self, rows: int) -> Ints:
        """(rows, WIDTH) states before any token: no match."""
        out = np.zeros((rows, WIDTH), np.int64)
        out[:, 2] = self.index.n
        return out

    def scan(self, ids: Ints, lengths: Ints | None = None) -> Ints:
        """The state after each position of each row: ids (B, T), the first `lengths`
        of each row read (all without) -> (B, T, WIDTH); padding positions get no match.

        Every position's longest match is grown newest token first, every position at
        once: step k reads the token k places back."""
        B, T = ids.shape
        out = np.zeros((B, T, WIDTH), np.int64)
        index = self.index
        out[:, :, 2] = index.n
        valid = np.ones((B, T), bool) if lengths is None else np.arange(T) < lengths[:, None]
        row, col = valid.nonzero()
        lo = np.zeros(len(row), np.int64)
        hi = np.full(len(row), index.n, np.int64)
        length = np.zeros(len(row), np.int64)
        alive = np.arange(len(row))
        for k in range(self.max_len):
            alive = alive[col[alive] >= k]
            if not len(alive):
                break
            tok = ids[row[alive], col[alive] - k]
            ok = tok >= 0
            alive, tok = alive[ok], tok[ok]
            new_lo, new_hi = index.narrow(tok, lo[alive], hi[alive])
            found = new_hi > new_lo
            alive = alive[found]
            lo[alive], hi[alive], length[alive] = new_lo[found], new_hi[found], k + 1
        out[row, col, 0], out[row, col, 1], out[row, col, 2] = length, lo, hi
        return out

    def after(self, inputs: Sequence[Sequence[int]]) -> Ints:
        """The state after each sequence of ids (start token included): (B, WIDTH)."""
        B = len(inputs)
        out = self.empty(B)
        width = min(self.max_len, max((len(x) for x in inputs), default=0))
        if width == 0:
            return out
        tails = np.full((B, width), -1, np.int64)  # each row's last tokens, right-aligned
        for r, x in enumerate(inputs):
            tail = list(x)[-width:]
            if tail:
                tails[r, width - len(tail) :] = tail
        last = self.scan(tails)[:, -1]  # -1 padding ends a match as the text's start does
        has = np.array([len(x) > 0 for x in inputs])
        out[has] = last[has]
        return out

    def advance(self, states: Ints, tokens: Ints) -> Ints:
        """The states after each row's next token: (B, WIDTH), tokens (B,) -> (B, WIDTH).

        The new match is the longest suffix of (the old match, token): its tokens are
        read back from the text at one of the old match's occurrences, so a state needs
        no history of its own. `scan` of the history with the token appended gives the
        same state (tested)."""
        index = self.index
        B = len(states)
        tokens = np.asarray(tokens, np.int64)
        if B <= _ROW_BY_ROW:  # a few streams: scalars, a numpy call per step rather than 20
            rows = zip(states.tolist(), tokens.tolist(), strict=True)
            return np.array([self._advance_one(st, t) for st, t in rows], np.int64)
        out = self.empty(B)
        old_len = np.minimum(states[:, 0], self.max_len - 1)
        start = index.sa[np.minimum(states[:, 1], index.n - 1)].astype(np.int64)  # one occurrence
        end = start + states[:, 0]  # the match is text[start:end]; its newest tokens kept
        lo = np.zeros(B, np.int64)
        hi = np.full(B, index.n, np.int64)
        length = np.zeros(B, np.int64)
        alive = np.arange(B)
        for k in range(self.max_len):
            alive = alive[old_len[alive] >= k]
            if not len(alive):
                break
            tok = tokens[alive] if k == 0 else index.text[end[alive] - k]
            new_lo, new_hi = index.narrow(tok, lo[alive], hi[alive])
            found = new_hi > new_lo
            alive = alive[found]
            lo[alive], hi[alive], length[alive] = new_lo[found], new_hi[found], k + 1
        out[:, 0], out[:, 1], out[:, 2] = length, lo, hi
        return out

    def _advance_one(self, state: list[int], token: int) -> list[int]:
        """`advance` of one row, with Python ints: the same steps, the same state."""
        index = self.index
        key, stride, text = index.key, index.stride, index.text
        kind = key.dtype
        old_len = min(state[0], self.max_len - 1)
        end = int(index.sa[min(state[1], index.n - 1)]) + state[0]
        lo, hi, length = 0, index.n, 0
        tok = token
        for k in range(old_len + 1):
            if k:
                tok = int(text[end - k])
            base = (tok + 1) * stride
            # Needles in the keys' own type: any other makes numpy convert all the keys.
            new_lo, new_hi = key.searchsorted(np.array((base + lo, base + hi), kind)).tolist()
            if new_hi <= new_lo:
                break
            lo, hi, length = new_lo, new_hi, k + 1
        return [length, lo, hi]

    # ------------------------------------------------------------- prediction

    def guess(self, states: Ints) -> tuple[Ints, Ints]:
        """Each state's guess (the token after the middle occurrence of its match; -1
        where there is none) and its μ bucket (0 without a guess): states (B, WIDTH) ->
        (B,), (B,)."""
        index = self.index
        length, lo, hi = states[:, 0], states[:, 1], states[:, 2]
        mid = (lo + hi) // 2  # < n: a match's entries end at n at most; no match: [0, n)
        token = np.where(length > 0, index.text[index.sa[mid] + length], -1)
        return token, np.where(token >= 0, bucket(length, hi - lo), 0)

    def weights(self, states: Ints) -> tuple[Ints, Floats]:
        """Each state's guess, at least 0, and μ (0 where it has no guess): (B,), (B,)."""
        token, b = self.guess(states)
        return np.maximum(token, 0), self.mu[b]

    def mix_(self, logprobs: np.ndarray[Any, Any], states: Ints) -> np.ndarray[Any, Any]:
        """ln((1 − μ)·P + μ·[t = guess]) in place, of whole distributions: logprobs (B, V),
        natural log, of the model without the match. models/ngram.py's `mix_` with a part
        that is one-hot, written as what it then is: every entry gains ln(1 − μ), the
        guess's becomes ln((1 − μ)·P + μ) (one pass over (B, V), not an exp and a log)."""
        if len(states) == 1:  # sampling one stream: scalars, four numpy calls rather than 20
            return self._mix_one(logprobs, states[0].tolist())
        token, mu = self.weights(states)
        rows = np.arange(len(token))
        kept = np.exp(logprobs[rows, token].astype(np.float64)) * (1.0 - mu)
        logprobs += np.log1p(-mu).astype(logprobs.dtype)[:, None]
        logprobs[rows, token] = np.log(kept + mu)  # μ = 0: ln P again
        return logprobs

    def _mix_one(self, logprobs: np.ndarray[Any, Any], state: list[int]) -> np.ndarray[Any, Any]:
        """`mix_` of one row, from Python ints: the same guess, bucket and maths."""
        length, lo, hi = state
        if not length:
            return logprobs
        index = self.index
        token = int(index.text[int(index.sa[(lo + hi) // 2]) + length])
        if token < 0:
            return logprobs
        occ = hi - lo
        b = 1 + _LENGTH_CLASS_LIST[min(length, len(_LENGTH_CLASS_LIST) - 1)] * OCC_CLASSES
        mu = float(self.mu[b + (occ >= _OCC_EDGES[0]) + (occ >= _OCC_EDGES[1])])
        row = logprobs[0]
        kept = math.exp(float(row[token])) * (1.0 - mu)
        row += row.dtype.type(math.log1p(-mu))
        row[token] = math.log(kept + mu)
        return logprobs

    def token_logprobs(self, logprobs: Floats, targets: Ints, states: Ints) -> Floats:
        """ln((1 − μ)·P(t) + μ·[t = guess]) of single tokens: the model's ln P(t) without the
        match (N,), the targets (N,) and the states before them (N, WIDTH) -> (N,)."""
        token, mu = self.weights(states)
        with np.errstate(divide="ignore"):
            guessed = np.log((token == targets).astype(np.float64))  # ln P_guess(t): 0 or -inf
        return mix_logprobs(logprobs, guessed, 1.0 - mu)  # models/ngram.py's one mixture

    # ---------------------------------------------------------------- storage

    def save(self, path: Path) -> None:
        save_file({"stream": self.stream}, str(path), metadata={"format": "rnnlm-match-1"})

    @classmethod
    def load(cls, path: Path, mu: Any, max_len: Any, vocab_size: int) -> MatchModel:
        """The match model at `path`, μ and max_len from config.json; every problem
        named with the file."""
        try:
            stream = load_file(str(path))["stream"]
        except (SafetensorError, OSError, KeyError) as e:
            raise CheckpointError(f"{path}: not a match model ({e})") from e
        if stream.ndim != 1 or (stream.size and (stream.min() < 0 or stream.max() >= vocab_size)):
            raise CheckpointError(
                f"{path}: token ids outside the vocabulary (0 to {vocab_size - 1})"
            )
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise CheckpointError(
                f"{path}: match.max_len must be a positive integer, not {max_len!r}"
            )
        try:
            return cls(stream, np.asarray(mu, np.float64), max_len)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: config.json's match.mu: {e}") from e

    def nbytes(self) -> int:
        index = 0 if self._index is None else self._index.nbytes()
        return int(self.stream.nbytes + index)


def bucket(length: Ints, occurrences: Ints) -> Ints:
    """μ's bucket of a match of `length` tokens seen `occurrences` times (length >= 1)."""
    lc = _LENGTH_CLASS[np.minimum(length, len(_LENGTH_CLASS) - 1)]
    oc = (occurrences >= _OCC_EDGES[0]).astype(np.int64) + (occurrences >= _OCC_EDGES[1])
    out: Ints = 1 + lc * OCC_CLASSES + oc
    return out


def length_class(b: Ints) -> Ints:
    """The length class of each bucket (b >= 1): its buckets share a fallback μ."""
    out: Ints = (np.asarray(b) - 1) // OCC_CLASSES
    return out

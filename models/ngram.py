"""The n-gram inside a model: the query side (estimation lives in training/).

A backoff n-gram model over the model's own token ids, as an ARPA file holds
one: for every stored n-gram its interpolated log-probability, and for every
stored context its backoff weight. Interpolated modified Kneser-Ney (what
`training/ngram.py` estimates and what KenLM's `lmplz` writes) is exactly such
a model: for an n-gram never seen, P(w | h) = backoff(h) · P(w | h without its
oldest token).

Storage is one sorted array of packed keys per order, a trie read from the
newest token backwards, the way KenLM's context tree is:

    order 1     dense: index = token id                          (V,)
    order k     key = index of (w2 … wk) at order k-1 · V + w1    (n_k,) int64, sorted

so the n-gram w1 … wk is found from its last token by k-1 binary searches, and
every suffix of a history is found on the way. Beside the keys: `logprob`
(natural log, float32) per n-gram and `backoff` (natural log) per n-gram of the
orders below the highest. Order 1 covers the whole vocabulary; ids the model
never predicts (`<pad>` and the sentence-start token) have logprob -inf.

Mixing buckets. How far the RNN should be trusted against the n-gram depends on
how much the n-gram knows about a history: after a context it has seen followed
by many different tokens it is sharp and reliable, after one it has seen once,
or where it must back off to single tokens, it is not (Jelinek and Mercer tied
their interpolation weights by such buckets of histories, 1980). A history's
bucket is `j · KID_BINS + b`: j (0 … order-1) is the length of its longest
suffix that the model stores as a context with continuations, and b the number
of distinct tokens seen after that context in powers of two (1, 2–3, 4–7, …,
2048 and more). It depends on the history only, never on the token predicted,
so a mixture with one λ per bucket is still a normalised distribution.

A history is the tokens before a position, the newest last, from the sentence
start on (`start_id`: `<bos>`, or `<eos>` for a model trained on one stream of
text): `histories` arrays are (M, order-1), left-padded with -1 where the text
has no more tokens (the start, or a text scored without `<bos>`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from rnnlm.models.errors import CheckpointError

NGRAM_FILE = "ngram.safetensors"
NGRAM_FORMAT = "rnnlm-ngram-1"
NO_TOKEN = -1  # history padding: before the start of the text
KID_BINS = 12  # mixing buckets per context length (see the module's docstring)

Int64s = np.ndarray[Any, np.dtype[np.int64]]
Floats = np.ndarray[Any, np.dtype[np.floating[Any]]]


@dataclass
class NgramModel:
    order: int
    vocab_size: int
    start_id: int
    # keys[k-1], logprob[k-1], backoff[k-1] belong to order k; keys[0] is unused
    # (order 1 is dense); backoff has order-1 entries (the highest order has none).
    keys: list[Int64s]
    logprob: list[Floats]
    backoff: list[Floats]
    _children: list[tuple[Int64s, Int64s]] = field(default_factory=list, repr=False)
    # The layout for next-token distributions (models/ngram_next.py `layout_of`), built
    # there on first use and kept here: sampling needs it, and scoring with a gate
    # (models/gate.py).
    layout: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.check()

    # ------------------------------------------------------------ integrity

    def check(self) -> None:
        """Refuse arrays that do not make one consistent model (a damaged or forged file)."""
        n, V = self.order, self.vocab_size
        problems: list[str] = []
        if n < 1:
            problems.append(f"order must be at least 1, not {n}")
        if V < 5:
            problems.append(f"vocab_size must be at least 5, not {V}")
        if not 0 <= self.start_id < V:
            problems.append(f"start_id {self.start_id} is not a token id")
        if len(self.keys) != n or len(self.logprob) != n or len(self.backoff) != max(0, n - 1):
            problems.append(f"expected arrays for {n} orders")
        if problems:
            raise CheckpointError("n-gram: " + "; ".join(problems))
        if self.logprob[0].shape != (V,) or self.backoff and self.backoff[0].shape != (V,):
            raise CheckpointError(f"n-gram: order 1 must cover the {V} token ids")
        for k in range(2, n + 1):
            keys, size = self.keys[k - 1], self.size(k)
            if keys.ndim != 1 or self.logprob[k - 1].shape != (size,):
                raise CheckpointError(f"n-gram: order {k}: keys and logprob differ in length")
            if k < n and self.backoff[k - 1].shape != (size,):
                raise CheckpointError(f"n-gram: order {k}: keys and backoff differ in length")
            if size and (keys[0] < 0 or np.any(keys[1:] <= keys[:-1])):
                raise CheckpointError(f"n-gram: order {k}: keys are not strictly increasing")
            if size and keys[-1] // V >= self.size(k - 1):
                raise CheckpointError(f"n-gram: order {k}: an n-gram's suffix is not stored")
        for k in range(1, n + 1):
            lp = self.logprob[k - 1]
            if np.any(np.isnan(lp)) or np.any(lp > 1e-4) or np.any(np.isposinf(lp)):
                raise CheckpointError(f"n-gram: order {k}: log-probabilities must be <= 0")
            if k > 1 and np.any(np.isinf(lp)):
                raise CheckpointError(f"n-gram: order {k}: a stored n-gram has probability 0")
        for k, bo in enumerate(self.backoff, start=1):
            if not np.all(np.isfinite(bo)):
                raise CheckpointError(f"n-gram: order {k}: backoff weights must be finite")
        # Every n-gram's context (w1 … wk-1) must be stored too: found here, once.
        self._children = self._index_children()

    def size(self, k: int) -> int:
        """How many n-grams of order k (order 1: the vocabulary)."""
        return self.vocab_size if k == 1 else len(self.keys[k - 1])

    def counts(self) -> list[int]:
        return [self.size(k) for k in range(1, self.order + 1)]

    def nbytes(self) -> int:
        """The model's own arrays, as in its file."""
        arrays = [*self.keys[1:], *self.logprob, *self.backoff]
        return int(sum(a.nbytes for a in arrays))

    def memory_bytes(self) -> int:
        """What it holds in memory now: its arrays, the index of n-grams by context, and the
        layout for sampling once something has sampled from it (`layout`)."""
        index = sum(a.nbytes + b.nbytes for a, b in self._children)
        built = self.layout
        return self.nbytes() + int(index) + (built.nbytes() if built is not None else 0)

    # ---------------------------------------------------------------- lookups

    def find(self, k: int, keys: Int64s) -> tuple[Int64s, np.ndarray[Any, np.dtype[np.bool_]]]:
        """Positions of `keys` among order k's, and whether each is there."""
        table = self.keys[k - 1]
        if not len(table):
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        if len(keys) > 256:
            # Searched in increasing order, each search starts where the last one ended
            # and stays in cache: 3.6x faster on a character 10-gram's 1M keys.
            order = np.argsort(keys, kind="stable")
            pos = np.empty(len(keys), np.int64)
            pos[order] = np.searchsorted(table, keys[order])
        else:
            pos = np.searchsorted(table, keys)
        pos = pos.clip(max=len(table) - 1)
        return pos.astype(np.int64), table[pos] == keys

    def _index_children(self) -> list[tuple[Int64s, Int64s]]:
        """Per order k >= 2: (offsets, children), grouping the k-grams by their context
        (w1 … wk-1): those after the context c of order k-1 are
        children[offsets[c]:offsets[c + 1]]."""
        V = self.vocab_size
        out: list[tuple[Int64s, Int64s]] = []
        ctx_prev = np.zeros(0, np.int64)
        for k in range(2, self.order + 1):
            keys = self.keys[k - 1]
            parent, oldest = keys // V, keys % V  # (w2 … wk) and w1
            if k == 2:
                ctx = oldest
            else:
                # (w1 … wk-1) = w1 + the context of (w2 … wk), looked up at order k-1.
                ctx, found = self.find(k - 1, ctx_prev[parent] * V + oldest)
                if not found.all():
                    raise CheckpointError(
                        f"n-gram: order {k}: {int((~found).sum())} n-grams whose context "
                        "(the n-gram without its last token) is not stored"
                    )
            order = np.argsort(ctx, kind="stable")
            offsets = np.searchsorted(ctx[order], np.arange(self.size(k - 1) + 1))
            small = np.int32 if len(keys) < 2**31 else np.int64  # half the memory where it fits
            out.append((offsets.astype(small), order.astype(small)))
            ctx_prev = ctx
        return out

    def rows(self, k: int) -> Int64s:
        """The token ids of every n-gram of order k, oldest first: (n_k, k)."""
        V = self.vocab_size
        rows = np.arange(V, dtype=np.int64)[:, None]
        for j in range(2, k + 1):
            keys = self.keys[j - 1]
            rows = np.concatenate([(keys % V)[:, None], rows[keys // V]], axis=1)
        return rows

    def children(self, k: int) -> tuple[Int64s, Int64s]:
        """The n-grams of order k >= 2 grouped by their context (see `_index_children`)."""
        return self._children[k - 2]

    def context_index(self, k: int) -> Int64s:
        """For every n-gram of order k >= 2, the index of its context (w1 … wk-1) at order k-1."""
        offsets, children = self.children(k)
        ctx = np.empty(len(children), np.int64)
        ctx[children] = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        return ctx

    def buckets(self) -> int:
        """How many mixing buckets a history can fall in (see the module's docstring)."""
        return self.order * KID_BINS

    def logprob_of(self, histories: Int64s, targets: Int64s) -> Floats:
        """ln P(target | history) for M positions at once: histories (M, order-1), targets (M,)."""
        return self.logprob_and_bucket(histories, targets)[0]

    def walk(self, histories: Int64s) -> Int64s:
        """Each history's stored contexts: histories (M, order-1) -> (M, order-1), column j-1
        the index at order j of the history's last j tokens, -1 where the history is
        shorter or the model does not store them (nor, then, any longer context)."""
        n, V = self.order, self.vocab_size
        histories = np.asarray(histories, dtype=np.int64)
        if n == 1:  # a unigram model: no history matters
            return np.zeros((len(histories), 0), np.int64)
        histories = histories.reshape(-1, n - 1)
        out = np.full(histories.shape, -1, np.int64)
        ctx = histories[:, n - 2].copy()
        present = ctx >= 0
        for j in range(1, n):
            if j > 1:
                w = histories[:, n - 1 - j]
                pos, found = self.find(j, ctx * V + w.clip(min=0))
                present &= found & (w >= 0)
                ctx = np.where(present, pos, ctx)
            if not present.any():
                break
            out[present, j - 1] = ctx[present]
        return out

    def _longest(self, histories: Int64s, targets: Int64s) -> tuple[Floats, Int64s]:
        """The longest stored n-gram ending in each target: its log-prob, and its length."""
        n, V = self.order, self.vocab_size
        best = self.logprob[0][targets].astype(np.float64)
        matched = np.ones(len(targets), np.int64)
        idx, alive = targets.copy(), np.ones(len(targets), bool)
        # Extend it one token at a time.
        for k in range(2, n + 1):
            w = histories[:, n - k]  # the (k-1)-th newest token of the history
            pos, found = self.find(k, idx * V + w.clip(min=0))
            alive &= found & (w >= 0)
            if not alive.any():
                break
            idx = np.where(alive, pos, idx)
            best[alive] = self.logprob[k - 1][pos[alive]]
            matched[alive] = k
        return best, matched

    def matched_length(self, histories: Int64s, targets: Int64s) -> Int64s:
        """The length of the longest stored n-gram ending in each target (KenLM's
        `ngram_length`): histories (M, order-1), targets (M,) -> (M,), 1 to order."""
        histories = np.asarray(histories, dtype=np.int64).reshape(len(targets), self.order - 1)
        return self._longest(histories, np.asarray(targets, dtype=np.int64))[1]

    def logprob_and_bucket(self, histories: Int64s, targets: Int64s) -> tuple[Floats, Int64s]:
        """`logprob_of`, and each history's mixing bucket (M,), found on the same walk."""
        n = self.order
        histories = np.asarray(histories, dtype=np.int64).reshape(len(targets), n - 1)
        targets = np.asarray(targets, dtype=np.int64)
        best, matched = self._longest(histories, targets)
        # Back off from every stored context longer than that n-gram's.
        bucket = np.zeros(len(targets), np.int64)
        contexts = self.walk(histories)
        for j in range(1, n):  # contexts of j tokens
            ctx = contexts[:, j - 1]
            present = ctx >= 0
            if not present.any():
                break
            add = present & (matched <= j)
            best[add] += self.backoff[j - 1][ctx[add]]
            rows = present.nonzero()[0]
            offsets = self._children[j - 1][0]
            kids = offsets[ctx[rows] + 1] - offsets[ctx[rows]]
            seen = kids > 0
            bucket[rows[seen]] = j * KID_BINS + kid_bin(kids[seen])
        return best, bucket

    # ------------------------------------------------------------------ files

    def save(self, path: Path) -> None:
        tensors: dict[str, np.ndarray[Any, Any]] = {}
        for k in range(1, self.order + 1):
            if k > 1:
                tensors[f"order{k}.keys"] = np.ascontiguousarray(self.keys[k - 1], np.int64)
            tensors[f"order{k}.logprob"] = np.ascontiguousarray(self.logprob[k - 1], np.float32)
            if k < self.order:
                tensors[f"order{k}.backoff"] = np.ascontiguousarray(self.backoff[k - 1], np.float32)
        meta = {
            "format": NGRAM_FORMAT,
            "order": str(self.order),
            "vocab_size": str(self.vocab_size),
            "start_id": str(self.start_id),
        }
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> NgramModel:
        """Read an n-gram file; anything damaged or inconsistent is refused by name."""
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
            arrays = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from e
        try:
            if meta.get("format") != NGRAM_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {NGRAM_FORMAT!r}")
            order, V, start = (int(meta[k]) for k in ("order", "vocab_size", "start_id"))
            if not 1 <= order <= 64:
                raise ValueError(f"order {order} is out of range")
            expected = {f"order{k}.logprob" for k in range(1, order + 1)}
            expected |= {f"order{k}.keys" for k in range(2, order + 1)}
            expected |= {f"order{k}.backoff" for k in range(1, order)}
            if set(arrays) != expected:
                missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
                raise ValueError(f"arrays missing: {missing}, unexpected: {extra}")
            dtypes = {"keys": np.int64, "logprob": np.float32, "backoff": np.float32}
            for name, a in arrays.items():
                if a.dtype != dtypes[name.split(".")[1]] or a.ndim != 1:
                    raise ValueError(f"{name} is {a.dtype} {a.shape}, not a 1-d array")
            keys = [np.zeros(0, np.int64)] + [arrays[f"order{k}.keys"] for k in range(2, order + 1)]
            return cls(
                order=order,
                vocab_size=V,
                start_id=start,
                keys=keys,
                logprob=[arrays[f"order{k}.logprob"] for k in range(1, order + 1)],
                backoff=[arrays[f"order{k}.backoff"] for k in range(1, order)],
            )
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: not an rnnlm n-gram file ({e})") from e
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from e


def check_mixing_weight(value: Any, where: str) -> float:
    """λ, the RNN's share of the mixture: a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise CheckpointError(
            f"{where}: the mixing weight must be a number in [0, 1], not {value!r}"
        )
    return float(value)


def check_bucket_weights(value: Any, order: int, where: str) -> Floats:
    """One λ per mixing bucket: `order · KID_BINS` numbers in [0, 1]."""
    want = order * KID_BINS
    if not isinstance(value, list) or len(value) != want:
        raise CheckpointError(f"{where}: must be a list of {want} mixing weights (one per bucket)")
    return np.array([check_mixing_weight(v, where) for v in value], np.float64)


def histories_of(inputs: Int64s, order: int) -> Int64s:
    """The n-gram's history of each target: the inputs (B, T) up to and including each
    position -> (B, T, order-1), newest last, NO_TOKEN before the first input."""
    ids = np.asarray(inputs, dtype=np.int64)
    width = order - 1
    if width == 0:
        return np.zeros((*ids.shape, 0), np.int64)
    padded = np.concatenate([np.full((ids.shape[0], width - 1), NO_TOKEN), ids], axis=1)
    out: Int64s = np.lib.stride_tricks.sliding_window_view(padded, width, axis=1)
    return out


def mix_(
    rnn: np.ndarray[Any, Any], weight: Floats, part: np.ndarray[Any, Any], logits: bool = False
) -> np.ndarray[Any, Any]:
    """The mixture, in place: rnn <- ln(λ·P_rnn + part), where part = (1-λ)·P_ngram.

    The one implementation of the mixture, for scoring, sampling and beam search alike.
    rnn: the RNN's log-probabilities (natural log), or with `logits` its output layer's
    logits, whose softmax is then taken here (one pass fewer over a (B, V) block than
    a log-softmax before); either (N,) (one token each) or (B, V) (whole distributions),
    float32 or float64, written in place and returned. weight λ: one number or one per
    row, (N,) or (B,); part: shaped as rnn. ln 0 = -inf where neither model goes.
    """
    lam = np.asarray(weight, dtype=rnn.dtype)
    if rnn.ndim == 2 and lam.ndim == 1:
        lam = lam[:, None]  # (B, 1): one λ per row
    if logits:
        rnn -= rnn.max(axis=-1, keepdims=True)
        np.exp(rnn, out=rnn)
        rnn *= lam / rnn.sum(axis=-1, keepdims=True)
    else:
        np.exp(rnn, out=rnn)
        rnn *= lam
    rnn += part
    with np.errstate(divide="ignore"):
        np.log(rnn, out=rnn)
    return rnn


def mix_logprobs(rnn: Floats, ngram: Floats, weight: float | Floats) -> Floats:
    """ln(λ·P_rnn + (1-λ)·P_ngram) of single tokens, from the two log-probabilities
    (natural log, float64); `weight` λ one number, or one per position. `mix_` on them."""
    lam = np.asarray(weight, np.float64)
    mixed = np.array(rnn, dtype=np.float64)  # a copy: mix_ works in place
    return mix_(mixed, lam, (1.0 - lam) * np.exp(np.asarray(ngram, np.float64)))


def kid_bin(kids: Int64s) -> Int64s:
    """floor(log2(kids)), capped at KID_BINS - 1: 1 -> 0, 2-3 -> 1, 4-7 -> 2, ... (kids >= 1)."""
    bins: Int64s = np.minimum(np.frexp(kids.astype(np.float64))[1] - 1, KID_BINS - 1)
    return bins.astype(np.int64)

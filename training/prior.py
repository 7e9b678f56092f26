"""The n-gram a residual RNN is trained over: ln P_ngram(· | history) at every training
position, from n-grams that never saw the position's sequence.

A residual model's distribution is softmax(RNN logits + ln P_ngram(· | history))
(models/model.py `log_probs` with a prior): the RNN learns what the n-gram gets wrong,
and starts where the n-gram is (its output layer starts near zero) rather than from a
uniform guess. Its training prior must be the n-gram as it behaves on text it has not
seen: an n-gram estimated on the training split has counted every training sentence,
gives each of its tokens a probability far above what it gives new text, and an RNN
trained over it would learn to trust it far too much. So the training split is cut
into `folds` (sequence i in fold i mod folds), an n-gram is estimated without each
fold, and each fold's positions take the prior of the n-gram that left it out, as
cross-validation does (the served model uses the n-gram of the whole split, which is
a little sharper than the fold n-grams, each estimated on (folds-1)/folds of the text).

The priors are worked out once, before training (float16, V per position: 2 bytes ·
V · training tokens, 450 MB for the 2.2M characters of fortunes; ln P in float16
is within 0.02 of its float32 value for every P above e^-16).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnlm.models.errors import RnnlmError
from rnnlm.models.ngram import NO_TOKEN
from rnnlm.models.ngram_next import layout_of
from rnnlm.models.tokenizers import PAD
from rnnlm.training.corpus import TokenSplit
from rnnlm.training.ngram import estimate

Array = np.ndarray[Any, np.dtype[Any]]
FOLDS = 4
MAX_PRIOR_BYTES = 4 << 30  # a larger table would not fit the machines this is made for
_CHUNK = 16384  # positions per distribution call


def prior_bytes(split: TokenSplit, vocab_size: int) -> int:
    return 2 * len(split.tokens) * vocab_size


def fold_priors(
    split: TokenSplit,
    order: int,
    vocab_size: int,
    start_id: int,
    folds: int = FOLDS,
    note: Callable[[str], None] | None = None,
) -> Array:
    """(len(split.tokens), V) float16: ln P(· | history) at every position of the split,
    each from the n-gram estimated without its sequence's fold (see the module's docstring)."""
    if prior_bytes(split, vocab_size) > MAX_PRIOR_BYTES:
        raise RnnlmError(
            f"a residual model's training prior would take "
            f"{prior_bytes(split, vocab_size) / 2**30:.1f} GiB (2 bytes x {vocab_size} tokens "
            f"x {len(split.tokens):,} positions); it is made for characters and small "
            "subword vocabularies"
        )
    if len(split) < folds:
        raise RnnlmError(f"a residual model needs at least {folds} training sequences")
    t0 = time.monotonic()
    lengths = split.lengths
    fold_of_seq = np.arange(len(split)) % folds
    fold_of_pos = np.repeat(fold_of_seq, lengths)
    tokens = np.asarray(split.tokens)
    table = np.empty((len(tokens), vocab_size), np.float16)
    for f in range(folds):
        keep = fold_of_seq != f
        ngram, _ = estimate(
            tokens[fold_of_pos != f],
            np.concatenate([[0], np.cumsum(lengths[keep])]),
            order,
            vocab_size,
            start_id,
        )
        layout = layout_of(ngram)
        mine = np.flatnonzero(fold_of_pos == f)
        for s in range(0, len(mine), _CHUNK):
            at = mine[s : s + _CHUNK]
            hist = histories_at(split, start_id, order - 1, at)
            table[at] = layout.log_probabilities_at(layout.contexts(hist), np.float32)[0]
    if note is not None:
        note(
            f"residual: training prior from {folds} n-grams of order {order}, each "
            f"without 1/{folds} of the sentences, {table.nbytes / 1e6:.0f} MB, "
            f"{time.monotonic() - t0:.1f} s"
        )
    return table


def histories_at(split: TokenSplit, start_id: int, width: int, at: Array) -> Array:
    """The n-gram history of each flat position `at` (N,) of the split: (N, width), newest
    last. Position p of sequence i (offsets[i] <= p) predicts tokens[p] after the start
    token and tokens[offsets[i]:p]; NO_TOKEN before the start token."""
    offsets = np.asarray(split.offsets)
    first = offsets[np.searchsorted(offsets, at, side="right") - 1]
    back = at[:, None] - np.arange(width, 0, -1)[None, :]
    hist = np.asarray(split.tokens[np.maximum(back, 0)], dtype=np.int64)
    hist = np.where(back == first[:, None] - 1, start_id, hist)
    out: Array = np.where(back < first[:, None] - 1, NO_TOKEN, hist)
    return out


def with_prior(
    wins: Iterator[tuple[Tensor, Tensor]],
    table: Array | None,
    split: TokenSplit,
    indices: Array,
    bptt: int,
    first: int = 0,
) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """A sentence batch's windows (training/data.py `sentence_windows`, from window
    `first`) with each window's prior (B, w, V) float32 from `table` (`fold_priors`):
    row r, column t of window k predicts flat position offsets[indices[r]] + k·bptt + t;
    padding takes 0. Without a table, None beside each window."""
    starts = np.asarray(split.offsets)[np.asarray(indices)]  # (B,)
    for k, (inp, tgt) in enumerate(wins, start=first):
        if table is None:
            yield inp, tgt, None
            continue
        pos = starts[:, None] + k * bptt + np.arange(tgt.shape[1])[None, :]  # (B, w)
        real = (tgt != PAD).numpy()
        prior = np.zeros((*tgt.shape, table.shape[1]), np.float32)
        prior[real] = table[pos[real]]
        yield inp, tgt, torch.from_numpy(prior)

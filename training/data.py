"""Batches for training, read from memory-mapped token files.

Sentence mode: every sequence is `<bos> t1 .. tn <eos>` from a zero state.
Sequences are sorted by length (ties shuffled), cut into batches of similar
length, and the batch order is shuffled per epoch, so padding is small.
Padding is masked out of the loss. A batch longer than `bptt` is fed in
windows that carry the (detached) state: truncated BPTT inside long sequences.
A bidirectional model's batch stacks under the B rows their reversed copies
(`with_backward_rows`), 2B rows in all, each row reversed within its own length:

    forward   inputs  <bos> a b c <pad>    targets  a b c <eos> <pad>
    backward  inputs  <bos> c b a <pad>    targets  c b a <eos> <pad>

Stream mode (char-rnn, pytorch/examples word_language_model): the split is one
long text. It is cut into B lanes read side by side, each window of `bptt`
tokens continuing the previous one, the state carried across windows:

    lane 0: ┃ a b c d ┃ e f g h ┃ ...      window k of lane b covers
    lane 1: ┃ m n o p ┃ q r s t ┃ ...      tokens[b*L + k*bptt : ... + bptt]

Under DistributedDataParallel each rank takes its own batches (sentence mode)
or its own lanes (stream mode): `rank`, `world` below.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnlm.models.tokenizers import BOS, PAD
from rnnlm.training.corpus import TokenSplit


def sentence_batches(
    split: TokenSplit, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1
) -> list[np.ndarray[Any, np.dtype[np.int64]]]:
    """The epoch's batches of sequence indices, for this rank (same on every resume)."""
    rng = np.random.default_rng([seed, epoch])
    # Sort by length, random among equal lengths: a stable sort of a random
    # permutation (a few int64 per sequence; the tokens themselves stay on disk).
    order = rng.permutation(len(split))
    order = order[np.argsort(split.lengths[order], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    perm = rng.permutation(len(batches))
    batches = [batches[i] for i in perm]
    # Every rank gets the same number of batches, so steps stay in lock-step.
    per_rank = len(batches) // world if world > 1 else len(batches)
    return batches[rank * per_rank : (rank + 1) * per_rank] if world > 1 else batches


def sentence_windows(
    split: TokenSplit, indices: np.ndarray[Any, Any], bptt: int, start: int = 0
) -> tuple[int, Iterator[tuple[Tensor, Tensor]]]:
    """One batch as time windows of at most `bptt`: (how many in all, iterator of
    (inputs, targets) from window `start` on).

    Rows are padded to the batch's longest sequence T: inputs `<bos> t1..tn`, targets
    `t1..tn <eos>`, each (B, min(bptt, T - t0)). Only the window in hand is built, so
    a batch holding one 5 MB line costs B x bptt, not B x 5M, ids of memory.
    """
    seqs = [split.sequence(int(i)) for i in indices]
    T = max(len(s) for s in seqs)

    def build() -> Iterator[tuple[Tensor, Tensor]]:
        for t0 in range(start * bptt, T, bptt):
            w = min(bptt, T - t0)
            inp = np.full((len(seqs), w), PAD, dtype=np.int64)
            tgt = np.full((len(seqs), w), PAD, dtype=np.int64)
            for row, s in enumerate(seqs):
                end = min(t0 + w, len(s))  # this row's tokens in the window: t0..end
                if end <= t0:
                    continue
                tgt[row, : end - t0] = s[t0:end]
                if t0 == 0:
                    inp[row, 0] = BOS
                    inp[row, 1:end] = s[: end - 1]
                else:
                    inp[row, : end - t0] = s[t0 - 1 : end - 1]
            yield torch.from_numpy(inp), torch.from_numpy(tgt)

    return math.ceil(T / bptt), build()


def with_backward_rows(inp: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor]:
    """(B, T) sentence batches -> (2B, T): the rows, then each row reversed in its own length.

    A row of length L (its non-padding targets) is inputs `<bos> t1..tn`, targets
    `t1..tn <eos>`, with n = L - 1; its reversed copy is `<bos> tn..t1` and
    `tn..t1 <eos>`, and its padding stays where it was.
    """
    B, T = inp.shape
    lengths = (tgt != PAD).sum(dim=1, keepdim=True)  # (B, 1)
    pos = torch.arange(T).unsqueeze(0).expand(B, T)  # (B, T)
    # inputs: position j in [1, L) takes j' = L - j; targets: j in [0, L - 1) takes L - 2 - j.
    inp_src = torch.where((pos >= 1) & (pos < lengths), lengths - pos, pos)
    tgt_src = torch.where(pos < lengths - 1, lengths - 2 - pos, pos)
    inp_b = inp.gather(1, inp_src)
    tgt_b = tgt.gather(1, tgt_src)
    return torch.cat([inp, inp_b]), torch.cat([tgt, tgt_b])


def windows(inp: Tensor, tgt: Tensor, bptt: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Cut (B, T) tensors into time windows of at most `bptt`, dropping all-padding tails."""
    for t0 in range(0, inp.shape[1], bptt):
        yield inp[:, t0 : t0 + bptt], tgt[:, t0 : t0 + bptt]


def stream_lanes(split: TokenSplit, batch_size: int, rank: int = 0, world: int = 1) -> int:
    """Length L of each lane; the global batch is batch_size * world lanes."""
    return (len(split.tokens) - 1) // (batch_size * world)


def stream_window(
    split: TokenSplit, batch_size: int, pos: int, bptt: int, rank: int = 0, world: int = 1
) -> tuple[Tensor, Tensor]:
    """Window starting at `pos` in every lane of this rank: inputs and targets (B, T)."""
    L = stream_lanes(split, batch_size, rank, world)
    T = min(bptt, L - pos)
    lanes = range(rank * batch_size, (rank + 1) * batch_size)
    rows = [np.asarray(split.tokens[b * L + pos : b * L + pos + T + 1]) for b in lanes]
    chunk = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T + 1)
    return chunk[:, :-1], chunk[:, 1:]

"""Training batches: windows built one at a time equal the whole padded batch, cut."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rnnlm.models.tokenizers import BOS, PAD
from rnnlm.training.corpus import CorpusOptions, TokenSplit, build_corpus
from rnnlm.training.data import sentence_batches, sentence_windows


def _padded_then_cut(
    split: TokenSplit, idx: np.ndarray[Any, Any], bptt: int
) -> list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    """The reference: pad the whole batch to its longest row, then cut it in windows."""
    seqs = [split.sequence(int(i)) for i in idx]
    T = max(len(s) for s in seqs)
    inp = np.full((len(seqs), T), PAD, dtype=np.int64)
    tgt = np.full((len(seqs), T), PAD, dtype=np.int64)
    for row, s in enumerate(seqs):
        inp[row, 0] = BOS
        inp[row, 1 : len(s)] = s[:-1]
        tgt[row, : len(s)] = s
    return [(inp[:, t : t + bptt], tgt[:, t : t + bptt]) for t in range(0, T, bptt)]


@pytest.mark.parametrize("bptt", [1, 7, 50, 10_000])
def test_windows_equal_the_padded_batch_cut(tmp_path: Path, bptt: int) -> None:
    lines = ["a" * n for n in (1, 2, 5, 49, 50, 51, 333)] + ["the cat sat", "b" * 120]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    build_corpus(
        [tmp_path / "in.txt"], tmp_path / "c",
        CorpusOptions(min_freq=1, valid_fraction=0, test_fraction=0),
    )  # fmt: skip
    split = TokenSplit(tmp_path / "c", "train")
    for idx in sentence_batches(split, 4, epoch=0, seed=1):
        want = _padded_then_cut(split, idx, bptt)
        n, got = sentence_windows(split, idx, bptt)
        got_all = list(got)
        assert n == len(want) == len(got_all)
        for (wi, wt), (gi, gt) in zip(want, got_all, strict=True):
            assert torch.equal(torch.from_numpy(wi), gi) and torch.equal(torch.from_numpy(wt), gt)
        # From a window on, as a resumed run asks for them.
        _, rest = sentence_windows(split, idx, bptt, start=n - 1)
        (last,) = list(rest)
        assert torch.equal(last[1], torch.from_numpy(want[-1][1]))

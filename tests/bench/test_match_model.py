"""bench/match_model.py, the match model #31 measures: its longest matches and the
counts after them against a brute-force search of the same stream."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
_spec = importlib.util.spec_from_file_location("bench_match_model", BENCH / "match_model.py")
assert _spec and _spec.loader
match_model = importlib.util.module_from_spec(_spec)
sys.modules["bench_match_model"] = match_model
_spec.loader.exec_module(match_model)

BOS, EOS = 2, 3


def _brute(stream: list[int], history: list[int], max_len: int, vocab: int) -> tuple[int, Any]:
    """The longest suffix of history (≤ max_len) found anywhere in stream, and the
    tokens after its occurrences, by looking at every position."""
    best, counts = 0, np.zeros(vocab, np.int64)
    for length in range(1, min(len(history), max_len) + 1):
        s, found, c = history[-length:], False, np.zeros(vocab, np.int64)
        for e in range(len(stream) - length + 1):
            if stream[e : e + length] == s:
                found = True
                if e + length < len(stream):
                    c[stream[e + length]] += 1
        if not found:
            break
        best, counts = length, c
    return best, counts


@pytest.mark.parametrize("max_len, block", [(8, 4), (3, 1), (20, 128)])
def test_lookup_matches_a_brute_force_search(max_len: int, block: int) -> None:
    rng = np.random.default_rng(0)
    vocab = 7
    # Few distinct tokens, so long repeats occur; one line repeated whole.
    seqs = [np.append(rng.integers(4, vocab - 1, rng.integers(1, 25)), EOS) for _ in range(30)]
    seqs[3] = np.append(rng.integers(4, vocab - 1, 23), EOS)
    seqs.append(seqs[3].copy())
    stream = match_model.training_stream(seqs, BOS)
    assert stream[0] == BOS and stream[-1] == EOS and len(stream) == sum(len(s) + 1 for s in seqs)
    index = match_model.MatchIndex(stream, vocab, max_len=max_len, block=block)
    width = 24
    histories = np.full((200, width), -1, np.int64)
    for r in range(200):
        n = int(rng.integers(1, width + 1))
        histories[r, width - n] = BOS
        histories[r, width - n + 1 :] = rng.integers(4, vocab, n - 1)  # vocab-1 never occurs
    histories[0] = [BOS, *seqs[3][: width - 1]]  # a training line's start, repeated
    length, counts = index.lookup(histories)
    for r in range(200):
        h = [int(t) for t in histories[r] if t >= 0]
        want_len, want_counts = _brute(stream.tolist(), h, max_len, vocab)
        assert length[r] == want_len, (r, h)
        np.testing.assert_array_equal(counts[r], want_counts if want_len else 0)
    assert length.max() == max_len  # the cap binds
    assert (length == 0).any()  # a newest token the stream never has: no match, no counts


def test_an_empty_stream_has_no_matches() -> None:
    index = match_model.MatchIndex(match_model.training_stream([], BOS), 5, max_len=4)
    length, counts = index.lookup(np.array([[BOS, 4]], np.int64))
    assert length.tolist() == [0] and counts.sum() == 0


def test_counted_part_is_a_distribution_and_one_guess_its_likeliest_token() -> None:
    # After <bos> 4 5 the stream has 4 twice and 3 (<eos>) once.
    stream = match_model.training_stream([np.array([4, 5, 4, 5, 4, 3]), np.array([4, 5, 3])], BOS)
    index = match_model.MatchIndex(stream, 7, max_len=8)
    histories = np.array([[-1, 4, 5], [-1, -1, 6]], np.int64)  # 6: never in the stream
    lp, stats = match_model.counted_part(*index.lookup(histories))
    p = lp.exp().numpy()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(p[0, [3, 4]], [1 / 3, 2 / 3], atol=1e-12)
    np.testing.assert_allclose(p[1], 1 / 7)  # no match: uniform
    assert stats[0].tolist() == [2, 3, 2] and stats[1].tolist() == [0, 0, 0]
    one, _ = match_model.counted_part(*index.lookup(histories), one_guess=True)
    assert one[0].exp().argmax() == 4 and float(one[0].exp().max()) == 1.0
    np.testing.assert_allclose(one[1].exp().numpy(), 1 / 7)

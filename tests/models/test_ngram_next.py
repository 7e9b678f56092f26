"""The n-gram's next-token layout (models/ngram_next.py): contexts carried from token to
token are the contexts walked from the history, and the distribution from them is the
model's, entry for entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rnnlm.models.ngram import NgramModel
from rnnlm.models.ngram_next import layout_of
from rnnlm.models.tokenizers import BOS, EOS, SPECIALS
from rnnlm.training.ngram import estimate

DATA = Path(__file__).resolve().parent.parent / "data" / "ngram"


def _zipf(order: int) -> tuple[NgramModel, list[np.ndarray]]:
    lines = [line.split() for line in (DATA / "zipf.txt").read_text().splitlines()]
    vocab = SPECIALS + sorted({w for line in lines for w in line})
    ids = {w: i for i, w in enumerate(vocab)}
    seqs = [np.array([ids[w] for w in line] + [EOS]) for line in lines]
    flat = np.concatenate(seqs)
    model, _ = estimate(flat, np.cumsum([0] + [len(s) for s in seqs]), order, len(vocab))
    return model, seqs


def _windows(seq: list[int], width: int) -> np.ndarray:
    """The history before each position of `seq`: (len(seq), width), -1 before the start."""
    padded = [-1] * width + seq
    return np.array([padded[i : i + width] for i in range(len(seq))], np.int64).reshape(
        len(seq), width
    )


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_advancing_by_a_token_is_walking_the_longer_history(order: int) -> None:
    model, seqs = _zipf(order)
    nt = layout_of(model)
    rng = np.random.default_rng(order)
    # Sentences of the corpus (long matches), and random ids (backing off to nothing).
    texts = [[BOS, *s.tolist()] for s in seqs[:40]]
    texts += [[BOS, *rng.integers(3, model.vocab_size, size=12).tolist()] for _ in range(20)]
    for text in texts:
        walked = nt.contexts(_windows(text, order - 1))  # before each position
        ctx = walked[1:2]  # after the start token, as a prompt leaves it
        for i in range(2, len(text)):
            ctx = nt.advance(ctx, np.array([text[i - 1]]))
            assert ctx.tolist() == walked[i : i + 1].tolist(), (text, i)
    # A batch advances row by row as each row would alone.
    rows = np.array([t[:6] for t in texts if len(t) >= 6])
    before = nt.contexts(np.stack([_windows(r.tolist(), order - 1)[-1] for r in rows]))
    after = nt.advance(before, rows[:, -1])
    for r in range(len(rows)):
        assert after[r].tolist() == nt.advance(before[r : r + 1], rows[r : r + 1, -1])[0].tolist()
    if order > 1:
        assert (after[:, 0] == rows[:, -1]).all()  # the newest token is always a context
    if order > 2:
        assert (after[:, 1:] >= 0).any()  # and some rows match longer ones


@pytest.mark.parametrize("order", [2, 3, 5])
def test_the_distribution_is_every_tokens_backed_off_probability(order: int) -> None:
    model, seqs = _zipf(order)
    nt = layout_of(model)
    rng = np.random.default_rng(0)
    texts = [[BOS, *s.tolist()] for s in seqs[:30]]
    hist = np.concatenate([_windows(t, order - 1) for t in texts])
    hist = np.concatenate([hist, rng.integers(-1, model.vocab_size, size=(40, order - 1))])
    hist[hist == 0] = EOS  # <pad> never appears in a history
    probs, factor, bucket = nt.distribution(nt.contexts(hist), np.float64)
    dist = probs * factor[:, None]
    V = model.vocab_size
    for i in range(0, len(hist), 5):  # every token of every fifth history, one query each
        lp, b = model.logprob_and_bucket(np.repeat(hist[i : i + 1], V, axis=0), np.arange(V))
        with np.errstate(divide="ignore"):
            np.testing.assert_allclose(np.log(dist[i]), lp, rtol=0, atol=1e-12)
        assert bucket[i] == b[0]
    # One row alone takes its own path (slices, not index arrays): the same numbers.
    for i in range(0, len(hist), 7):
        one, f1, b1 = nt.distribution(nt.contexts(hist[i : i + 1]), np.float64)
        np.testing.assert_allclose(one[0] * f1[0], dist[i], rtol=1e-12)
        assert b1[0] == bucket[i]
    # In float32 as the batch asks for it: the same to float32's precision.
    p32, f32, b32 = nt.distribution(nt.contexts(hist), np.float32)
    assert p32.dtype == np.float32 and (b32 == bucket).all()
    np.testing.assert_allclose(p32 * f32[:, None], dist, rtol=1e-6)


def test_nothing_stored_falls_back_to_the_unigram() -> None:
    model, _ = _zipf(3)
    nt = layout_of(model)
    none = np.full((2, 2), -1, np.int64)
    probs, factor, bucket = nt.distribution(none, np.float64)
    np.testing.assert_allclose(probs, np.exp(model.logprob[0])[None, :].repeat(2, 0), rtol=1e-6)
    assert factor.tolist() == [1.0, 1.0] and bucket.tolist() == [0, 0]
    assert nt.nbytes() > 0


def test_memory_counts_the_sampling_layout_once_built() -> None:
    model, _ = _zipf(3)
    before = model.memory_bytes()
    assert before > model.nbytes()  # the index of n-grams by context
    layout = layout_of(model)  # built on first use
    assert model.memory_bytes() == before + layout.nbytes()

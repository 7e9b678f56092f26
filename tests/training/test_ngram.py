"""The modified Kneser-Ney estimator: by hand, against KenLM's lmplz, and its distributions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rnnlm.models.errors import RnnlmError
from rnnlm.models.ngram import KID_BINS, NgramModel
from rnnlm.models.ngram_next import layout_of
from rnnlm.models.tokenizers import BOS, EOS, SPECIALS
from rnnlm.training.ngram import FALLBACK, discounts, estimate

DATA = Path(__file__).resolve().parent.parent / "data" / "ngram"
LN10 = math.log(10)


def _corpus(lines: list[list[str]], vocab: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = {w: i for i, w in enumerate(vocab)}
    seqs = [[ids[w] for w in line] + [EOS] for line in lines]
    return np.concatenate(seqs), np.cumsum([0] + [len(s) for s in seqs])


def _hist(model: NgramModel, context: list[int]) -> np.ndarray:
    """A history array (1, order-1) for `context` (oldest first)."""
    width = model.order - 1
    row = ([-1] * width + context)[len(context) :] if width else []
    return np.array([row], dtype=np.int64).reshape(1, width)


def _p(model: NgramModel, context: list[int], token: int) -> float:
    return float(np.exp(model.logprob_of(_hist(model, context), np.array([token]))[0]))


# <s> a b </s>, <s> a b </s>, <s> b a </s>: small enough to work out on paper.
VOCAB = [*SPECIALS, "a", "b"]
A, B = 4, 5
LINES = [["a", "b"], ["a", "b"], ["b", "a"]]


def test_bigram_by_hand() -> None:
    # Every count-of-counts is degenerate here: the fallback discounts 0.5, 1, 1.5.
    # Unigrams: continuation counts a 2 ({<s>, b}), b 2, </s> 2; u = (2 - 1)/6 each,
    # γ = 3·1/6 = 1/2, spread over the 4 predictable ids (<unk>, </s>, a, b).
    model, info = estimate(*_corpus(LINES, VOCAB), 2, len(VOCAB))
    assert info.discounts == [list(FALLBACK)] * 2 and info.fallback_orders == [1, 2]
    assert _p(model, [], A) == pytest.approx(1 / 6 + 1 / 8)
    assert _p(model, [], 1) == pytest.approx(1 / 8)  # <unk>: never seen, the uniform share
    assert _p(model, [], BOS) == 0 and _p(model, [], 0) == 0  # never predicted
    # After <s>: a twice, b once. u(a) = (2-1)/3, u(b) = (1-0.5)/3, γ = (1 + 0.5)/3.
    p1_a = 7 / 24
    assert _p(model, [BOS], A) == pytest.approx(1 / 3 + 0.5 * p1_a)  # 23/48
    assert _p(model, [BOS], B) == pytest.approx(1 / 6 + 0.5 * p1_a)  # 15/48
    assert _p(model, [BOS], EOS) == pytest.approx(0.5 * 7 / 24)  # backed off: 7/48
    assert _p(model, [A], B) == pytest.approx(23 / 48)
    assert _p(model, [B], EOS) == pytest.approx(23 / 48)
    assert _p(model, [B], A) == pytest.approx(15 / 48)


def test_trigram_by_hand_uses_continuation_counts_except_after_start() -> None:
    # Order 2 adjusted counts: "<s> a" keeps its count 2 (nothing precedes <s>);
    # "a b" becomes 1 (only <s> precedes it), as do the other bigrams.
    model, _ = estimate(*_corpus(LINES, VOCAB), 3, len(VOCAB))
    # P2(b | a) = (1 - 0.5)/2 + (0.5 + 0.5)/2 · 7/24 = 19/48;
    # P3(b | <s> a) = (2 - 1)/2 + (1/2)·19/48 = 67/96.
    assert _p(model, [BOS, A], B) == pytest.approx(67 / 96)
    assert _p(model, [A], B) == pytest.approx(19 / 48)
    # An unseen trigram backs off: γ(<s> a) · P2(</s> | a).
    p2_eos_a = (1 - 0.5) / 2 + 0.5 * 7 / 24
    assert _p(model, [BOS, A], EOS) == pytest.approx(0.5 * p2_eos_a)


def test_discounts_follow_chen_and_goodman_and_fall_back_when_degenerate() -> None:
    counts = np.array([1] * 10 + [2] * 4 + [3] * 3 + [4] * 2 + [7])
    y = 10 / (10 + 2 * 4)
    d, fell_back = discounts(counts)
    assert not fell_back
    assert d == pytest.approx([1 - 2 * y * 4 / 10, 2 - 3 * y * 3 / 4, 3 - 4 * y * 2 / 3])
    assert discounts(np.array([1, 1, 2, 2])) == (list(FALLBACK), True)  # no count of 3


def _read_arpa(path: Path) -> dict[str, tuple[float, float]]:
    out, order = {}, 0
    for line in path.read_text().splitlines():
        if line.startswith("\\") and line.endswith("-grams:"):
            order = int(line[1:].split("-")[0])
        elif order and line and not line.startswith("\\"):
            parts = line.split("\t")
            out[parts[1]] = (float(parts[0]), float(parts[2]) if len(parts) > 2 else 0.0)
    return out


@pytest.mark.parametrize("name", ["tiny", "zipf"])
def test_every_ngram_matches_lmplz(name: str) -> None:
    """The same n-grams as KenLM's lmplz, with the same probabilities and backoffs."""
    lines = [line.split() for line in (DATA / f"{name}.txt").read_text().splitlines()]
    vocab = SPECIALS + sorted({w for line in lines for w in line})
    model, _ = estimate(*_corpus(lines, vocab), 3, len(vocab))
    arpa = _read_arpa(DATA / f"{name}.3.arpa")
    words = {BOS: "<s>", EOS: "</s>", 1: "<unk>"}
    for k in range(1, 4):
        for j, row in enumerate(model.rows(k)):
            if k == 1 and row[0] == 0:
                continue  # <pad>: not a word
            text = " ".join(words.get(int(i), vocab[int(i)]) for i in row)
            want_p, want_b = arpa.pop(text)
            if text != "<s>":  # lmplz writes P(<s>) = 1; rnnlm never predicts it
                assert model.logprob[k - 1][j] / LN10 == pytest.approx(want_p, abs=1e-5), text
            got_b = model.backoff[k - 1][j] / LN10 if k < 3 else 0.0
            assert got_b == pytest.approx(want_b, abs=1e-5), text
    assert not arpa, f"in lmplz's model, not in rnnlm's: {sorted(arpa)[:5]}"


def test_distributions_sum_to_one_and_agree_with_single_queries() -> None:
    lines = [line.split() for line in (DATA / "zipf.txt").read_text().splitlines()]
    vocab = SPECIALS + sorted({w for line in lines for w in line})
    model, _ = estimate(*_corpus(lines, vocab), 4, len(vocab))
    rng = np.random.default_rng(0)
    # Histories from the text itself (long matches) and random ones (backoff all the way).
    ids, offsets = _corpus(lines, vocab)
    seen = [np.r_[BOS, ids[offsets[i] : offsets[i + 1]]] for i in range(50)]
    hists = [s[max(0, p - 3) : p] for s in seen for p in range(1, len(s))]
    hists += [rng.integers(1, len(vocab), size=rng.integers(0, 4)) for _ in range(200)]
    h = np.array([[-1] * (3 - len(x)) + list(x) for x in hists], dtype=np.int64)
    dist = layout_of(model).probabilities(h)
    assert dist.shape == (len(h), len(vocab))
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, atol=1e-6)
    assert (dist[:, [0, BOS]] == 0).all()
    for i in range(0, len(h), 7):  # one history at a time: the single-stream path
        np.testing.assert_allclose(
            layout_of(model).probabilities(h[i : i + 1])[0], dist[i], rtol=1e-12
        )
    targets = rng.integers(1, len(vocab), size=len(h))
    targets[targets == BOS] = EOS
    np.testing.assert_allclose(
        np.log(dist[np.arange(len(h)), targets]), model.logprob_of(h, targets), atol=1e-9
    )


def test_mixing_buckets_by_hand() -> None:
    # The trigram of LINES. After "<s> a" the model has seen b (twice): a stored context
    # of 2 tokens with 1 continuation: bucket 2·KID_BINS + 0. After "b": a and </s>
    # (and "<s> b" once, followed by a): 2 tokens, 1 continuation; after "a b" only </s>.
    model, _ = estimate(*_corpus(LINES, VOCAB), 3, len(VOCAB))
    hists = np.array([[BOS, A], [-1, B], [BOS, B], [A, B], [-1, BOS], [B, B], [-1, -1]])
    _, bucket = model.logprob_and_bucket(hists, np.full(len(hists), EOS))
    K = KID_BINS
    # "<s>": a, b (2 continuations, log2 bin 1); "b" alone: a, </s>; "b b": never seen,
    # so its one-token suffix "b"; no history at all: bucket 0.
    assert bucket.tolist() == [2 * K, 1 * K + 1, 2 * K, 2 * K, 1 * K + 1, 1 * K + 1, 0]
    assert model.buckets() == 3 * K


def test_scoring_and_sampling_put_a_history_in_the_same_bucket() -> None:
    # Sampling reads λ from the distribution's walk, scoring from the lookup's: they
    # must agree, or a sample's logprob would not score back to itself.
    lines = [line.split() for line in (DATA / "zipf.txt").read_text().splitlines()]
    vocab = SPECIALS + sorted({w for line in lines for w in line})
    model, _ = estimate(*_corpus(lines, vocab), 4, len(vocab))
    ids, offsets = _corpus(lines, vocab)
    rng = np.random.default_rng(1)
    seen = [np.r_[BOS, ids[offsets[i] : offsets[i + 1]]] for i in range(60)]
    hists = [s[max(0, p - 3) : p] for s in seen for p in range(1, len(s))]
    hists += [rng.integers(1, len(vocab), size=rng.integers(0, 4)) for _ in range(200)]
    h = np.array([[-1] * (3 - len(x)) + list(x) for x in hists], dtype=np.int64)
    _, by_lookup = model.logprob_and_bucket(h, rng.integers(3, len(vocab), size=len(h)))
    weights = rng.uniform(0.05, 0.95, model.buckets())
    part, by_walk = layout_of(model).mixture_part(h, weights)
    assert by_walk.tolist() == by_lookup.tolist()
    assert len(set(by_walk.tolist())) > 5  # the histories span many buckets
    # Each row is (1 - λ of its bucket) of a distribution, on the batched and one-row paths.
    np.testing.assert_allclose(part.sum(axis=1), 1 - weights[by_walk], atol=1e-9)
    for i in range(0, len(h), 11):
        one, b = layout_of(model).mixture_part(h[i : i + 1], weights)
        assert b[0] == by_walk[i]
        np.testing.assert_allclose(one[0], part[i], rtol=1e-12)


def test_stream_mode_starts_after_eos_and_short_corpora_leave_orders_empty() -> None:
    model, info = estimate(*_corpus([["a"], ["b", "a"]], VOCAB), 5, len(VOCAB), start_id=EOS)
    assert model.start_id == EOS and info.counts[3:] == [1, 0]  # the longest: </s> b a </s>
    h = np.array([[-1, -1, EOS, B]])
    dist = layout_of(model).probabilities(h)
    assert dist.sum() == pytest.approx(1.0)
    assert dist[0, EOS] > 0  # </s> is predicted, and also the start
    assert dist[0, BOS] == 0


def test_bad_input_is_refused() -> None:
    ids, offsets = _corpus(LINES, VOCAB)
    with pytest.raises(RnnlmError, match="at least 1"):
        estimate(ids, offsets, 0, len(VOCAB))
    with pytest.raises(RnnlmError, match="outside the vocabulary"):
        estimate(ids, offsets, 2, 5)
    with pytest.raises(RnnlmError, match="no training text"):
        estimate(ids[:0], np.array([0]), 2, len(VOCAB))


def test_the_mixing_weight_is_the_maximum_likelihood_one() -> None:
    from rnnlm.training.mixture import fit_mixing_weight

    rng = np.random.default_rng(3)
    rnn, ngram = np.log(rng.uniform(0.01, 1, 500)), np.log(rng.uniform(0.01, 1, 500))

    def loglik(lam: float) -> float:
        return float(np.log(lam * np.exp(rnn) + (1 - lam) * np.exp(ngram)).sum())

    lam = fit_mixing_weight(rnn, ngram)
    grid = np.linspace(0, 1, 1001)
    best = grid[np.argmax([loglik(g) for g in grid])]
    assert lam == pytest.approx(best, abs=1e-3) and 0 < lam < 1
    # One part always better: the weight goes all the way to it.
    assert fit_mixing_weight(rnn, rnn - 1) == 1.0 and fit_mixing_weight(rnn - 1, rnn) == 0.0
    assert fit_mixing_weight(np.zeros(0), np.zeros(0)) == 0.5  # nothing to fit on


def test_bucket_weights_fit_each_bucket_and_fall_back_where_it_has_too_few_tokens() -> None:
    from rnnlm.training.mixture import MIN_BUCKET_TOKENS, fit_bucket_weights, fit_mixing_weight

    rng = np.random.default_rng(4)
    K, n = KID_BINS, 400
    rnn, ngram = np.log(rng.uniform(0.01, 1, n)), np.log(rng.uniform(0.01, 1, n))
    bucket = np.full(n, 1 * K + 3)
    bucket[:100] = 2 * K + 1  # the RNN is better here: its weight should rise
    rnn[:100] = ngram[:100] + 1.0
    bucket[100:110] = 2 * K + 5  # too few for its own λ: takes context length 2's
    w = fit_bucket_weights(rnn, ngram, bucket, 3, overall=0.5)
    assert len(w) == 3 * K
    assert w[2 * K + 1] == 1.0  # P_rnn > P_ngram at every one of its tokens
    assert w[1 * K + 3] == pytest.approx(fit_mixing_weight(rnn[110:], ngram[110:]))
    length2 = bucket // K == 2
    assert MIN_BUCKET_TOKENS > 10  # the 10 tokens of bucket 2·K + 5
    assert w[2 * K + 5] == pytest.approx(fit_mixing_weight(rnn[length2], ngram[length2]))
    assert w[2 * K] == w[2 * K + 5]  # no tokens at all: the same fallback
    assert (w[:K] == 0.5).all()  # context length 0: no tokens, the overall λ

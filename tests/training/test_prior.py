"""The residual model's training prior: each position's n-gram distribution, from an
n-gram that never saw the position's sentence, and its place beside each window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnlm.models.ngram import histories_of
from rnnlm.models.ngram_next import layout_of
from rnnlm.models.tokenizers import BOS, PAD
from rnnlm.training.corpus import CorpusOptions, TokenSplit, build_corpus, load_corpus_tokenizer
from rnnlm.training.data import sentence_windows
from rnnlm.training.ngram import estimate
from rnnlm.training.prior import FOLDS, fold_priors, histories_at, with_prior

ORDER = 4


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> TokenSplit:
    """Sentences that share most of their text, and one seen once."""
    lines = [f"line {i}: the {'cat' if i % 3 else 'dog'} sat {'x' * (i % 7)}." for i in range(60)]
    lines += ["a sentence seen once, zebra quokka."]
    text = tmp_path_factory.mktemp("prior") / "t.txt"
    text.write_text("\n".join(lines) + "\n")
    out = text.parent / "corpus"
    build_corpus([text], out, CorpusOptions(seed=1, valid_fraction=0.0, test_fraction=0.0))
    split = TokenSplit(out, "train")
    split.vocab_size = load_corpus_tokenizer(out).vocab_size  # type: ignore[attr-defined]
    return split


def test_histories_are_the_engines(split: TokenSplit) -> None:
    # The engine's histories of one sequence: its inputs <bos> t1 .. tn-1.
    for i in (0, 5, len(split) - 1):
        s = split.sequence(i).astype(np.int64)
        inputs = np.concatenate([[BOS], s[:-1]])[None, :]
        want = histories_of(inputs, ORDER)[0]
        at = np.arange(split.offsets[i], split.offsets[i + 1])
        assert (histories_at(split, BOS, ORDER - 1, at) == want).all()


def test_each_fold_takes_the_ngram_that_left_it_out(split: TokenSplit) -> None:
    V = split.vocab_size  # type: ignore[attr-defined]
    table = fold_priors(split, ORDER, V, BOS)
    assert table.shape == (len(split.tokens), V) and table.dtype == np.float16
    assert np.allclose(np.exp(table.astype(np.float64)).sum(axis=1), 1.0, atol=2e-2)
    tokens, lengths = np.asarray(split.tokens), split.lengths
    fold_of_pos = np.repeat(np.arange(len(split)) % FOLDS, lengths)
    for f in range(FOLDS):
        keep = np.arange(len(split)) % FOLDS != f
        offsets = np.concatenate([[0], np.cumsum(lengths[keep])])
        ngram, _ = estimate(tokens[fold_of_pos != f], offsets, ORDER, V, BOS)
        at = np.flatnonzero(fold_of_pos == f)[:50]
        hist = histories_at(split, BOS, ORDER - 1, at)
        with np.errstate(divide="ignore"):
            want = np.log(layout_of(ngram).probabilities(hist))
        got = table[at].astype(np.float64)
        finite = np.isfinite(want)
        assert (np.isfinite(got) == finite).all()
        assert np.abs(got[finite] - want[finite]).max() < 0.02  # float16's rounding
    # The n-gram of the whole split has counted every sentence; the prior has not, and
    # finds its own training text much less likely (the sentence seen once above all).
    at = np.arange(len(tokens))
    full, _ = estimate(tokens, np.asarray(split.offsets), ORDER, V, BOS)
    targets = tokens.astype(np.int64)
    seen = full.logprob_of(histories_at(split, BOS, ORDER - 1, at), targets)
    unseen = table[at, targets].astype(np.float64)
    assert unseen.sum() < seen.sum() - 50.0


def test_too_large_a_table_is_refused(split: TokenSplit) -> None:
    from rnnlm.models.errors import RnnlmError

    with pytest.raises(RnnlmError, match="GiB"):
        fold_priors(split, ORDER, 10**8, BOS)


def test_each_window_gets_its_positions_prior(split: TokenSplit) -> None:
    table = np.random.default_rng(0).normal(size=(len(split.tokens), 7)).astype(np.float16)
    idx = np.array([3, 0, 17, 9])
    bptt = 5
    n, wins = sentence_windows(split, idx, bptt, start=1)
    got = list(with_prior(wins, table, split, idx, bptt, first=1))
    assert len(got) == n - 1
    for k, (_, tgt, prior) in enumerate(got, start=1):
        assert prior is not None and prior.shape == (*tgt.shape, 7)
        for r, i in enumerate(idx):
            for t in range(tgt.shape[1]):
                p = split.offsets[i] + k * bptt + t
                if tgt[r, t] == PAD:
                    assert (prior[r, t] == 0).all()
                else:
                    assert int(tgt[r, t]) == split.tokens[p]
                    assert np.array_equal(prior[r, t].numpy(), table[p].astype(np.float32))
    _, wins = sentence_windows(split, idx, bptt)
    assert all(p is None for _, _, p in with_prior(wins, None, split, idx, bptt))


def test_a_residual_models_padding_window_has_no_loss() -> None:
    """Under DDP a rank whose batch ends first runs (rows, 1) windows of <pad>, with no
    prior (training/train.py `_in_step`): a residual model's loss there is zero."""
    from rnnlm.models.model import RNNLM, ModelConfig
    from rnnlm.training.objective import LossModule

    model = RNNLM(ModelConfig(vocab_size=9, embedding=4, hidden=6, layers=1, tied=False,
                              residual=True))  # fmt: skip
    pad = torch.full((3, 1), PAD, dtype=torch.long)
    nll, count, _ = LossModule(model)(pad, pad, None, None)
    assert count == 0 and float(nll.sum().detach()) == 0.0
    nll.sum().backward()  # every parameter takes part, as DDP's all-reduce needs

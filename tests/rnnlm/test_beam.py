"""Beam-search states on `rnnlm.load` models: KenLM's boxes, values, and batches."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import kenlm
import numpy as np
import pytest
import torch

import rnnlm
from rnnlm.models.checkpoint import save_checkpoint
from rnnlm.models.model import RNNLM, ModelConfig
from rnnlm.models.tokenizers import BOS, EOS, SentencePieceTokenizer, WordTokenizer
from rnnlm.training.arpa import token_words, write_arpa
from rnnlm.training.ngram import estimate
from tests.conftest import TEXT, make_checkpoint

SENTENCES = ["the cat sat on the mat.", "a bird sang in the tree, and the cat listened.",
             "hello world!", "the"]  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> dict[str, Path]:
    """Word and char models with a 3-gram, a residual char model over a 4-gram
    (models/model.py), a sentencepiece one, and `ngram_only`: a word
    model whose λ is 0 (its mixture is its 3-gram), with that 3-gram as an ARPA file."""
    root = tmp_path_factory.mktemp("beam")
    out = {k: make_checkpoint(root / k, k, "lstm", ngram_order=3) for k in ("word", "char")}
    out["char-residual"] = make_checkpoint(root / "r", "char", ngram_order=4, residual=True)
    sp = SentencePieceTokenizer.fit(text_file, root, vocab_size=500)
    cfg = ModelConfig(vocab_size=sp.vocab_size, cell="gru", embedding=16, hidden=32, layers=1)
    torch.manual_seed(0)
    save_checkpoint(root / "sp", RNNLM(cfg), sp, training={"mode": "sentence", "step": 0})
    out["sentencepiece"] = root / "sp"
    w = WordTokenizer.fit(Counter(), vocab_size=None)
    tok = WordTokenizer.fit(Counter(t for line in TEXT for t in w.split(line)))
    seqs = [tok.encode(line) + [EOS] for line in TEXT]
    ngram, _ = estimate(np.concatenate(seqs), np.cumsum([0] + [len(s) for s in seqs]), 3,
                        tok.vocab_size, BOS)  # fmt: skip
    write_arpa(ngram, token_words(tok), root / "three.arpa")
    cfg = ModelConfig(vocab_size=tok.vocab_size, cell="lstm", embedding=16, hidden=32, layers=1)
    save_checkpoint(root / "ngram_only", RNNLM(cfg), tok, ngram, {"lambda": 0.0},
                    training={"mode": "sentence", "step": 0})  # fmt: skip
    out["ngram_only"] = root / "ngram_only"
    return out


@pytest.mark.parametrize("kind", ["word", "char", "sentencepiece", "char-residual"])
def test_word_by_word_is_the_sentence_score(models: dict[str, Path], kind: str) -> None:
    lm = rnnlm.load(models[kind])
    for sentence in SENTENCES:
        state, total = lm.start_state(), 0.0
        for word in [*sentence.split(), "</s>"]:
            log10, state = lm.score_word(state, word)
            total += log10
        assert total == pytest.approx(lm.score(sentence), abs=2e-4), (kind, sentence)


def test_kenlm_boxes_match_kenlm_on_the_ngram(models: dict[str, Path]) -> None:
    lm = rnnlm.load(models["ngram_only"])  # λ 0: the mixture is the 3-gram
    ken = kenlm.Model(str(models["ngram_only"].parent / "three.arpa"))
    for sentence in [*SENTENCES, "mat the on sat cat the"]:
        words = lm.engine.tokenizer.tokenize(sentence)[1]  # KenLM's words: the model's tokens
        for begin in (True, False):
            ours, theirs = rnnlm.State(), kenlm.State()
            if begin:
                lm.BeginSentenceWrite(ours)
                ken.BeginSentenceWrite(theirs)
            else:
                lm.NullContextWrite(ours)
                ken.NullContextWrite(theirs)
            for word in [*words, "</s>"]:
                o_out, t_out = rnnlm.State(), kenlm.State()
                o = lm.BaseFullScore(ours, word, o_out)
                t = ken.BaseFullScore(theirs, word, t_out)
                assert o.log_prob == pytest.approx(t.log_prob, abs=1e-4), (sentence, word)
                assert o.ngram_length == t.ngram_length, (sentence, word, begin)
                assert o.oov == t.oov
                ours, theirs = o_out, t_out


def test_states_are_values(models: dict[str, Path]) -> None:
    lm = rnnlm.load(models["word"])
    a, b, c = rnnlm.State(), rnnlm.State(), rnnlm.State()
    lm.BeginSentenceWrite(a)
    first = lm.BaseScore(a, "the", b)
    assert lm.BaseScore(a, "the", c) == first
    assert b == c and hash(b) == hash(c) and b != a
    merged = {b: 1, c: 2}  # a beam search merges equal hypotheses
    assert len(merged) == 1
    s1 = lm.score_word(lm.start_state(), "the")[1]
    assert s1 == b.value and pickle.loads(pickle.dumps(s1)) == s1
    assert lm.start_state(sentence=False) != lm.start_state()


def test_the_batched_form(models: dict[str, Path]) -> None:
    lm = rnnlm.load(models["char"])
    start = lm.start_state()
    ids = lm.engine.tokenizer.encode("the cat")
    states = [start]
    for t in ids:
        states.append(lm.advance([states[-1]], [t])[0])
    lp = lm.next_logprobs(states)  # (B, V), natural log
    assert lp.shape == (len(states), lm.vocab_size) and lp.dtype == np.float32
    ((_, expected, _),) = lm.engine.score_token_ids([ids])
    got = [lp[k, t] for k, t in enumerate([*ids, EOS])]
    np.testing.assert_allclose(got, expected, atol=2e-5)
    lm.clear_states()
    np.testing.assert_array_equal(lm.next_logprobs(states), lp)


def test_bad_input(models: dict[str, Path]) -> None:
    lm = rnnlm.load(models["word"])
    with pytest.raises(ValueError, match="without spaces"):
        lm.score_word(lm.start_state(), "the cat")
    with pytest.raises(ValueError, match="without spaces"):
        lm.score_word(lm.start_state(), "")
    with pytest.raises(ValueError, match="empty State"):
        lm.BaseScore(rnnlm.State(), "the", rnnlm.State())
    with pytest.raises(ValueError, match="whole model"):
        lm.rnn.start_state()
    assert lm.ngram is not None
    with pytest.raises(ValueError, match="whole model"):
        lm.ngram.next_logprobs([lm.start_state()])
    log10, _ = lm.score_word(lm.start_state(), "zebra")
    assert np.isfinite(log10)  # <unk>: a probability like any token's
    full = lm.BaseFullScore(_box(lm), "zebra", rnnlm.State())
    assert full.oov


def _box(lm: rnnlm.LanguageModel) -> rnnlm.State:
    s = rnnlm.State()
    lm.BeginSentenceWrite(s)
    return s

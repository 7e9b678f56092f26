"""rnnlm models inside pyctcdecode (rnnlm/ctc.py), decoding CTC posteriors made from text."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnlm
from rnnlm.ctc import RnnlmLanguageModel, build_decoder
from rnnlm.models.checkpoint import save_checkpoint
from rnnlm.models.model import RNNLM, ModelConfig
from rnnlm.models.tokenizers import BOS, EOS, SentencePieceTokenizer
from rnnlm.training.ngram import estimate
from tests.conftest import TEXT, make_checkpoint

LABELS = ["", *" abcdefghijklmnopqrstuvwxyz.,!'"]  # "" is CTC's blank
INDEX = {c: i for i, c in enumerate(LABELS)}


def posteriors(text: str, confused: dict[str, str]) -> np.ndarray:
    """CTC log-posteriors (time, labels) spelling `text`, a blank between repeats; where a
    character is in `confused`, its frame leans 60:40 to the wrong one."""
    frames, prev = [], None
    for ch in text:
        if ch == prev:
            frames.append({0: 1.0})
        frames.append({INDEX[confused[ch]]: 0.6, INDEX[ch]: 0.4} if ch in confused
                      else {INDEX[ch]: 1.0})  # fmt: skip
        prev = ch
    out = np.full((len(frames), len(LABELS)), 1e-4)
    for t, f in enumerate(frames):
        for i, p in f.items():
            out[t, i] = p
    return np.log(out / out.sum(axis=1, keepdims=True))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> dict[str, Path]:
    """Word, char and sentencepiece models whose mixture is a 3-gram of TEXT (λ 0), so
    what they prefer is known: TEXT's words."""
    root = tmp_path_factory.mktemp("ctc")
    out = {k: make_checkpoint(root / k, k, "lstm", ngram_order=3, mix_weight=0.0)
           for k in ("word", "char")}  # fmt: skip
    sp = SentencePieceTokenizer.fit(text_file, root, vocab_size=500)
    seqs = [sp.encode(line) + [EOS] for line in TEXT]
    ngram, _ = estimate(np.concatenate(seqs), np.cumsum([0] + [len(s) for s in seqs]), 3,
                        sp.vocab_size, BOS)  # fmt: skip
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=sp.vocab_size, cell="gru", embedding=16, hidden=32, layers=1)
    save_checkpoint(root / "sp", RNNLM(cfg), sp, ngram, {"lambda": 0.0},
                    training={"mode": "sentence", "step": 0})  # fmt: skip
    out["sentencepiece"] = root / "sp"
    return out


@pytest.mark.parametrize("kind", ["word", "char", "sentencepiece"])
def test_the_model_corrects_what_the_posteriors_get_wrong(
    models: dict[str, Path], kind: str
) -> None:
    lm = rnnlm.load(models[kind])
    for text, confused in [("the cat sat on the mat.", {"c": "k"}),
                           ("the dog sat on the log.", {"g": "k"})]:  # fmt: skip
        lp = posteriors(text, confused)
        assert build_decoder(LABELS, None).decode(lp) != text  # acoustics alone: wrong
        assert build_decoder(LABELS, lm, alpha=0.5, beta=1.0).decode(lp) == text, kind


def test_partial_words(models: dict[str, Path]) -> None:
    word = RnnlmLanguageModel(rnnlm.load(models["word"]), unk_score_offset=-10.0)
    assert word.score_partial_token("ca") == 0.0  # "cat" starts so
    assert word.score_partial_token("kq") == -10.0
    assert word.score_partial_token("kqkqkqkqkqkq") == -20.0  # 12 characters: twice
    assert word.score_partial_token("") == 0.0
    char = RnnlmLanguageModel(rnnlm.load(models["char"]), alpha=0.5)
    likely, unlikely = char.score_partial_token("ca"), char.score_partial_token("zq")
    assert 0 > likely > unlikely
    lm = char.lm
    assert likely == pytest.approx(0.5 * lm.score("ca", eos=False) * np.log(10), abs=1e-4)


def test_the_adapters_knobs(models: dict[str, Path]) -> None:
    lm = rnnlm.load(models["word"])
    a = RnnlmLanguageModel(lm, alpha=1.0, beta=0.0)
    start = a.get_start_state()
    assert start == lm.start_state() and a.order > 10**5  # the RNN's history is unbounded
    score, state = a.score(start, "the")
    assert score == pytest.approx(lm.score_word(start, "the")[0] * np.log(10))
    last, _ = a.score(start, "the", is_last_word=True)
    assert last < score  # </s> scored too
    a.reset_params(alpha=2.0, beta=1.0, score_boundary=False)
    assert a.score(start, "the")[0] == pytest.approx(2 * score + 1.0)
    assert a.get_start_state() == lm.start_state(sentence=False)
    b = RnnlmLanguageModel(lm, alpha=2.0, beta=1.0)
    end, same = b.score(start, "", is_last_word=True)  # pyctcdecode's last call: no word
    assert same == start and end == pytest.approx(2 * lm.score("") * np.log(10), abs=1e-4)
    assert b.score(start, "")[0] == 0.0
    unknown, _ = a.score(start, "zebra")
    assert unknown < a.score(start, "the")[0] - 10 * 2  # the unknown word's offset, weighted
    with pytest.raises(ValueError, match="whole model"):
        RnnlmLanguageModel(lm.rnn)
    assert Counter(build_decoder(LABELS, lm).decode(posteriors("the mat.", {}))) == Counter(
        "the mat."
    )

"""An rnnlm model as pyctcdecode's language model: CTC beam search with shallow fusion.

    pip install 'rnnlm[asr]'

    import rnnlm
    from rnnlm.ctc import build_decoder
    decoder = build_decoder(labels, rnnlm.load("checkpoints/words"), alpha=0.5, beta=1.0)
    text = decoder.decode(log_probs)          # (time, len(labels)) CTC log-posteriors

pyctcdecode keeps the decoder apart from the model behind `AbstractLanguageModel`
(`order`, `get_start_state`, `score_partial_token`, `score`); its KenLM model is one
implementation, this is another, with the same knobs on the adapter: `alpha` (the LM
weight, on natural-log probabilities, as pyctcdecode converts KenLM's log10), `beta`
(a bonus per word), `unk_score_offset` (added for a word, or a partial word, the model
does not know), `score_boundary` (score `<s>` and `</s>`). Scores are the model's
mixture through its beam-search states (rnnlm/beam.py), so a word's score is the one
`lm.score` gives it in that sentence.

Partial words (a word still being spelled) are scored without a history, as
pyctcdecode caches them by their text alone: for a word model, `unk_score_offset` where
no vocabulary word starts with the text (pyctcdecode's rule for KenLM, scaled up past 6
characters); for character and subword models, which can spell any word,
`alpha` times the text's log-probability as the first word of a sentence: how
word-like the model finds it. The complete word's score in context replaces it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

try:
    from pyctcdecode.alphabet import Alphabet
    from pyctcdecode.decoder import BeamSearchDecoderCTC
    from pyctcdecode.language_model import AbstractLanguageModel
except ImportError as e:  # the optional extra
    raise ImportError(
        "rnnlm.ctc needs pyctcdecode: pip install 'rnnlm[asr]' (or pip install pyctcdecode)"
    ) from e

from rnnlm.lm import LanguageModel
from rnnlm.models.states import LMState
from rnnlm.models.tokenizers import SPECIALS

LN10 = math.log(10)
AVG_WORD_LEN = 6  # pyctcdecode's: past this many characters an unknown prefix costs more
# What pyctcdecode is told the model's order is: the RNN reads every word since the start,
# so beams that differ anywhere in their text must not be merged as an n-gram's would.
UNBOUNDED_ORDER = 1_000_000


class RnnlmLanguageModel(AbstractLanguageModel):
    """pyctcdecode's `AbstractLanguageModel`, backed by an rnnlm model."""

    def __init__(
        self,
        lm: LanguageModel,
        alpha: float = 0.5,
        beta: float = 1.5,
        unk_score_offset: float = -10.0,
        score_boundary: bool = True,
    ) -> None:
        if lm.part != "mixture":
            raise ValueError("pyctcdecode decodes with the whole model, not one of its parts")
        self.lm = lm
        self.alpha, self.beta = alpha, beta
        self.unk_score_offset, self.score_boundary = unk_score_offset, score_boundary
        tok = lm.engine.tokenizer
        self.kind = tok.kind
        self._prefixes: set[str] = set()
        if self.kind == "word":  # what a word model can spell: its vocabulary's prefixes
            words = [tok.piece(i) for i in range(len(SPECIALS), tok.vocab_size)]
            self._prefixes = {w[:k] for w in words for k in range(1, len(w) + 1)}

    @property
    def order(self) -> int:
        return UNBOUNDED_ORDER

    def get_start_state(self) -> LMState:  # type: ignore[override]  # its hint: KenLM's
        return self.lm.start_state(sentence=self.score_boundary)

    def score_partial_token(self, partial_token: str) -> float:
        if not partial_token:
            return 0.0
        if self.kind == "word":
            score = 0.0 if partial_token in self._prefixes else self.unk_score_offset
            if len(partial_token) > AVG_WORD_LEN:
                score *= len(partial_token) / AVG_WORD_LEN
            return score
        start = self.lm.start_state()
        ids = self.lm.word_ids(start, partial_token)
        rows = self.lm.next_logprobs(_path(start, ids))  # (len(ids), V), natural log
        return self.alpha * float(sum(rows[k, t] for k, t in enumerate(ids)))

    def score(
        self, prev_state: LMState, word: str, is_last_word: bool = False
    ) -> tuple[float, LMState]:
        # pyctcdecode ends every beam with a call for its last partial word, which is
        # empty when the text ended at a word break: no word, only the end.
        log10, state, bonus = 0.0, prev_state, 0.0
        if word:
            log10, state = self.lm.score_word(prev_state, word)
            bonus = self.beta
            if word not in self.lm:
                log10 += self.unk_score_offset
        if is_last_word and self.score_boundary:
            end, _ = self.lm.score_word(state, "</s>")
            log10 += end
        return self.alpha * log10 * LN10 + bonus, state

    def reset_params(self, **params: Any) -> None:
        """alpha, beta, unk_score_offset, score_boundary: as pyctcdecode's KenLM model."""
        for name in ("alpha", "beta", "unk_score_offset"):
            if params.get(name) is not None:
                setattr(self, name, float(params[name]))
        if params.get("score_boundary") is not None:
            self.score_boundary = bool(params["score_boundary"])


def _path(state: LMState, ids: Sequence[int]) -> list[LMState]:
    """The states before each of `ids`, from `state`."""
    out = [state]
    for t in ids[:-1]:
        out.append(out[-1].child(t))
    return out


def build_decoder(
    labels: Sequence[str],
    lm: LanguageModel | None,
    alpha: float = 0.5,
    beta: float = 1.5,
    unk_score_offset: float = -10.0,
    score_boundary: bool = True,
) -> BeamSearchDecoderCTC:
    """pyctcdecode's decoder over CTC `labels` (the blank is "", the word boundary " "),
    with `lm` fused in (None: the acoustic scores alone)."""
    alphabet = Alphabet.build_alphabet(list(labels))
    adapter = (
        None
        if lm is None
        else RnnlmLanguageModel(lm, alpha, beta, unk_score_offset, score_boundary)
    )
    return BeamSearchDecoderCTC(alphabet, language_model=adapter)

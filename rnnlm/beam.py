"""Beam-search states on a loaded model, in KenLM's shape and in a batched one.

KenLM's Python module passes `State` boxes: `BeginSentenceWrite(state)`,
`NullContextWrite(state)`, `BaseScore(in_state, word, out_state) -> log10`. The same
here, over rnnlm's state values (models/states.py: a state is its history, hashable
and equal when the histories are), plus the value-returning form a Python decoder
prefers (`start_state`, `score_word`) and the batched form of shallow fusion
(icefall, ESPnet): `next_logprobs(states) -> (B, V)` and `advance(states, ids)`.

A *word* is text between spaces. It becomes the model's tokens as the same word inside a
sentence would: a word model's tokenizer (which may split off punctuation), a
sentencepiece model's pieces (each word carries its own word-start mark), a
character model's characters, after a space unless it is the first word. "</s>" is
the end of the sentence. So scoring a sentence's words one by one from
`start_state()`, then "</s>", gives `score(sentence)` (tested, to float32 rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from rnnlm.loaded import Loaded
from rnnlm.models.states import LMState
from rnnlm.models.tokenizers import EOS, UNK

END = "</s>"
LN10 = math.log(10)


class State:
    """KenLM's `State`: a box a decoder passes around, hashable and equal by what it
    holds (the history read so far), so equal hypotheses merge."""

    __slots__ = ("value",)

    def __init__(self, value: LMState | None = None) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, State) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"State({self.value!r})"


class FullScoreReturn(NamedTuple):
    """KenLM's `BaseFullScore` result: log10 P of the word, the n-gram length matched,
    whether the word holds a token the model does not know."""

    log_prob: float
    ngram_length: int
    oov: bool


class StateMethods:
    """The beam-search members of `LanguageModel` (rnnlm/lm.py), which sets `_loaded`
    and `part`."""

    _loaded: Loaded
    part: str

    def _check_whole(self) -> None:
        if self.part != "mixture":
            raise ValueError(
                f"beam-search states score with the whole model, not its {self.part} alone"
            )

    # ------------------------------------------------------------ values

    def start_state(self, sentence: bool = True) -> LMState:
        """The state before the first word: after the sentence start (`<s>`), or, with
        `sentence=False`, a null context (the n-gram with no history; the RNN from its
        start, as it has no other)."""
        self._check_whole()
        return LMState((), sentence)

    def word_ids(self, state: LMState, word: str) -> list[int]:
        """The tokens `word` adds after `state` (see the module's docstring)."""
        if word == END:
            return [EOS]
        if not word or word != word.strip() or " " in word:
            raise ValueError(f"a word is text without spaces, got {word!r}")
        tok = self._loaded.engine.tokenizer
        if tok.kind == "char" and state.history:
            return tok.encode(" " + word)
        return tok.encode(word)

    def score_word(self, state: LMState, word: str) -> tuple[float, LMState]:
        """(log10 P(word | state), the state after it)."""
        full, out = self._score_ids(state, self.word_ids(state, word))
        return full.log_prob, out

    def next_logprobs(self, states: Sequence[LMState]) -> np.ndarray[Any, Any]:
        """The mixture's next-token log-probs (natural log, as torch's) after each state:
        (B, V) float32; one decoding step for all states not computed before."""
        self._check_whole()
        with self._loaded.lock:
            return self._loaded.states.next_logprobs(list(states))

    def advance(self, states: Sequence[LMState], token_ids: Sequence[int]) -> list[LMState]:
        """Each state after its token id (no model work until asked for its next
        log-probs)."""
        self._check_whole()
        return self._loaded.states.advance(states, token_ids)

    def clear_states(self) -> None:
        """Forget every state's numbers (they come back when asked for again)."""
        with self._loaded.lock:
            self._loaded.states.clear()

    # ------------------------------------------------------- KenLM's boxes

    def BeginSentenceWrite(self, state: State) -> None:  # noqa: N802 - KenLM's name
        state.value = self.start_state(True)

    def NullContextWrite(self, state: State) -> None:  # noqa: N802 - KenLM's name
        state.value = self.start_state(False)

    def BaseScore(self, in_state: State, word: str, out_state: State) -> float:  # noqa: N802
        """log10 P(word | in_state); the state after the word goes into `out_state`."""
        return self.BaseFullScore(in_state, word, out_state).log_prob

    def BaseFullScore(  # noqa: N802 - KenLM's name
        self, in_state: State, word: str, out_state: State
    ) -> FullScoreReturn:
        if in_state.value is None:
            raise ValueError("an empty State: write it with BeginSentenceWrite first")
        full, out_state.value = self._score_ids(in_state.value, self.word_ids(in_state.value, word))
        return full

    # ------------------------------------------------------------- inside

    def _score_ids(self, state: LMState, ids: list[int]) -> tuple[FullScoreReturn, LMState]:
        self._check_whole()
        loaded = self._loaded
        total = 0.0
        with loaded.lock:
            table = loaded.states
            for t in ids:
                total += float(table.next_logprobs([state])[0, t])
                state = state.child(t)
        return FullScoreReturn(total / LN10, self._matched(state), UNK in ids), state

    def _matched(self, state: LMState) -> int:
        """The n-gram length matched ending in the state's last token (KenLM's meaning);
        the whole history for an RNN alone."""
        engine = self._loaded.engine
        hist = state.history
        if engine.ngram is None:
            return len(hist) + 1
        n = engine.ngram.order
        before = ([engine.start_id] if state.sentence else []) + list(hist[:-1])
        row = ([-1] * (n - 1) + before)[len(before) :] if n > 1 else []
        (length,) = engine.ngram.matched_length(np.array([row], np.int64), np.array(hist[-1:]))
        return int(length)

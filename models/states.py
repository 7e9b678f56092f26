"""Beam-search states: what a decoder carries per hypothesis, as KenLM's `State` is.

An `LMState` is a value: the token ids read since the start, and which start (a
sentence's, or a null context), hashable and equal when the histories are, so a beam
search can merge equal hypotheses. What a state stands for (the RNN's recurrent state
after its history, the n-gram's stored contexts, the next-token log-probabilities of
the mixture there) lives in a `StateTable`, computed once per history however many
hypotheses reach it, and for many states in one batched decoding step:

    table = StateTable(engine)
    s = table.start()                          # after <bos>
    lp = table.next_logprobs([s])              # (1, V), natural log, the mixture
    (t,) = table.advance([s], [token_id])      # a value: s's history + (token_id,)
    lp = table.next_logprobs([t, u, ...])      # one step for every state not yet known

The maths is the engine's, the path sampling takes (models/engine.py): `Engine.decode`
for the step, `Engine.next_logprobs` for the distribution,
`NextTokens.advance` for the n-gram's contexts. So a sentence scored token by token
through states gives what `score_batch` gives, to float32 rounding (tested).

A null context (KenLM's `NullContextWrite`) starts the n-gram with no history at all
(no sentence start); the RNN has no such state (it was trained to read every text
from the start token), so it reads from its start state there too.

Memory: a table keeps at most `max_bytes` of entries (each its recurrent state and its
V log-probabilities), dropping the least recently used; a dropped history is
computed again from its nearest kept ancestor when asked for.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rnnlm.models.model import State

if TYPE_CHECKING:
    from rnnlm.models.engine import Engine

Floats = np.ndarray[Any, np.dtype[np.floating[Any]]]


class LMState:
    """The tokens read since the start (`sentence`: after the sentence start; else after
    a null context): equal states have equal histories. Immutable; its hash is worked
    out once, from its parent's and its last token, so a dictionary of states costs
    the same whatever the length of their histories."""

    __slots__ = ("_hash", "_parent", "history", "sentence")
    history: tuple[int, ...]
    sentence: bool
    _hash: int
    _parent: LMState | None  # kept by child(): parent() in O(1), not O(history)

    def __init__(
        self,
        history: tuple[int, ...] = (),
        sentence: bool = True,
        _hash: int = 0,
        _parent: LMState | None = None,
    ) -> None:
        object.__setattr__(self, "history", tuple(history))
        object.__setattr__(self, "sentence", bool(sentence))
        if not _hash:
            _hash = hash(sentence)
            for t in self.history:
                _hash = hash((_hash, t))
        object.__setattr__(self, "_hash", _hash)
        object.__setattr__(self, "_parent", _parent)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("LMState is immutable")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, LMState):
            return NotImplemented
        return (
            self._hash == other._hash
            and self.sentence == other.sentence
            and self.history == other.history
        )

    def __repr__(self) -> str:
        return f"LMState(history={self.history!r}, sentence={self.sentence!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (LMState, (self.history, self.sentence))

    def parent(self) -> LMState:
        if self._parent is not None:
            return self._parent
        return LMState(self.history[:-1], self.sentence)

    def child(self, token: int) -> LMState:
        return LMState((*self.history, token), self.sentence, hash((self._hash, token)), self)


@dataclass(eq=False, slots=True)
class _Entry:
    """A history's numbers: its column `col` of the step that computed it (the step's
    recurrent state and distribution are kept whole, shared by the step's entries, and
    live as long as one of them does: no per-row copies)."""

    block: tuple[torch.Tensor, ...]  # each (layers, B, hidden): the RNN after the histories
    col: int
    contexts: np.ndarray[Any, np.dtype[np.int64]] | None  # (W,) the engine's contexts_after
    logprobs: Floats  # (V,) the next token's, natural log: a row of the step's (B, V)
    nbytes: int  # this entry's share of its step's memory


def _gather(parents: list[_Entry]) -> State:
    """The parents' recurrent states side by side, (layers, B, hidden) each: one
    index_select per step they came from (in a beam search, usually one)."""
    groups: dict[int, list[int]] = {}
    for j, p in enumerate(parents):
        groups.setdefault(id(p.block), []).append(j)
    parts, order = [], []
    for rows in groups.values():
        block = parents[rows[0]].block
        idx = torch.tensor([parents[j].col for j in rows], device=block[0].device)
        parts.append(tuple(z.index_select(1, idx) for z in block))
        order += rows
    if len(parts) == 1:
        return parts[0]
    joined = tuple(torch.cat(zs, dim=1) for zs in zip(*parts, strict=True))
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))  # joined column of each parent
    return tuple(z.index_select(1, back.to(z.device)) for z in joined)


class StateTable:
    """Each history's recurrent state and next-token log-probs, computed once."""

    def __init__(self, engine: Engine, max_bytes: int = 256 << 20) -> None:
        self.engine = engine
        self.max_bytes = max_bytes
        self._entries: OrderedDict[LMState, _Entry] = OrderedDict()
        self._bytes = 0
        self.computed = 0  # histories computed so far (a decoding step's row each)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def start(sentence: bool = True) -> LMState:
        """The state before the first token: after the sentence start, or a null context."""
        return LMState((), sentence)

    def advance(self, states: Sequence[LMState], tokens: Sequence[int]) -> list[LMState]:
        """Each state with its token appended (no model work: a state is its history)."""
        if len(states) != len(tokens):
            raise ValueError(f"{len(states)} states but {len(tokens)} tokens")
        V = self.engine.tokenizer.vocab_size
        out = []
        for s, t in zip(states, tokens, strict=True):
            t = int(t)
            if not 0 <= t < V:
                raise ValueError(f"token id {t} is not in the vocabulary (0 to {V - 1})")
            out.append(s.child(t))
        return out

    def next_logprobs(self, states: Sequence[LMState]) -> Floats:
        """The model's next-token log-probs (natural log) after each state: (B, V). States
        not seen before are computed together, one decoding step per history length."""
        if not states:
            return np.zeros((0, self.engine.tokenizer.vocab_size), np.float32)
        self._compute(states)
        out = np.stack([self._entries[s].logprobs for s in states])
        for s in states:
            self._entries.move_to_end(s)
        self._evict()
        return out

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    # ---------------------------------------------------------------- inside

    def _compute(self, states: Sequence[LMState]) -> None:
        """Entries for `states` and for every ancestor that a missing one needs."""
        missing: dict[LMState, None] = {}
        for s in states:
            cur = s
            while cur not in self._entries and cur not in missing:
                missing[cur] = None
                if not cur.history:
                    break
                cur = cur.parent()
        for depth in sorted({len(s.history) for s in missing}):
            level = [s for s in missing if len(s.history) == depth]
            for s, entry in zip(level, self._step(level, depth), strict=True):
                self._entries[s] = entry
                self._bytes += entry.nbytes
            self.computed += len(level)

    @torch.inference_mode()
    def _step(self, level: list[LMState], depth: int) -> list[_Entry]:
        """One decoding step for states whose parents have entries (or for roots)."""
        engine = self.engine
        dev = engine.device
        if depth == 0:
            start = np.full(len(level), engine.start_id, dtype=np.int64)
            feats, state = engine.step(start, engine.model.init_state(len(level), dev))
            # What the n-gram and the match read first: the start token, or nothing (a
            # null context).
            first = [[engine.start_id] if s.sentence else [] for s in level]
            contexts = engine.contexts_after(first)
        else:
            parents = [self._entries[s.parent()] for s in level]
            prev = _gather(parents)  # each (layers, B, hidden)
            tokens = np.array([s.history[-1] for s in level], dtype=np.int64)
            feats, state = engine.step(tokens, prev)
            contexts = None
            if parents[0].contexts is not None:
                before = np.stack([p.contexts for p in parents if p.contexts is not None])
                contexts = engine.advance_contexts(before, tokens)
        # A new tensor each step (log-softmax's, or the mixture's): its rows are kept as
        # they are. The state too is the step's own (`decode` never writes in place).
        lp = engine.next_logprobs(feats, contexts)  # (B, V)
        block = lp.float().cpu().numpy()
        share = block.nbytes // len(level) + sum(
            z.numel() * z.element_size() for z in state
        ) // len(level)
        return [
            _Entry(state, j, None if contexts is None else contexts[j], block[j], share)
            for j in range(len(level))
        ]

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.nbytes

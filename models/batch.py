"""A batch of running generations and their recurrent state, stepped together.

Each running `Generation` owns a slice of the recurrent state along dimension 1,
its own parameters and its own random generator (one uniform number per step,
drawn whether or not it is needed), so a sequence gives the same tokens alone or
beside any others. `add()` prefills new prompts into the batch, `step()` picks
one token for every sequence and advances the model once for all that continue,
and finished sequences leave at once. A batch holds only its rows' bookkeeping (ids,
states, parameters, random numbers, stop strings); every step, prefill and
distribution is the engine's (models/engine.py). With an n-gram, each step's distribution
is the mixture, each row's λ that of its history's mixing bucket (or its gate's:
models/gate.py); each row
carries where its history stands in the n-gram (its stored contexts), advanced
by one search per step instead of a walk down the n-gram's orders.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnlm.models.engine import Engine
from rnnlm.models.model import State
from rnnlm.models.results import SampleResult
from rnnlm.models.sampling import Generation, SampleParams, SamplingPlan, choose_tokens
from rnnlm.models.tokenizers import EOS

_UNIFORM_BLOCK = 64  # uniforms each sequence draws from its generator at a time


class Batch:
    """Running generations and their recurrent state, along the batch dimension.

    Per step the work that grows with the batch is tensor work; the Python loop
    over rows only appends each row's token and log-probability and checks its
    end (and decodes text only for rows with stop strings).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.gens: list[Generation] = []
        self.state: State | None = None  # each (layers, B, hidden)
        self.next_logprobs: Tensor | None = None  # (B, V): each sequence's next-token distribution
        # With an n-gram: each row's stored contexts of its last 1 … N-1 tokens, (B, N-1)
        # (models/ngram_next.py; -1 past the longest stored).
        self.contexts: np.ndarray[Any, np.dtype[np.int64]] | None = None
        # Per-row temperature, top_k, top_p, min_p: (B, 4), kept up to date as rows come
        # and go, and (for a batch sampled in torch) as a tensor on the device, made from
        # it when the members change.
        self._knob_rows = np.zeros((0, 4), dtype=np.float32)
        self._knobs: Tensor | None = None
        # Every row's uniforms for the next steps, drawn from its own generator a block at
        # a time (the same numbers, in the same order, as one draw per step): (block, B),
        # one line per step, all rows at the same line `_col`. A row that joins mid-block
        # draws only the rest of the block; at its end every row draws a whole one.
        self._uniforms = np.zeros((_UNIFORM_BLOCK, 0))
        self._col = 0
        self._rows = np.zeros(0, dtype=np.int64)  # 0..B-1
        self._want_top = 0  # the most top_logprobs any row asks for
        self._plan: SamplingPlan | None = None
        self._stop_rows: list[int] = []  # rows with stop strings
        self._left = np.zeros(0, dtype=np.int64)  # tokens each row may still take

    def __len__(self) -> int:
        return len(self.gens)

    @torch.inference_mode()
    def add(self, gens: list[Generation]) -> list[Generation]:
        """Prefill the prompts of `gens` together and join them to the batch.

        Returns those already finished (max_tokens 0), which do not join.
        """
        done = [g for g in gens if g.params.max_tokens == 0]
        for g in done:
            g.finish_reason = "length"
        gens = [g for g in gens if g.params.max_tokens > 0]
        if not gens:
            return done
        engine = self.engine
        inputs = [[engine.start_id] + g.prompt_ids for g in gens]
        if all(len(x) == 1 for x in inputs):  # no prompts: all start from the same point
            state, lp, contexts = self._from_start(len(gens))
        else:
            state, last = engine.prefill(inputs)
            contexts = engine.contexts_after(inputs)
            lp = engine.next_logprobs(last, contexts)  # (B_new, V)
        self.gens.extend(gens)
        self._plan = None
        knobs = [(x.temperature, x.top_k, x.top_p, x.min_p) for x in (g.params for g in gens)]
        self._knob_rows = np.concatenate([self._knob_rows, np.array(knobs, dtype=np.float32)])
        fresh = np.zeros((_UNIFORM_BLOCK, len(gens)))
        for j, g in enumerate(gens):
            fresh[self._col :, j] = g.rng.random(_UNIFORM_BLOCK - self._col)
        self._uniforms = np.concatenate([self._uniforms, fresh], axis=1)
        self._left = np.concatenate(
            [self._left, np.array([g.params.max_tokens - len(g.ids) for g in gens])]
        )
        if self.state is None or self.next_logprobs is None:
            self.state, self.next_logprobs, self.contexts = state, lp, contexts
        else:
            self.state = tuple(
                torch.cat([a, b], dim=1) for a, b in zip(self.state, state, strict=True)
            )
            self.next_logprobs = torch.cat([self.next_logprobs, lp])
            if contexts is not None and self.contexts is not None:
                self.contexts = np.concatenate([self.contexts, contexts])
        return done

    def _from_start(
        self, n: int
    ) -> tuple[State, Tensor, np.ndarray[Any, np.dtype[np.int64]] | None]:
        """n sequences with no prompt: copies of the engine's start point (the state after
        the start token, the next-token log-probs there, the n-gram's contexts). Admitting
        a request then costs no model work."""
        state, lp, contexts = self.engine.start_point()
        # Copies (clone; `repeat` costs four times as much), so the start point stays as it is.
        fmt = torch.contiguous_format
        return (
            tuple(s.expand(-1, n, -1).clone(memory_format=fmt) for s in state),
            lp.expand(n, -1).clone(memory_format=fmt),
            None if contexts is None else contexts.repeat(n, axis=0),
        )

    def remove(self, keep: list[int]) -> None:
        """Keep only the rows in `keep` (indices into the batch)."""
        if len(keep) == len(self.gens):
            return
        self.gens = [self.gens[i] for i in keep]
        rows = np.array(keep, dtype=np.int64)  # one conversion for every array below
        self._plan = None
        self._knob_rows = self._knob_rows[rows]
        self._uniforms = self._uniforms[:, rows]
        self._left = self._left[rows]
        if not keep:
            self.state, self.next_logprobs, self.contexts = None, None, None
            return
        assert self.state is not None and self.next_logprobs is not None
        idx = torch.from_numpy(rows).to(self.engine.device)
        self.state = tuple(s.index_select(1, idx) for s in self.state)
        self.next_logprobs = self.next_logprobs.index_select(0, idx)
        if self.contexts is not None:
            self.contexts = self.contexts[rows]

    def cancel(self, gen: Generation) -> None:
        """Drop a generation whose client went away."""
        self.remove([i for i, g in enumerate(self.gens) if g is not gen])

    def _draw(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """This step's uniform of every row (B,), refilling the block when it runs out."""
        if self._col == _UNIFORM_BLOCK:  # every row's block is used up at once
            for j, g in enumerate(self.gens):
                self._uniforms[:, j] = g.rng.random(_UNIFORM_BLOCK)
            self._col = 0
        u: np.ndarray[Any, np.dtype[np.float64]] = self._uniforms[self._col]  # (B,), contiguous
        self._col += 1
        return u

    def _members_changed(self) -> SamplingPlan:
        """What depends on which rows the batch holds: the sampling plan, the knobs as a
        tensor (a torch batch), the rows with stop strings or top_logprobs."""
        p = [g.params for g in self.gens]
        host = self.engine.host_sampling
        dev = None if host else self.engine.device
        self._knobs = None if host else torch.from_numpy(self._knob_rows).to(dev)
        self._want_top = max(x.top_logprobs for x in p)
        self._plan = SamplingPlan.of_rows(self._knob_rows, dev)
        self._stop_rows = [row for row, x in enumerate(p) if x.stop]
        self._rows = np.arange(len(self.gens))
        return self._plan

    @torch.inference_mode()
    def step(self) -> list[Generation]:
        """Pick the next token of every sequence; advance those that go on.

        Returns the generations that finished in this step (already removed).
        """
        if not self.gens:
            return []
        assert self.state is not None and self.next_logprobs is not None
        gens, lp = self.gens, self.next_logprobs
        plan = self._plan or self._members_changed()  # rebuilt only when the members change
        u = self._draw()  # float64: rounded to float32 on the host (cheaper than a torch op)
        # One sampler (models/sampling.py), on numpy's arrays or torch's (see there).
        if self.engine.host_sampling:  # numpy on the host
            lp_np = lp.numpy()  # (B, V), the same memory
            tok_np = choose_tokens(lp_np, self._knob_rows, u, plan)  # (B,)
            chosen_lp = lp_np[self._rows, tok_np].tolist()
        else:
            uniform = torch.from_numpy(u.astype(np.float32) if lp.dtype == torch.float32 else u)
            uniform = uniform.to(device=lp.device, dtype=lp.dtype)  # a no-op on the CPU
            assert self._knobs is not None
            tokens = choose_tokens(lp, self._knobs, uniform, plan)  # (B,)
            chosen_lp = lp.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
            tok_np = tokens.cpu().numpy()
        tok_list = tok_np.tolist()
        top_v = top_i = None
        if self._want_top:
            top_v, top_i = lp.topk(min(self._want_top, lp.shape[1]), dim=-1)
        for g, t, lp_t in zip(gens, tok_list, chosen_lp, strict=True):  # O(1) per row
            g.ids.append(t)
            g.logprobs.append(lp_t)
        if top_v is not None and top_i is not None:
            self._record_tops(top_v, top_i)
        # Which rows end: <eos> (counted in logprob and num_tokens; no text), a stop
        # string (only rows that have one decode their text), or the length limit.
        self._left -= 1
        at_eos = tok_np == EOS
        ending = at_eos | (self._left <= 0)
        for row in self._stop_rows:
            if not at_eos[row] and gens[row].stopped():
                ending[row] = True
        finished = []
        going = tok_np
        if ending.any():
            for r in np.flatnonzero(ending).tolist():
                g = gens[r]
                if g.finish_reason is None:  # a stop string already said "stop"
                    g.finish_reason = "eos" if at_eos[r] else "length"
                finished.append(g)
            keep = np.flatnonzero(~ending).tolist()
            self.remove(keep)
            going = tok_np[keep]
        if self.gens:
            feats, self.state = self.engine.step(going, self.state)  # (B, F)
            if self.contexts is not None:
                self.contexts = self.engine.advance_contexts(self.contexts, going)
            self.next_logprobs = self.engine.next_logprobs(feats, self.contexts)
        return finished

    def _record_tops(self, top_v: Tensor, top_i: Tensor) -> None:
        piece = self.engine.tokenizer.piece
        for row, g in enumerate(self.gens):
            if k := g.params.top_logprobs:
                g.tops.append(
                    [(piece(a), v) for a, v in zip(top_i[row, :k].tolist(),
                                                   top_v[row, :k].tolist(), strict=True)]
                )  # fmt: skip


def sample(engine: Engine, prompt: str, params: SampleParams, n: int = 1) -> list[SampleResult]:
    """Run n samples of `prompt` to completion in batches of the engine's size: sample i
    uses seed `(params.seed + i) mod 2**63`."""
    batch = Batch(engine)
    gens = [engine.generation(prompt, params, i) for i in range(n)]
    for s in range(0, n, engine.max_batch):
        batch.add(gens[s : s + engine.max_batch])
        while len(batch):
            batch.step()
    return [engine.result(g) for g in gens]

"""Sampling one token per sequence: the parameters, a running sequence, the choice.

`choose_tokens` draws every row of a batch at once by inverse-CDF sampling with
that row's temperature, top-k, top-p and min-p; a row's choice depends only on
its own distribution and uniform number, never on its neighbours. A `Generation`
is one sequence being sampled, with its own random generator, so the same seed
gives the same tokens alone or in any batch (models/batch.py keeps them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from rnnlm.models.results import SampleResult
from rnnlm.models.tokenizers import BOS, PAD, UNK, Decoder

# Sampling never emits these: they have no text, and a sample's text must score
# back to the same tokens. (Their probability still counts in every logprob.)
_NEVER_SAMPLED = [PAD, UNK, BOS]
# The same ids as a slice (they are the first three): a slice assignment is a fraction of
# the cost of an index list's on the host.
_NEVER_SLICE = slice(min(_NEVER_SAMPLED), max(_NEVER_SAMPLED) + 1)
assert list(range(_NEVER_SLICE.start, _NEVER_SLICE.stop)) == sorted(_NEVER_SAMPLED)
SEED_SPACE = 2**63  # seeds are in [0, 2**63): a non-negative int64
A = TypeVar("A", Tensor, np.ndarray[Any, Any])  # a batch's arrays: numpy's or torch's


@dataclass
class SampleParams:
    max_tokens: int = 100
    temperature: float = 1.0  # 0 is greedy
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False  # keep each token's log-probability
    top_logprobs: int = 0  # and this many alternatives per position

    def __post_init__(self) -> None:
        checks = [
            ("max_tokens", self.max_tokens >= 0, "must be >= 0"),
            ("temperature", 0.0 <= self.temperature <= 100.0, "must be in [0, 100]"),
            ("top_k", self.top_k >= 0, "must be >= 0"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("min_p", 0.0 <= self.min_p < 1.0, "must be in [0, 1)"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "must be non-empty"),
            ("top_logprobs", self.top_logprobs >= 0, "must be >= 0"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise ValueError(f"{name} {message}, not {getattr(self, name)!r}")
        if self.seed is not None and not 0 <= self.seed < SEED_SPACE:
            raise ValueError(f"seed must be in [0, 2**63), not {self.seed}")


@dataclass(eq=False)
class Generation:
    """One sequence being sampled; `key` is whatever the caller uses to find it.

    Its text is decoded only when something reads it (a stop string, a stream,
    the result), and then only the tokens added since the last read.
    """

    params: SampleParams
    seed: int
    prompt_ids: list[int]
    prompt_text: str
    key: object = None
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tops: list[list[tuple[str, float]]] = field(default_factory=list)
    sent: int = 0  # characters of `text` already handed out by `delta()`
    finish_reason: str | None = None
    decoder: Decoder | None = None  # the completion's text after the prompt
    rng: np.random.Generator = field(init=False)
    _text: str = field(init=False, default="")
    _decoded: int = field(init=False, default=0)  # ids behind `_text`
    _fixed: bool = field(init=False, default=False)  # text set by hand (cut at a stop)
    _stop_scanned: int = field(init=False, default=0)  # text length searched for stops

    def __post_init__(self) -> None:
        self.rng = np.random.Generator(np.random.PCG64(self.seed))

    @property
    def text(self) -> str:
        if not self._fixed and self._decoded != len(self.ids) and self.decoder is not None:
            self._text = self.decoder.text(self.ids)
            self._decoded = len(self.ids)
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        self._text, self._fixed = value, True

    def delta(self) -> str:
        """Text not yet handed out that can no longer change.

        While running, hold back the end of the text that could still grow into
        a stop string (it would be cut) and an unfinished UTF-8 character.
        """
        text = self.text
        end = len(text)
        if self.finish_reason is None:
            while end > self.sent and text[end - 1] == "\ufffd":
                end -= 1
            for stop in self.params.stop:
                for k in range(min(len(stop) - 1, end - self.sent), 0, -1):
                    if text[end - k : end] == stop[:k]:
                        end -= k
                        break
        out = text[self.sent : end]
        self.sent = max(self.sent, end)
        return out

    def stopped(self) -> bool:
        """Whether the token just added completed a stop string; if so, cut the text
        there, keep the tokens wholly before it, and finish with "stop". Searches only
        the text added since the last call (and a stop's length before it)."""
        text = self.text
        longest = max(len(s) for s in self.params.stop)
        lo = max(0, self._stop_scanned - longest + 1)  # a stop may start in the text before
        self._stop_scanned = len(text)
        hits = [i for s in self.params.stop if (i := text.find(s, lo)) >= 0]
        if not hits:
            return False
        cut = text[: min(hits)]
        k = len(self.ids)
        while (
            k > 0
            and self.decoder is not None
            and not cut.startswith(self.decoder.text(self.ids[:k]))
        ):
            k -= 1
        del self.ids[k:]
        del self.logprobs[k:]
        del self.tops[k:]
        self.text = cut
        self.finish_reason = "stop"
        return True

    def result(self) -> SampleResult:
        assert self.finish_reason is not None
        return SampleResult(
            text=self.text,
            finish_reason=self.finish_reason,
            num_tokens=len(self.ids),
            logprob=float(sum(self.logprobs)),
            seed=self.seed,
        )


def choose_tokens(logprobs: A, knobs: A, uniform: A, plan: SamplingPlan | None = None) -> A:
    """Pick one token per row by inverse-CDF sampling with each row's parameters.

    logprobs (B, V); knobs (B, 4): each row's temperature, top_k, top_p, min_p;
    uniform (B,): each row's uniform number. All three numpy arrays on the host or all
    torch tensors on one device: the same arithmetic either way, written once (numpy's
    calls cost a fraction of torch's, which wins on a small vocabulary; torch's are
    the faster on a large one's (B, V) blocks, and the only ones on a GPU: the engine
    picks by the vocabulary, models/engine.py). Returns the ids (B,), int64, the same kind.

    Rows are computed independently, so a row's choice never depends on its neighbours:
    `plan` only skips work that would leave every row as it is (dividing by a
    temperature of 1, truncating rows that ask for no truncation, taking the argmax for
    rows that are not greedy), never a different arithmetic for some rows.
    """
    out: A = _choose(logprobs, knobs, uniform, plan)
    return out


def _choose(logprobs: Any, knobs: Any, uniform: Any, plan: SamplingPlan | None) -> Any:
    """`choose_tokens`'s body, for either kind of array (the few calls whose spelling
    differs between numpy and torch are the helpers below)."""
    host = isinstance(logprobs, np.ndarray)
    xp: Any = np if host else torch
    if plan is None:
        plan = SamplingPlan.of_rows(
            knobs if host else knobs.float().cpu().numpy(), None if host else logprobs.device
        )
    if plan.scale:
        scaled = logprobs / knobs[:, 0].clip(min=1e-6)[:, None]  # (B, V)
        scaled[:, _NEVER_SLICE] = -math.inf
        scaled -= _row_max(scaled)  # a low temperature must not overflow
        probs = xp.exp(scaled)  # unnormalised: the inverse CDF scales by the total
    else:
        probs = xp.exp(logprobs)  # log-probabilities: at most 1, no overflow
    probs[:, _NEVER_SLICE] = 0.0
    u = uniform.astype(probs.dtype) if host else uniform.to(probs.dtype)
    # Rows without truncation draw from the CDF in vocabulary order, rows with it from
    # the sorted and truncated one; each row takes its own path, whatever its neighbours do.
    chosen = _inverse_cdf(probs.cumsum(1), u)
    t = plan.truncated_rows if host else plan.truncated
    if t is not None and len(t):
        p = probs[t]
        p /= p.sum(1)[:, None]  # top-p and min-p are stated on the normalised distribution
        sorted_p, order = _sort_descending(p)  # (T, V): most likely first
        rank = _arange_like(p, p.shape[1])[None, :]
        k, top_p, min_p = knobs[t, 1:2], knobs[t, 2:3], knobs[t, 3:4]
        keep = (k == 0) | (rank < k)
        keep &= (sorted_p.cumsum(1) - sorted_p) < top_p  # the top one always
        keep &= sorted_p >= min_p * sorted_p[:, :1]
        pos = _inverse_cdf((sorted_p * keep).cumsum(1), u[t])
        chosen[t] = order[_arange_like(pos, len(pos)), pos]
    g = plan.greedy_rows if host else plan.greedy
    if g is not None and len(g):
        lp = logprobs[g]  # (G, V), a copy
        lp[:, _NEVER_SLICE] = -math.inf
        chosen[g] = lp.argmax(1)
    return chosen


@dataclass
class SamplingPlan:
    """What a batch's sampling parameters need, worked out once when its rows change."""

    scale: bool  # some row's temperature is not 1 (0 included)
    # Rows with top-k, top-p or min-p, and greedy rows (temperature 0): their indices on
    # the host (empty if none), and for a torch batch on its device (None if none).
    truncated_rows: np.ndarray[Any, np.dtype[np.int64]]
    greedy_rows: np.ndarray[Any, np.dtype[np.int64]]
    truncated: Tensor | None = None
    greedy: Tensor | None = None

    @classmethod
    def of_rows(cls, knobs: np.ndarray[Any, Any], dev: torch.device | None = None) -> SamplingPlan:
        """From each row's (temperature, top_k, top_p, min_p), (B, 4) on the host; `dev`:
        the device of a torch batch (None: a numpy one)."""
        # Worked out in numpy on the host: the same checks as eight tiny torch ops cost
        # a quarter as much (and the batch redoes them whenever a row comes or goes).
        t, k, p, m = knobs.T
        truncated = np.flatnonzero((k > 0) | (p < 1) | (m > 0))
        greedy = np.flatnonzero(t == 0)

        def on_device(rows: np.ndarray[Any, np.dtype[np.int64]]) -> Tensor | None:
            return torch.from_numpy(rows).to(dev) if dev is not None and rows.size else None

        return cls(
            scale=bool((t != 1).any()),
            truncated_rows=truncated,
            greedy_rows=greedy,
            truncated=on_device(truncated),
            greedy=on_device(greedy),
        )


def _row_max(x: Any) -> Any:
    """Each row's largest value, (B, 1)."""
    if isinstance(x, np.ndarray):
        return np.max(x, axis=1, keepdims=True)
    return x.amax(1, keepdim=True)


def _sort_descending(p: Any) -> tuple[Any, Any]:
    """Each row's values from the largest, and where they were: (B, V) each (stable)."""
    if isinstance(p, np.ndarray):
        order = np.argsort(-p, axis=1, kind="stable")
        return np.take_along_axis(p, order, axis=1), order
    values, order = p.sort(dim=1, descending=True, stable=True)
    return values, order


def _arange_like(x: Any, n: int) -> Any:
    if isinstance(x, np.ndarray):
        return np.arange(n)
    return torch.arange(n, device=x.device)


def _inverse_cdf(cdf: Any, uniform: Any) -> Any:
    """cdf (B, V), uniform (B,) -> the first position (B,) whose cumulative mass exceeds
    u × total (right-continuous: it always carries positive probability). On the host
    the count of positions at or below the target (the CDF never decreases), a sum of
    booleans: np.count_nonzero with an axis is Python code, and numpy has no batched
    binary search; torch's searchsorted is that search."""
    target = (uniform * cdf[:, -1])[:, None]  # (B, 1)
    if isinstance(cdf, np.ndarray):
        pos = np.add.reduce(cdf <= target, axis=1)
        return np.minimum(pos, cdf.shape[1] - 1)
    found = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[1] - 1)
    return found.squeeze(1)


# Vocabularies up to this size choose their tokens in numpy on the host when the model
# runs on the CPU, larger ones in torch (see `choose_tokens`; docs/measured.md has the
# timings). Decided by the vocabulary, never by the batch, so a row's arithmetic does not
# depend on its neighbours.
HOST_SAMPLING_MAX_VOCAB = 1024

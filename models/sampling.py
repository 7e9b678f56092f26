"""Sampling one token per sequence: the parameters, a running sequence, the choice.

`choose_tokens` draws every row of a batch at once by inverse-CDF sampling with
that row's temperature, top-k, top-p and min-p; a row's choice depends only on
its own distribution and uniform number, never on its neighbours. A `Generation`
is one sequence being sampled, with its own random generator, so the same seed
gives the same tokens alone or in any batch (models/batch.py keeps them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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

    def result(self) -> SampleResult:
        assert self.finish_reason is not None
        return SampleResult(
            text=self.text,
            finish_reason=self.finish_reason,
            num_tokens=len(self.ids),
            logprob=float(sum(self.logprobs)),
            seed=self.seed,
        )


def choose_tokens(
    logprobs: Tensor,
    temperature: Tensor,
    top_k: Tensor,
    top_p: Tensor,
    min_p: Tensor,
    uniform: Tensor,
    plan: SamplingPlan | None = None,
) -> Tensor:
    """Pick one token per row by inverse-CDF sampling with each row's parameters.

    logprobs (B, V); the rest (B,). Rows are computed independently, so a
    row's choice never depends on its neighbours: `plan` only skips work that
    would leave every row as it is (dividing by a temperature of 1, truncating
    rows that ask for no truncation, taking the argmax for rows that are not
    greedy), never a different arithmetic for some rows.
    """
    plan = plan or SamplingPlan.of(temperature, top_k, top_p, min_p)
    lp = logprobs + _never_sampled_mask(logprobs)  # -inf where sampling never goes
    scaled = lp / temperature.clamp(min=1e-6).unsqueeze(1) if plan.scale else lp
    probs = torch.softmax(scaled, dim=-1)  # (B, V)
    # Rows without truncation draw from the CDF in vocabulary order, rows with it
    # from the sorted one; each row takes its own path, whatever its neighbours do.
    chosen = _inverse_cdf(probs.cumsum(-1), uniform)
    if plan.truncated is not None and plan.truncated.numel():
        t = plan.truncated
        sorted_p, order = probs[t].sort(dim=-1, descending=True)
        rank = torch.arange(probs.shape[1], device=probs.device).unsqueeze(0)
        keep = (top_k[t].unsqueeze(1) == 0) | (rank < top_k[t].unsqueeze(1))
        keep &= (sorted_p.cumsum(-1) - sorted_p) < top_p[t].unsqueeze(1)  # the top one always
        keep &= sorted_p >= min_p[t].unsqueeze(1) * sorted_p[:, :1]
        pos = _inverse_cdf((sorted_p * keep).cumsum(-1), uniform[t])
        chosen = chosen.index_copy(0, t, order.gather(1, pos.unsqueeze(1)).squeeze(1))
    if plan.greedy is not None:
        chosen = torch.where(plan.greedy, lp.argmax(-1), chosen)
    return chosen


@dataclass
class SamplingPlan:
    """What a batch's sampling parameters need, worked out once when its rows change."""

    scale: bool  # some row's temperature is not 1 (0 included)
    truncated: Tensor | None  # rows with top-k, top-p or min-p: their indices
    greedy: Tensor | None  # (B,) True where temperature is 0; None if no row is greedy
    # The same two as indices on the host, for `choose_tokens_host` (empty if none).
    truncated_rows: np.ndarray[Any, np.dtype[np.int64]]
    greedy_rows: np.ndarray[Any, np.dtype[np.int64]]

    @classmethod
    def of(cls, temperature: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor) -> SamplingPlan:
        knobs = torch.stack([x.to(torch.float32) for x in (temperature, top_k, top_p, min_p)], 1)
        return cls.of_rows(knobs.cpu().numpy(), temperature.device)

    @classmethod
    def of_rows(cls, knobs: np.ndarray[Any, Any], dev: torch.device) -> SamplingPlan:
        """From each row's (temperature, top_k, top_p, min_p), (B, 4) on the host."""
        # Worked out in numpy on the host: the same checks as eight tiny torch ops cost
        # a quarter as much (and the batch redoes them whenever a row comes or goes).
        t, k, p, m = knobs.T
        truncated = np.flatnonzero((k > 0) | (p < 1) | (m > 0))
        greedy = t == 0
        return cls(
            scale=bool((t != 1).any()),
            truncated=torch.from_numpy(truncated).to(dev) if truncated.size else None,
            greedy=torch.from_numpy(greedy).to(dev) if greedy.any() else None,
            truncated_rows=truncated,
            greedy_rows=np.flatnonzero(greedy),
        )


_MASKS: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def _never_sampled_mask(logprobs: Tensor) -> Tensor:
    """(V,): -inf at the ids sampling never emits, 0 elsewhere (cached per shape)."""
    key = (logprobs.shape[-1], logprobs.dtype, logprobs.device)
    mask = _MASKS.get(key)
    if mask is None:
        mask = torch.zeros(key[0], dtype=key[1], device=key[2])
        mask[_NEVER_SAMPLED] = float("-inf")
        _MASKS[key] = mask
    return mask


def _inverse_cdf(cdf: Tensor, uniform: Tensor) -> Tensor:
    """cdf (B, V), uniform (B,) -> the position (B,) where each row's mass passes u × total."""
    target = (uniform * cdf[:, -1]).unsqueeze(1)
    # right=True: the first position whose cumulative mass exceeds the target,
    # which always carries positive probability.
    pos = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[1] - 1)
    return pos.squeeze(1)


# Vocabularies up to this size sample on the host in numpy (`choose_tokens_host`) when
# the model runs on the CPU; larger ones with torch, whose cumulative sum is about four
# times as fast per element (numpy's 1.3 ms against torch's 0.35 on a (32, 10000) block,
# one thread, the slower EPYC), while on a character vocabulary numpy's cheaper calls
# win: one row of 79 ids 13 against 25 µs, 32 rows even. Decided by the vocabulary,
# never by the batch, so a row's arithmetic does not depend on its neighbours.
HOST_SAMPLING_MAX_VOCAB = 1024


def choose_tokens_host(
    logprobs: np.ndarray[Any, Any],
    knobs: np.ndarray[Any, Any],
    uniform: np.ndarray[Any, Any],
    plan: SamplingPlan,
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """`choose_tokens` in numpy, for a batch whose distributions are on the host.

    logprobs (B, V); knobs (B, 4): each row's temperature, top_k, top_p, min_p;
    uniform (B,). The same choice, row by row, as `choose_tokens` up to rounding:
    inverse-CDF sampling from the (tempered) distribution, from the sorted and
    truncated one for rows with top-k, top-p or min-p, the argmax for greedy rows.
    """
    B, V = logprobs.shape
    if plan.scale:
        scaled = logprobs / np.maximum(knobs[:, :1], 1e-6)  # (B, V)
        scaled[:, _NEVER_SLICE] = -np.inf
        scaled -= scaled.max(axis=1, keepdims=True)  # a low temperature must not underflow
        probs = np.exp(scaled)  # unnormalised: the inverse CDF scales by the total
    else:
        probs = np.exp(logprobs)  # log-probabilities: at most 1, no overflow
    probs[:, _NEVER_SLICE] = 0.0
    u = uniform.astype(probs.dtype)
    # np.add's own methods: np.cumsum and .sum add a Python wrapper's microseconds.
    chosen = _inverse_cdf_host(np.add.accumulate(probs, axis=1), u)
    t = plan.truncated_rows
    if t.size:
        p = probs[t]
        p /= p.sum(axis=1, keepdims=True)  # top-p and min-p are stated on the normalised
        order = np.argsort(-p, axis=1, kind="stable")  # (T, V): most likely first
        sorted_p = np.take_along_axis(p, order, axis=1)
        k, top_p, min_p = knobs[t, 1:2], knobs[t, 2:3], knobs[t, 3:4]
        rank = np.arange(V)
        keep = (k == 0) | (rank < k)
        keep &= (np.cumsum(sorted_p, axis=1) - sorted_p) < top_p  # the top one always
        keep &= sorted_p >= min_p * sorted_p[:, :1]
        pos = _inverse_cdf_host(np.cumsum(sorted_p * keep, axis=1), u[t])
        chosen[t] = order[np.arange(len(t)), pos]
    g = plan.greedy_rows
    if g.size:
        lp = logprobs[g]  # (G, V)
        lp[:, _NEVER_SLICE] = -np.inf
        chosen[g] = lp.argmax(axis=1)
    return chosen


def _inverse_cdf_host(
    cdf: np.ndarray[Any, Any], uniform: np.ndarray[Any, Any]
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """cdf (B, V), uniform (B,) -> the first position (B,) whose cumulative mass exceeds
    u × total: the count of positions at or below it (the CDF never decreases)."""
    target = (uniform * cdf[:, -1])[:, None]  # (B, 1)
    # A sum of booleans: np.count_nonzero with an axis is Python code, five times slower.
    pos = np.add.reduce(cdf <= target, axis=1)
    out: np.ndarray[Any, np.dtype[np.int64]] = np.minimum(pos, cdf.shape[1] - 1)
    return out

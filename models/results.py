"""What scoring and sampling return: per-token log-probabilities and whole results.

Plain dataclasses shared by the engine, the CLI and the service's schemas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class TokenLogprob:
    id: int
    token: str
    logprob: float
    top: list[tuple[str, float]] | None = None
    # Scoring a model with an n-gram: `logprob` is the mixture's; these are the RNN's
    # alone and the n-gram's alone. None without one, and in samples.
    rnn_logprob: float | None = None
    ngram_logprob: float | None = None


@dataclass
class ScoreResult:
    text: str
    logprob: float
    num_tokens: int
    oov_count: int
    tokens: list[TokenLogprob] | None = None
    # Bidirectional models: the backward model's log-probability of the same
    # text, over as many predictions as `logprob`; None for forward-only models.
    backward_logprob: float | None = None
    # Models with an n-gram: `logprob` is the mixture's; these are the RNN's
    # alone and the n-gram's alone, over the same tokens. None without one.
    rnn_logprob: float | None = None
    ngram_logprob: float | None = None

    @property
    def log10prob(self) -> float:
        return self.logprob / math.log(10)

    @property
    def average_logprob(self) -> float | None:
        """The mean of the forward and backward logprobs; None without a backward one."""
        if self.backward_logprob is None:
            return None
        return (self.logprob + self.backward_logprob) / 2

    @property
    def perplexity(self) -> float | None:
        """exp(-logprob / num_tokens); None when no token was scored."""
        if self.num_tokens == 0:
            return None
        return math.exp(-self.logprob / self.num_tokens)


@dataclass
class SampleResult:
    text: str
    finish_reason: str  # "eos" | "length" | "stop"
    num_tokens: int
    logprob: float
    seed: int
    tokens: list[TokenLogprob] | None = None

"""Adapting to the text being read: dynamic evaluation (Krause et al., 2018) and a
cache of the text already read.

Opt-in, for the texts of one document scored in order (`/score` with `adapt`,
`rnnlm eval --adapt`), never for independent sentences: each text is scored by the
model as it stands, then the model learns from that text, the text already scored,
before the next one is read. A text's score then depends on the texts before it in the
same call, and on nothing else. Two ways, each on by default:

- **The RNN's step** (dynamic evaluation, `lr` > 0, below).
- **The cache** (`cache` > 0 tokens): a match model (models/match.py) over the
  last `cache` tokens of the texts already read, its guess mixed in over the model's
  distribution, (1 − μ)·P + μ·[t = guess], as the training text's match model is;
  μ per bucket fit by maximum likelihood on the tokens already read (models/weights.py's
  `fit_mu`), again each time they have grown by half, and 0 until MIN_BUCKET_TOKENS
  of them had a guess. The n-gram's counts, updated with the text read, in the form
  compressors use (lpaq's match model; the "cache" of Kuhn and De Mori, 1990): what
  repeats in a document (a name, a refrain, a quoted line) is found however far back.
  The guess, its bucket and μ depend on the history and the earlier texts only, so
  each distribution still sums to 1.

- Each call adapts its own copy of the RNN, made when the call starts and dropped
  when it ends: the served model never changes, and nothing passes from one request
  to another (tested: scores before and after an adapted call are the same, and two
  identical adapted calls give the same scores).
- The step is SGD on the text's mean negative log-likelihood under the RNN's part
  (the forward RNN; a residual model's over its n-gram), the gradient's norm clipped
  to 1 as in training, then `decay` of the way back to the trained weights (Krause et
  al.'s pull toward the global weights, which keeps a long document from drifting).
  Dropout is off: the step is on the text as it was scored.
- The n-gram and λ's table (or gate) stay as trained; the mixture mixes the adapted
  RNN (a gate reads the adapted RNN's entropy and peak, as it would any RNN's).

Cost: a forward and a backward pass per text besides its score, and the texts are
scored one at a time, not batched: several times slower than plain scoring. The
cache's index is built again after each text, over at most `cache` tokens (4 ms for
8,192 characters), so a long document costs time in proportion to its length.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from rnnlm.models.engine import Engine
from rnnlm.models.match import BUCKETS, MAX_LEN, MatchModel
from rnnlm.models.ngram import histories_of
from rnnlm.models.ngram_next import layout_of
from rnnlm.models.results import ScoreResult
from rnnlm.models.tokenizers import EOS
from rnnlm.models.weights import MIN_BUCKET_TOKENS, fit_mu

# SGD's rate (each step at most this long: the gradient's norm is clipped to 1). On the
# first 600 lines of fortunes' validation split, in order, the 600-s character model
# (2026-12-06): 2.049 bits a token static, 2.046 at 0.1, 2.045 at 0.3, 2.050 at 1 and
# 2.087 at 3. A user tunes it on held-out documents of their own.
DEFAULT_LR = 0.3
MAX_LR = 10.0
# Tokens of the text already read that the cache holds, the most recent (its index is
# built again after each text, so its size bounds that cost).
DEFAULT_CACHE = 8192
MAX_CACHE = 1 << 20
Floats = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class Adaptation:
    """How the model adapts: the RNN's SGD rate `lr` (0: no step), `decay`, the fraction
    of the way back to the trained weights after each step (0: none; 1: no adaptation
    kept), and `cache`, the tokens of the text already read the cache holds (0: none)."""

    lr: float = DEFAULT_LR
    decay: float = 0.0
    cache: int = DEFAULT_CACHE

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number, not {self.lr!r}")
        if not 0 <= self.lr <= MAX_LR:
            raise ValueError(f"lr must be in [0, {MAX_LR}], not {self.lr}")
        if not 0 <= self.decay <= 1:
            raise ValueError(f"decay must be in [0, 1], not {self.decay}")
        if isinstance(self.cache, bool) or not isinstance(self.cache, int):
            raise ValueError(f"cache must be a whole number of tokens, not {self.cache!r}")
        if not 0 <= self.cache <= MAX_CACHE:
            raise ValueError(f"cache must be in [0, {MAX_CACHE}] tokens, not {self.cache}")


class Cache:
    """The texts of one call already read, as a match model over their last `size`
    tokens (see the module's docstring): `mix` a text's token log-probs, then `read` it."""

    def __init__(self, size: int, max_len: int = MAX_LEN) -> None:
        self.size, self.max_len = size, max_len
        self.texts: list[np.ndarray[Any, Any]] = []  # the ids as scored, start token first
        self.held = 0  # tokens in self.texts
        self.match: MatchModel | None = None
        self.mu = np.zeros(BUCKETS)
        # Every token read so far: the guess was it, the model's ln P of it, its bucket.
        self.hits: list[np.ndarray[Any, Any]] = []
        self.model: list[np.ndarray[Any, Any]] = []
        self.buckets: list[np.ndarray[Any, Any]] = []
        self.seen = self.fitted_at = 0

    def mix(self, full: Sequence[int], logprobs: Floats) -> Floats:
        """ln((1 − μ)·P(t) + μ·[t = guess]) of a text's tokens: `full` its ids as scored
        (the first is context only), `logprobs` (T,) the model's of full[1:]. The guesses
        come from the texts before it, μ from the tokens before it."""
        targets = np.asarray(full[1:], np.int64)
        if self.match is None or not len(targets):
            hit = np.zeros(len(targets), bool)
            bucket = np.zeros(len(targets), np.int64)
            out = logprobs
        else:
            states = self.match.scan(np.asarray(full[:-1], np.int64)[None])[0]  # (T, 3)
            guess, bucket = self.match.guess(states)
            hit = guess == targets
            out = self.match.token_logprobs(logprobs, targets, states)
        self.hits.append(hit)
        self.model.append(np.asarray(logprobs, np.float64))
        self.buckets.append(bucket)
        self.seen += len(targets)
        return out

    def read(self, full: Sequence[int]) -> None:
        """Take a text in (after `mix`): μ fit again if the tokens read have grown by
        half, the index built again over the last `size` tokens."""
        self.texts.append(np.asarray(full, np.int64))
        self.held += len(full)
        while self.held - len(self.texts[0]) >= self.size:  # whole texts beyond `size` go
            self.held -= len(self.texts.pop(0))
        if self.seen >= 1.5 * self.fitted_at:
            hits = np.concatenate(self.hits)
            bucket = np.concatenate(self.buckets)
            if (bucket > 0).sum() >= MIN_BUCKET_TOKENS:
                self.mu = fit_mu(hits, np.concatenate(self.model), bucket)
                self.fitted_at = self.seen
        stream = np.concatenate(self.texts)[-self.size :]
        self.match = MatchModel(stream, self.mu, self.max_len)


def score_adapting(
    engine: Engine,
    texts: Sequence[str],
    bos: bool = True,
    eos: bool = True,
    per_token: bool = False,
    adapt: Adaptation | None = None,
) -> list[ScoreResult]:
    """Score `texts` in order as one document, adapting after each (see the module's
    docstring); the results are `Engine.score_batch`'s, the cache mixed into `logprob`
    and each token's (the RNN's and the n-gram's parts are theirs alone)."""
    adapt = adapt or Adaptation()
    reader, trained = engine, []
    if adapt.lr > 0:
        ck = engine.checkpoint
        model = copy.deepcopy(engine.model).eval()  # this call's own: the engine's never changes
        trained = [p.detach().clone() for p in model.parameters()]
        # torch's path throughout: the host step keeps its own prepared copies of the
        # weights, which would not follow the updates.
        reader = Engine(
            replace(ck, model=model),  # everything else the engine's own
            max_batch=engine.max_batch,
            host=False,
        )
    max_len = engine.match.max_len if engine.match is not None else MAX_LEN
    cache = Cache(adapt.cache, max_len) if adapt.cache else None
    results = []
    for text in texts:
        (result,) = reader.score_batch([text], bos, eos, per_token or cache is not None)
        ids = reader.tokenizer.encode(text)
        full = ([reader.start_id] if bos else []) + ids + ([EOS] if eos else [])
        if cache is not None:
            tokens = result.tokens or []
            mixed = cache.mix(full, np.array([t.logprob for t in tokens], np.float64))
            for t, lp in zip(tokens, mixed.tolist(), strict=True):
                t.logprob = lp
            result.logprob = float(mixed.sum())
            result.tokens = tokens if per_token else None
            cache.read(full)
        results.append(result)
        if len(full) >= 2 and adapt.lr > 0:
            _step(reader, full, adapt, trained)
    return results


def _step(engine: Engine, full: list[int], adapt: Adaptation, trained: list[torch.Tensor]) -> None:
    """One SGD step of the engine's RNN on a text's ids (start token first)."""
    model = engine.model
    inputs = np.asarray(full[:-1], dtype=np.int64)[None, :]  # (1, T)
    inp = torch.from_numpy(inputs).to(engine.device)
    tgt = torch.tensor(full[1:], device=engine.device)  # (T,)
    prior = None
    if model.config.residual:  # the n-gram's ln P (T, V) under the logits
        assert engine.ngram is not None
        layout = layout_of(engine.ngram)
        contexts = layout.contexts(histories_of(inputs, engine.ngram.order)[0])
        prior = torch.from_numpy(layout.log_probabilities_at(contexts, np.float32)[0])
        prior = prior.to(engine.device)
    params = list(model.parameters())
    with torch.enable_grad():
        feats, _ = model.features(inp)  # (1, T, F)
        loss = model.token_log_probs(feats[0], tgt, prior).mean().neg()
        model.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    with torch.no_grad():
        for p, p0 in zip(params, trained, strict=True):
            if p.grad is not None:
                p.sub_(p.grad, alpha=adapt.lr)
            if adapt.decay:
                p.lerp_(p0, adapt.decay)  # decay of the way back to the trained weights
    model.zero_grad(set_to_none=True)

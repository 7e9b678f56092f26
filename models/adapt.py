"""Adapting to the text being read: dynamic evaluation (Krause et al., 2018).

Opt-in, for the texts of one document scored in order (`/score` with `adapt`,
`rnnlm eval --adapt`), never for independent sentences: each text is scored by the
model as it stands, then the RNN takes one gradient step on that text, the text
already scored, before the next one is read. A text's score then depends on the texts
before it in the same call, and on nothing else.

- Each call adapts its own copy of the RNN, made when the call starts and dropped
  when it ends: the served model never changes, and nothing passes from one request
  to another (tested: scores before and after an adapted call are the same, and two
  identical adapted calls give the same scores).
- The step is SGD on the text's mean negative log-likelihood under the RNN's part
  (the forward RNN; a residual model's over its n-gram), the gradient's norm clipped
  to 1 as in training, then `decay` of the way back to the trained weights (Krause et
  al.'s pull toward the global weights, which keeps a long document from drifting).
  Dropout is off: the step is on the text as it was scored.
- The n-gram and λ stay as trained; the mixture mixes the adapted RNN.

Cost: a forward and a backward pass per text besides its score, and the texts are
scored one at a time, not batched: several times slower than plain scoring.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rnnlm.models.checkpoint import Checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.ngram import histories_of
from rnnlm.models.ngram_next import layout_of
from rnnlm.models.results import ScoreResult
from rnnlm.models.tokenizers import EOS

# SGD's rate (each step at most this long: the gradient's norm is clipped to 1). On the
# first 600 lines of fortunes' validation split, in order, the 600-s character model
# (2026-12-06): 2.049 bits a token static, 2.046 at 0.1, 2.045 at 0.3, 2.050 at 1 and
# 2.087 at 3. A user tunes it on held-out documents of their own.
DEFAULT_LR = 0.3
MAX_LR = 10.0


@dataclass(frozen=True)
class Adaptation:
    """How the RNN adapts: SGD rate `lr`, and `decay`, the fraction of the way back to
    the trained weights after each step (0: none; 1: no adaptation kept)."""

    lr: float = DEFAULT_LR
    decay: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number, not {self.lr!r}")
        if not 0 < self.lr <= MAX_LR:
            raise ValueError(f"lr must be in (0, {MAX_LR}], not {self.lr}")
        if not 0 <= self.decay <= 1:
            raise ValueError(f"decay must be in [0, 1], not {self.decay}")


def score_adapting(
    engine: Engine,
    texts: Sequence[str],
    bos: bool = True,
    eos: bool = True,
    per_token: bool = False,
    adapt: Adaptation | None = None,
) -> list[ScoreResult]:
    """Score `texts` in order as one document, the RNN adapting after each (see the
    module's docstring); the results are `Engine.score_batch`'s."""
    adapt = adapt or Adaptation()
    ck = engine.checkpoint
    model = copy.deepcopy(engine.model).eval()  # this call's own: the engine's never changes
    trained = [p.detach().clone() for p in model.parameters()]
    # torch's path throughout: the host step keeps its own prepared copies of the weights,
    # which would not follow the updates.
    reader = Engine(
        Checkpoint(ck.path, model, ck.tokenizer, ck.config, ck.ngram, ck.mix_weight,
                   ck.mix_buckets, ck.match),
        max_batch=engine.max_batch,
        host=False,
    )  # fmt: skip
    results = []
    for text in texts:
        results.extend(reader.score_batch([text], bos, eos, per_token))
        ids = reader.tokenizer.encode(text)
        full = ([reader.start_id] if bos else []) + ids + ([EOS] if eos else [])
        if len(full) >= 2:
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

"""The mixing gate: λ, the RNN's share of the mixture, from what each part predicts.

A model's mixture is λ·P_rnn + (1−λ)·P_ngram (models/ngram.py's `mix_`). Its λ comes
from the history's mixing bucket (how much the n-gram has seen of it) by a table;
with a gate, also from how sure each part is of the next token:

    λ = σ(a[bucket] + w · φ),  φ = (H_rnn, ln max P_rnn, H_ngram, ln max P_ngram)

H the entropy in nats of each part's distribution over the whole vocabulary. φ is a
function of the two distributions, which the history alone fixes, never of the token
predicted, so the mixture still sums to one over the vocabulary. With w = 0 the gate
is the table (a = logit of the table's λ).

Why: an n-gram that has seen a context often but spreads its mass over many tokens
is trusted less than its counts suggest, and an RNN that is sure is worth more. On
fortunes' 600-s character model of `make bench-quality` at 0622af5 (docs/measured.md,
2026-12-07), fit as training fits it, it took the test split from 1.916 to 1.908 bits
a character (the match model over it in both). Its price is the n-gram's whole
distribution at every scored position, which scoring otherwise does not compute
(bench/gate_cost.py: scoring 1.14× as long for characters, 1.78× for words): training
fits one only for vocabularies of at most `GATE_MAX_VOCAB` tokens (training/mixture.py).
Served, that character model kept 0.90× of its tokens/s sampling one stream and 0.92×
scoring at batch 64 (bench/mixing_cost.py `--part gate`). Sampling and beam search have
both whole distributions anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnlm.models.errors import CheckpointError
from rnnlm.models.ngram import Int64s, mix_
from rnnlm.models.ngram_next import NextTokens

Floats = np.ndarray[Any, np.dtype[np.float64]]
FEATURES = ("rnn_entropy", "rnn_peak", "ngram_entropy", "ngram_peak")
GATE_MAX_VOCAB = 1024  # the largest vocabulary training fits a gate for (see above)


def log_features(log_probs: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """(entropy in nats, largest ln P) (N, 2) of each row of ln P (N, V); -inf entries
    (tokens a part never predicts) count as 0·ln 0 = 0."""
    lp = np.asarray(log_probs, np.float64)
    p = np.exp(lp)
    plogp = np.multiply(p, lp, out=np.zeros_like(lp), where=p > 0)
    return np.stack([-plogp.sum(axis=-1), lp.max(axis=-1)], axis=-1)


@dataclass(frozen=True)
class MixingGate:
    """λ = σ(bias[bucket] + slopes · φ) (the module's docstring)."""

    bias: Floats  # (buckets,): the logit of λ per mixing bucket at φ = 0
    slopes: Floats  # (len(FEATURES),)

    def weights(
        self, bucket: np.ndarray[Any, Any], rnn: np.ndarray[Any, Any], ngram: np.ndarray[Any, Any]
    ) -> Floats:
        """λ of each row (N,), from its bucket (N,) and each part's `log_features` (N, 2)."""
        z = self.bias[bucket] + rnn @ self.slopes[:2] + ngram @ self.slopes[2:]
        out: Floats = 0.5 * (1.0 + np.tanh(0.5 * z))  # σ(z), without overflow for any z
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(FEATURES),
            "bias": [float(b) for b in self.bias],
            "slopes": [float(s) for s in self.slopes],
        }

    @classmethod
    def from_dict(cls, value: Any, buckets: int, where: str) -> MixingGate:
        """The gate config.json's `ngram.lambda_gate` holds, checked: `buckets` finite
        biases, one finite slope per feature, the features named as here."""
        if not isinstance(value, dict):
            raise CheckpointError(f"{where}: must be an object")
        if value.get("features") != list(FEATURES):
            raise CheckpointError(f"{where}: features must be {list(FEATURES)}")
        bias, slopes = value.get("bias"), value.get("slopes")
        for name, v, n in (("bias", bias, buckets), ("slopes", slopes, len(FEATURES))):
            if (
                not isinstance(v, list)
                or len(v) != n
                or not all(
                    isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                    for x in v
                )
            ):
                raise CheckpointError(f"{where}: {name} must be a list of {n} finite numbers")
        return cls(np.array(bias, np.float64), np.array(slopes, np.float64))


def log_softmax_(logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """ln softmax of each row of `logits` (B, V), in place."""
    logits -= logits.max(axis=-1, keepdims=True)
    logits -= np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return logits


def mix_gated_(
    rnn: np.ndarray[Any, Any],
    gate: MixingGate,
    layout: NextTokens,
    contexts: Int64s,
    logits: bool = False,
) -> np.ndarray[Any, Any]:
    """The mixture with λ from `gate`, in place: rnn (B, V) the RNN's ln P (or, with
    `logits`, its output layer's logits), the n-gram's distributions from the rows'
    `contexts` in its `layout` (models/ngram_next.py); models/ngram.py's `mix_` does the
    mixing, as for every mixture."""
    ln_p, probs, bucket = layout.log_probabilities_at(contexts, rnn.dtype)
    if logits:  # the gate reads the RNN's ln P, so the softmax comes first here
        log_softmax_(rnn)
    lam = gate.weights(bucket, log_features(rnn), log_features(ln_p))
    probs *= (1.0 - lam).astype(rnn.dtype)[:, None]  # (1-λ)·P_ngram
    return mix_(rnn, lam, probs)

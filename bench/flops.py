"""Floating-point operations per token of an rnnlm model, counted from its layer sizes.

Pure Python (no torch), so any bench script can use it on a checkpoint's
`config.json` "model" section. One multiply-add is 2 FLOPs; only the matrix
products are counted (gate nonlinearities, dropout, biases and the optimizer
update are O(hidden) per token and left out).

Forward, per token:

    recurrent layer l   2 * G * H * (I_l + H)   G gates: lstm 4, gru 3, rnn 1
                                               (gru-simple 2, lstm-peephole 4);
                                               I_0 = E, I_l = H above the first
    projection          2 * H * E              only when tied and H != E
    full softmax        2 * F * V              F = E if tied else H
    adaptive softmax    head 2 * F * (c_0 + k) for every token (c_0 shortlist
                        words, k tail clusters), plus for tail cluster i
                        p_i * 2 * (F * h_i + h_i * o_i), where h_i = F // 4**(i+1)
                        (rnnlm's div_value 4), o_i its words and p_i the share
                        of target tokens that fall in it: torch's
                        AdaptiveLogSoftmaxWithLoss runs a tail only for the
                        targets in it, in training and in rnnlm's scoring alike.

Training (forward + backward) counts 3 x forward: the backward pass does two
products of the forward's size (gradients of inputs and of weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

GATES = {"rnn": 1, "gru": 3, "lstm": 4, "gru-simple": 2, "lstm-peephole": 4}
ADAPTIVE_DIV = 4.0  # models/model.py: AdaptiveLogSoftmaxWithLoss(..., div_value=4.0)
TRAIN_FACTOR = 3

FORMULA = (
    "forward FLOPs/token = sum over layers 2*G*H*(I+H) [G=4 LSTM, I=E then H] "
    "+ 2*H*E projection if tied and H!=E + output layer (full softmax 2*F*V; adaptive: "
    "head 2*F*(c0+clusters) + sum_i p_i*2*(F*h_i + h_i*o_i), p_i = share of targets in "
    "tail cluster i); training = 3 x forward; matrix products only"
)


def tail_fractions(model: dict[str, Any], target_ids: Iterable[int]) -> list[float]:
    """Share of the target ids in each adaptive-softmax tail cluster (empty list without one)."""
    cutoffs = list(model.get("adaptive_cutoffs") or [])
    if not cutoffs:
        return []
    bounds = cutoffs + [int(model["vocab_size"])]
    counts = [0] * len(cutoffs)
    total = 0
    for t in target_ids:
        total += 1
        for i in range(len(cutoffs)):
            if bounds[i] <= t < bounds[i + 1]:
                counts[i] += 1
                break
    return [c / total for c in counts] if total else [0.0] * len(cutoffs)


def forward_flops(model: dict[str, Any], tails: Sequence[float] | None = None) -> dict[str, float]:
    """Forward FLOPs per token, by part, for a config.json "model" section.

    `tails`: the share of targets per adaptive tail cluster (see `tail_fractions`);
    None counts every tail as if each token paid for it (an upper bound).
    """
    cell = str(model.get("cell", "lstm"))
    E, H, L = int(model["embedding"]), int(model["hidden"]), int(model["layers"])
    V = int(model["vocab_size"])
    tied = bool(model.get("tied", False))
    gates = GATES[cell]
    recurrent = sum(2 * gates * H * ((E if layer == 0 else H) + H) for layer in range(L))
    projection = 2 * H * E if tied and H != E else 0
    F = E if tied else H
    cutoffs = list(model.get("adaptive_cutoffs") or [])
    if cutoffs:
        bounds = cutoffs + [V]
        head = 2 * F * (cutoffs[0] + len(cutoffs))
        shares = list(tails) if tails is not None else [1.0] * len(cutoffs)
        tail = 0.0
        for i in range(len(cutoffs)):
            h = int(F // (ADAPTIVE_DIV ** (i + 1)))
            tail += shares[i] * 2 * (F * h + h * (bounds[i + 1] - bounds[i]))
        output = head + tail
    else:
        output = 2 * F * V
    return {
        "recurrent": float(recurrent),
        "projection": float(projection),
        "output": float(output),
        "total": float(recurrent + projection + output),
    }


def train_flops(model: dict[str, Any], tails: Sequence[float] | None = None) -> float:
    """Forward + backward FLOPs per token."""
    return TRAIN_FACTOR * forward_flops(model, tails)["total"]

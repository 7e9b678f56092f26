"""Beam-search states' next-token distributions against the GEMM-bound rate.

    python bench/beam_speed.py MODEL [--states 64] [--seconds 5]

A beam of B hypotheses: B distinct states whose parents are known, each asked for its
next-token log-probabilities (`LanguageModel.next_logprobs`: one decoding step of B
rows, the output layer, the mixture with the n-gram) — the work a shallow-fusion
decoder asks for at every step. Each round advances every state by a fresh token,
so every round computes B new histories (none is in the table yet); after `--length`
rounds (a sentence) the beam starts again from B new first tokens. The rate,
states per second, is compared with the GEMM-bound rate: the forward matrix-product
FLOPs of one token (bench/flops.py) against torch's fp32 GEMM rate on one thread,
measured in the same run (bench/speed.py). On one torch thread, as a server's
worker runs.

Prints one JSON object: bench "beam_states".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from flops import forward_flops  # noqa: E402
from speed import measure_gemm  # noqa: E402

import rnnlm  # noqa: E402
import rnnlm.models.states  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--states", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--length", type=int, default=30, help="tokens a beam runs before a new one")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    lm = rnnlm.load(args.model)
    config = json.loads((args.model / "config.json").read_text())
    V, B = lm.vocab_size, args.states
    rng = np.random.default_rng(args.seed)
    start = lm.start_state()
    lm.next_logprobs([start])

    def fresh() -> list[rnnlm.models.states.LMState]:
        """B distinct states one token after the start (a new sentence's beam)."""
        return lm.advance([start] * B, rng.choice(np.arange(4, V), B, replace=False).tolist())

    beam = fresh()
    lm.next_logprobs(beam)
    rounds, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds or rounds < 3:
        if rounds % args.length == args.length - 1:  # a sentence's worth: a new beam
            lm.clear_states()  # the table's size is not what is measured
            lm.next_logprobs([start])
            beam = fresh()
        else:
            beam = lm.advance(beam, rng.integers(4, V, size=B).tolist())
        lp = lm.next_logprobs(beam)  # (B, V): one step for B new histories
        rounds += 1
    wall = time.perf_counter() - t0
    assert lp.shape == (B, V)
    states_per_s = rounds * B / wall
    fwd = forward_flops(config["model"])["total"]
    gemm = measure_gemm(1, 2.0)
    bound = gemm["gflops"] * 1e9 / fwd
    print(json.dumps({
        "bench": "beam_states",
        "model": str(args.model),
        "states": B,
        "rounds": rounds,
        "ms_per_round": round(1000 * wall / rounds, 3),
        "states_per_s": round(states_per_s, 1),
        "forward_flops_per_token": round(fwd),
        "gemm_gflops_1_thread": gemm["gflops"],
        "gemm_bound_states_per_s": round(bound, 1),
        "pct_of_gemm_bound": round(100 * states_per_s / bound, 1),
        "has_ngram": lm.ngram is not None,
        "goal_pct": 50,
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

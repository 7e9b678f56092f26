"""What a gate on the n-gram's distribution costs scoring, for any model.

    python bench/gate_cost.py RUN/best CORPUS [--split test] [--lines 2000] [--threads 1]

Issue #31: the gate (models/gate.py, served for vocabularies of at most 1,024 tokens)
reads the n-gram's entropy and largest ln P at every position, so scoring needs the
n-gram's whole distribution where without it it looks up the target's probability
alone: this says what that part would cost a model of any vocabulary (a word model's,
which takes no gate, too). The engine's scoring is timed without the model's gate, if
it has one (bench/mixing_cost.py `--part gate` times the gate as served). On the
split's first `--lines` sequences, at the positions
the engine scores (each from the start token, <eos> predicted), this times, best of
three: the n-gram's lookup of the targets (`logprob_and_bucket`, what scoring does),
its whole distribution (`log_probabilities_at` in chunks of 4,096 positions, what the
gate would add), and the engine's whole scoring of the same sequences (best of two),
the figure the difference is a share of. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mixers import padded  # noqa: E402  (bench/, the script's own directory)

from rnnlm.models.checkpoint import load_checkpoint, start_token  # noqa: E402
from rnnlm.models.engine import Engine  # noqa: E402
from rnnlm.models.ngram import histories_of  # noqa: E402
from rnnlm.models.ngram_next import layout_of  # noqa: E402
from rnnlm.models.tokenizers import EOS, PAD  # noqa: E402
from rnnlm.training.corpus import TokenSplit  # noqa: E402

_CHUNK = 4096  # positions per whole-distribution call: (4096, V) float32 at a time


def best_of(f: Callable[[], object], k: int) -> float:
    times = []
    for _ in range(k):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("run", type=Path, help="a checkpoint with an n-gram (RUN/best)")
    ap.add_argument("corpus", type=Path, help="the corpus it was trained on (`rnnlm corpus`)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.run)
    ngram = ckpt.ngram
    if ngram is None:
        raise SystemExit(f"{args.run}: no n-gram in this checkpoint")
    layout, start = layout_of(ngram), start_token(ckpt.mode)
    data = TokenSplit(args.corpus, args.split)
    seqs = [data.sequence(i)[:-1].tolist() for i in range(min(len(data), args.lines))]
    inp, tgt = padded([[start, *s, EOS] for s in seqs])
    mask = inp != PAD
    hist, targets = histories_of(inp, ngram.order)[mask], tgt[mask]  # (N, order-1), (N,)

    def whole() -> None:
        for i in range(0, len(hist), _CHUNK):
            layout.log_probabilities_at(layout.contexts(hist[i : i + _CHUNK]), np.float32)

    engine = Engine(dataclasses.replace(ckpt, mix_gate=None))  # scoring as without a gate
    engine.score_token_ids(seqs[:50])  # warm: the first call builds what scoring keeps
    target_s = best_of(lambda: ngram.logprob_and_bucket(hist, targets), 3)
    whole_s = best_of(whole, 3)
    scoring_s = best_of(lambda: engine.score_token_ids(seqs), 2)
    print(json.dumps({
        "bench": "gate_cost", "run": str(args.run), "split": args.split,
        "positions": int(len(targets)), "vocab": ckpt.model.config.vocab_size,
        "threads": args.threads, "ngram_targets_s": round(target_s, 4),
        "ngram_whole_s": round(whole_s, 4), "engine_scoring_s": round(scoring_s, 4),
        # what scoring would take with the whole distribution instead of the lookup
        "scoring_with_gate_x": round((scoring_s - target_s + whole_s) / scoring_s, 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()

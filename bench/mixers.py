"""Ways to mix a model's RNN and n-gram, fit on validation, measured on test side by side.

    python bench/mixers.py RUN/best CORPUS [--max-tokens 200000] [--steps 300] > mixers.jsonl

An experiment, not a feature (issue #31, its first lever): the checkpoint serves
the mixture it has (one λ per mixing bucket, linear). This measures, on the same
positions, what other mixers would give:

- `rnn`, `ngram`: each part alone;
- `linear-buckets`: λ·P_rnn + (1−λ)·P_ngram with the checkpoint's λ per bucket (the
  served model; its bits match `rnnlm eval`'s up to the positions scored);
- `linear-gated`: λ = σ(w·φ + b), φ the history's features below;
- `loglinear-buckets`: P ∝ P_rnn^a · P_ngram^c, a and c per bucket (geometric
  mixing, as PAQ and cmix mix; log-linear interpolation in Heafield et al. 2016);
- `loglinear-gated`: a, c = softplus(W·φ + b).

φ depends on the history only, never on the token predicted: the history's mixing
bucket (one-hot), the entropy and the largest log-probability of each part's
distribution. Every mixed distribution is normalised over the whole vocabulary
(`check_sums` verifies Σ_v P(v) = 1 at every scored position, recomputing the
mixer as if each v were the token predicted, so a mixer that peeked at the token
would fail it). Each gated or per-bucket mixer is fit by Adam on the validation
positions (the first half; the second half picks the step), then scored on test.
Prints one JSON object per mixer: bits per token on validation and test, and test
bits against the n-gram's on the same tokens (the ratio the quality goals use).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rnnlm.models.checkpoint import load_checkpoint, start_token  # noqa: E402
from rnnlm.models.ngram import KID_BINS, histories_of  # noqa: E402
from rnnlm.models.ngram_next import layout_of  # noqa: E402
from rnnlm.models.tokenizers import EOS, PAD  # noqa: E402
from rnnlm.training.corpus import TokenSplit  # noqa: E402

_FLOOR = -50.0  # ln P where a part gives exactly 0 (specials): finite, so 0 · ln P = 0


class Positions:
    """Every scored position of a split: each part's whole distribution, in ln, and the
    history's bucket; the token predicted kept apart (`targets`)."""

    def __init__(self, rnn: Tensor, ngram: Tensor, bucket: Tensor, targets: Tensor) -> None:
        self.rnn, self.ngram, self.bucket, self.targets = rnn, ngram, bucket, targets

    def __len__(self) -> int:
        return len(self.targets)

    def part(self, rows: slice) -> Positions:
        return Positions(self.rnn[rows], self.ngram[rows], self.bucket[rows], self.targets[rows])


def positions(run: Path, corpus: Path, split: str, max_tokens: int) -> Positions:
    """The split's positions as the engine scores them: each sequence from the start
    token, <eos> predicted, the n-gram reading the same history."""
    ckpt = load_checkpoint(run)
    model, ngram = ckpt.model.eval(), ckpt.ngram
    if ngram is None:
        raise SystemExit(f"{run}: no n-gram in this checkpoint")
    layout, start = layout_of(ngram), start_token(ckpt.mode)
    data = TokenSplit(corpus, split)
    rnn, ng, buckets, targets = [], [], [], []
    seen, i = 0, 0
    with torch.inference_mode():
        while i < len(data) and seen < max_tokens:
            seqs = []
            while i < len(data) and len(seqs) < 64 and seen < max_tokens:
                s = [start, *data.sequence(i)[:-1].tolist(), EOS]
                seqs.append(s)
                seen += len(s) - 1
                i += 1
            T = max(len(s) for s in seqs) - 1
            inp = np.full((len(seqs), T), PAD, np.int64)
            tgt = np.full((len(seqs), T), PAD, np.int64)
            for r, s in enumerate(seqs):
                inp[r, : len(s) - 1], tgt[r, : len(s) - 1] = s[:-1], s[1:]
            mask = inp != PAD
            feats, _ = model.features(torch.from_numpy(inp))
            lp = model.log_probs(feats)[torch.from_numpy(mask)]  # (N, V)
            hist = histories_of(inp, ngram.order)[mask]  # (N, order-1)
            _, bucket = ngram.logprob_and_bucket(hist, tgt[mask])  # the bucket: history only
            probs = layout.probabilities(hist, dtype=np.float64)  # (N, V)
            rnn.append(lp.double())  # float64: sums checked to 1e-6 and better
            with np.errstate(divide="ignore"):
                ng.append(torch.from_numpy(np.log(probs)).clamp(min=_FLOOR))
            buckets.append(torch.from_numpy(bucket))
            targets.append(torch.from_numpy(tgt[mask]))
    return Positions(torch.cat(rnn).clamp(min=_FLOOR), torch.cat(ng), torch.cat(buckets),
                     torch.cat(targets))  # fmt: skip


def features(p: Positions, buckets: int) -> Tensor:
    """φ of each position (N, buckets + 4): the bucket one-hot; each part's entropy and
    largest ln P. Functions of the two distributions and the bucket: the history's."""
    onehot = F.one_hot(p.bucket, buckets).double()
    cols = []
    for lp in (p.rnn, p.ngram):
        probs = lp.exp()
        cols += [-(probs * lp).sum(1), lp.max(1).values]
    return torch.cat([onehot, torch.stack(cols, 1)], 1)


class Mixer(nn.Module):
    """ln P(· | history) (N, V) of a mixture, normalised over the vocabulary."""

    def log_probs(self, p: Positions, phi: Tensor) -> Tensor:
        raise NotImplementedError

    def token_logprob(self, p: Positions, phi: Tensor, targets: Tensor) -> Tensor:
        """ln P(target) (N,): the whole distribution's entry; the target is read here only."""
        return self.log_probs(p, phi).gather(1, targets[:, None])[:, 0]


class Linear(Mixer):
    """λ·P_rnn + (1−λ)·P_ngram; λ per bucket (`table`), or σ(w·φ + b) (`gated`)."""

    def __init__(self, width: int, table: Tensor | None = None) -> None:
        super().__init__()
        self.table = table
        self.gate = nn.Linear(width, 1) if table is None else None

    def weight(self, p: Positions, phi: Tensor) -> Tensor:
        if self.table is not None:
            return self.table[p.bucket]
        assert self.gate is not None
        return torch.sigmoid(self.gate(phi))[:, 0]

    def log_probs(self, p: Positions, phi: Tensor) -> Tensor:
        lam = self.weight(p, phi).clamp(1e-6, 1 - 1e-6)[:, None]
        return torch.logaddexp(p.rnn + lam.log(), p.ngram + (-lam).log1p())


class LogLinear(Mixer):
    """P ∝ P_rnn^a · P_ngram^c; (a, c) per bucket, or softplus(W·φ + b) (`gated`)."""

    def __init__(self, width: int, buckets: int, gated: bool) -> None:
        super().__init__()
        self.gated = gated
        self.w = nn.Linear(width, 2) if gated else None
        # softplus⁻¹(0.5): both parts at a half to start, near the geometric mean.
        self.per_bucket = None if gated else nn.Parameter(torch.full((buckets, 2), -0.4328))
        if gated:  # the same start: no weights on φ, the bias at softplus⁻¹(0.5)
            assert self.w is not None
            nn.init.zeros_(self.w.weight)
            nn.init.constant_(self.w.bias, -0.4328)

    def log_probs(self, p: Positions, phi: Tensor) -> Tensor:
        raw = self.w(phi) if self.w is not None else self.per_bucket[p.bucket]  # type: ignore[index]
        ac = F.softplus(raw)  # (N, 2), non-negative
        x = ac[:, :1] * p.rnn + ac[:, 1:] * p.ngram
        return torch.log_softmax(x, dim=1)


def fit(mixer: Mixer, p: Positions, phi: Tensor, steps: int) -> dict[str, Any]:
    """Adam on the first half of `p`; the step with the best second half is kept."""
    params = [q for q in mixer.parameters() if q.requires_grad]
    if not params:
        return {"steps": 0}
    half = len(p) // 2
    fit_p, hold = p.part(slice(0, half)), p.part(slice(half, None))
    fit_phi, hold_phi = phi[:half], phi[half:]
    opt = torch.optim.Adam(params, lr=0.05)
    best, best_state, best_step = math.inf, None, 0
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = -mixer.token_logprob(fit_p, fit_phi, fit_p.targets).mean()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps:
            with torch.no_grad():
                held = -float(mixer.token_logprob(hold, hold_phi, hold.targets).mean())
            if held < best:
                best, best_step = held, step
                best_state = {k: v.clone() for k, v in mixer.state_dict().items()}
    if best_state is not None:
        mixer.load_state_dict(best_state)
    return {"steps": steps, "best_step": best_step}


def check_sums(token_logprob: Callable[[Tensor], Tensor], vocab: int, n: int) -> float:
    """The largest |Σ_v P(v) − 1| over n positions, each P(v) computed as if v were the
    token predicted (`token_logprob(targets)` -> ln P (n,)): 0 up to rounding for a
    mixer that reads the history only; larger for one that reads the token."""
    total = torch.zeros(n, dtype=torch.float64)
    with torch.no_grad():
        for v in range(vocab):
            total += token_logprob(torch.full((n,), v, dtype=torch.long)).double().exp()
    return float((total - 1).abs().max())


def bits(mixer: Mixer, p: Positions, phi: Tensor) -> float:
    with torch.no_grad():
        return -float(mixer.token_logprob(p, phi, p.targets).mean()) / math.log(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("run", type=Path, help="a checkpoint with an n-gram (RUN/best)")
    ap.add_argument("corpus", type=Path, help="the corpus it was trained on (`rnnlm corpus`)")
    ap.add_argument("--max-tokens", type=int, default=200_000, help="per split")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--check", type=int, default=200, help="positions whose sums are checked")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    valid = positions(args.run, args.corpus, "valid", args.max_tokens)
    test = positions(args.run, args.corpus, "test", args.max_tokens)
    ckpt = load_checkpoint(args.run)
    assert ckpt.ngram is not None
    buckets = ckpt.ngram.order * KID_BINS
    table = torch.from_numpy(np.asarray(ckpt.mixing_table(), np.float64))
    phi_v, phi_t = features(valid, buckets), features(test, buckets)
    mean, std = phi_v.mean(0), phi_v.std(0).clamp(min=1e-6)
    phi_v, phi_t = (phi_v - mean) / std, (phi_t - mean) / std  # valid's scale for both
    width = phi_v.shape[1]
    common = {
        "run": str(args.run),
        "valid_tokens": len(valid),
        "test_tokens": len(test),
        "vocab": int(valid.rnn.shape[1]),
        "prepare_s": round(time.perf_counter() - t0, 1),
    }
    torch.set_default_dtype(torch.float64)  # the gates' weights, as the positions
    mixers: dict[str, Mixer] = {
        "rnn": Linear(width, torch.ones(buckets, dtype=torch.float64)),
        "ngram": Linear(width, torch.zeros(buckets, dtype=torch.float64)),
        "linear-buckets": Linear(width, table),
        "linear-gated": Linear(width),
        "loglinear-buckets": LogLinear(width, buckets, gated=False),
        "loglinear-gated": LogLinear(width, buckets, gated=True),
    }
    ngram_bits = bits(mixers["ngram"], test, phi_t)
    for name, mixer in mixers.items():
        t1 = time.perf_counter()
        info = fit(mixer, valid, phi_v, args.steps)
        n = min(args.check, len(test))
        sub, sub_phi = test.part(slice(0, n)), phi_t[:n]
        worst = check_sums(lambda tg: mixer.token_logprob(sub, sub_phi, tg),  # noqa: B023
                           sub.rnn.shape[1], n)  # fmt: skip
        test_bits = bits(mixer, test, phi_t)
        print(json.dumps({"bench": "mixer", "mixer": name, **common, **info,
                          "valid_bits": round(bits(mixer, valid, phi_v), 4),
                          "test_bits": round(test_bits, 4),
                          "test_bits_vs_ngram": round(test_bits / ngram_bits, 4),
                          "max_sum_error": worst, "fit_s": round(time.perf_counter() - t1, 1)}),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""Ways to mix a model's RNN and n-gram, fit on validation, measured on test side by side.

    python bench/mixers.py RUN/best CORPUS [--max-tokens 200000] [--steps 300]
        [--match-len 64] [--cache-len 64] > mixers.jsonl

An experiment, not a feature (issue #31, its first lever): the checkpoint serves
the mixture it has (one λ per mixing bucket, linear). This measures, on the same
positions, what other mixers would give:

- `rnn`, `ngram`: each part alone;
- `linear-buckets`: λ·P_rnn + (1−λ)·P_ngram with the checkpoint's λ per bucket (the
  served mixture of a model without a gate; its bits match `rnnlm eval`'s up to the
  positions scored, or, for a model with a match model (models/match.py), eval's
  `match.perplexity_without`); `served-gate`, for a model with a gate (models/gate.py),
  its served mixture, and `match1-served-gate` that with μ per served match bucket
  fit here (what training fits over it);
- `linear-gated`: λ = σ(w·φ + b), φ the history's features below;
- `loglinear-buckets`: P ∝ P_rnn^a · P_ngram^c, a and c per bucket (geometric
  mixing, as PAQ and cmix mix; log-linear interpolation in Heafield et al. 2016);
- `loglinear-gated`: a, c = softplus(W·φ + b);
- `match`: the match model of `match_model.py` alone, over the training text (lever 3:
  counted over all occurrences, not the served one's guess;
  the tokens that followed the longest stretch of it that ends as the history ends);
- `match-linear-buckets`: the served mixture, then (1−μ)·P_served + μ·P_match with μ
  per match bucket (the match's length, and how many distinct tokens followed it):
  one table more, what a served model would add;
- `match1-linear-buckets`: the same with the match model's one guess (all of its P on
  the token that most often followed); `match1-linear-lengths` with μ by the match's
  length alone: what a match model of one pointer into the text knows;
- `match-linear-gated`: the RNN, the n-gram and the match model, weights
  softmax(W·φ' + b), φ' = φ and the match model's features;
- `match1-gated-guess`, `-rnn`, `-both`: gates a served model could read (`served_features`):
  the same over the match's one guess, φ the mixing and the served match buckets, the
  occurrences and each part's ln P of the guess; then the RNN's entropy and largest ln P
  too; then the n-gram's (its whole distribution at every position, which scoring lacks);
- `linear-gated-rnn`: λ from φ without the n-gram's entropy and largest ln P (what
  scoring has without the n-gram's whole distribution); `linear-peak4`, `-peak8`: λ per
  bucket and per quantile bin of the n-gram's largest ln P (the served table, one
  dimension more);
- `match1-lambda-gated`, `-gated-rnn`, `match1-linear-peak4`, `-peak8`: those λs, then
  the served match's one guess with μ per served match bucket; `match1-mu-served`,
  `-parts`, `-rnn`: the served λ table, μ from a gate on the served match bucket, the
  occurrences and the served mixture's ln P of the guess (`mu_features`), then each
  part's ln P of it, then the RNN's entropy and largest ln P: which part of the gates'
  gain a served model could have cheaply;
- `cache-adapting`, `match+cache-adapting`: the same with a *cache*, the match model
  over the split's own lines read before (lever 4's other half: counts of the text
  already scored); adapting to the text, so rows of their own.

φ depends on the history only, never on the token predicted: the history's mixing
bucket (one-hot), the entropy and the largest log-probability of each part's
distribution. Every mixed distribution is normalised over the whole vocabulary
(`check_sums` verifies Σ_v P(v) = 1 at every scored position, recomputing the
mixer as if each v were the token predicted, so a mixer that peeked at the token
would fail it). Each gated or per-bucket mixer is fit by Adam on the validation
positions (the first half; the second half picks the step, its start a candidate),
then scored on test.
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

from match_model import (  # noqa: E402
    FLOOR,
    MATCH_BUCKETS,
    MatchIndex,
    counted_part,
    match_bucket,
    match_features,
    no_match,
    training_stream,
)

from rnnlm.models.checkpoint import load_checkpoint, start_token  # noqa: E402
from rnnlm.models.gate import MixingGate, log_features  # noqa: E402
from rnnlm.models.match import BUCKETS as SERVED_BUCKETS  # noqa: E402
from rnnlm.models.match import bucket as served_bucket  # noqa: E402
from rnnlm.models.ngram import KID_BINS, histories_of  # noqa: E402
from rnnlm.models.ngram_next import layout_of  # noqa: E402
from rnnlm.models.tokenizers import EOS, PAD  # noqa: E402
from rnnlm.training.corpus import TokenSplit  # noqa: E402


class Positions:
    """Every scored position of a split: each part's whole distribution, in ln, and the
    history's bucket; the token predicted kept apart (`targets`). `counted`: the
    count-based parts beside them, "match" (the training text's match model) and
    "cache" (the same over the split's own lines read before), each as (ln P (N, V),
    stats (N, 3): the longest match's length, its occurrences, the distinct tokens after
    them)."""

    def __init__(
        self, rnn: Tensor, ngram: Tensor, bucket: Tensor, targets: Tensor,
        counted: dict[str, tuple[Tensor, Tensor]] | None = None,
    ) -> None:  # fmt: skip
        self.rnn, self.ngram, self.bucket, self.targets = rnn, ngram, bucket, targets
        self.counted = counted or {}

    def __len__(self) -> int:
        return len(self.targets)

    def part(self, rows: slice) -> Positions:
        counted = {k: (lp[rows], st[rows]) for k, (lp, st) in self.counted.items()}
        return Positions(self.rnn[rows], self.ngram[rows], self.bucket[rows], self.targets[rows],
                         counted)  # fmt: skip


def padded(seqs: list[list[int]]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Each sequence (start token … <eos>) as a row of inputs and of targets, the one
    shifted from the other, right-padded with PAD: (B, T), (B, T)."""
    T = max(len(s) for s in seqs) - 1
    inp = np.full((len(seqs), T), PAD, np.int64)
    tgt = np.full((len(seqs), T), PAD, np.int64)
    for r, s in enumerate(seqs):
        inp[r, : len(s) - 1], tgt[r, : len(s) - 1] = s[:-1], s[1:]
    return inp, tgt


def positions(
    run: Path, corpus: Path, split: str, max_tokens: int,
    index: MatchIndex | None = None, cache_len: int = 0,
) -> Positions:  # fmt: skip
    """The split's positions as the engine scores them: each sequence from the start
    token, <eos> predicted, the n-gram (and the match models) reading the same history.

    cache_len > 0: the "cache" part, a match model over the split's lines read before,
    in order, up to cache_len tokens back: its index is built again before each line
    from the lines before it (a line's own tokens are the history, not the cache)."""
    ckpt = load_checkpoint(run)
    model, ngram = ckpt.model.eval(), ckpt.ngram
    if ngram is None:
        raise SystemExit(f"{run}: no n-gram in this checkpoint")
    layout, start = layout_of(ngram), start_token(ckpt.mode)
    vocab = ckpt.model.config.vocab_size
    data = TokenSplit(corpus, split)
    rnn, ng, buckets, targets = [], [], [], []
    counted: dict[str, list[tuple[Tensor, Tensor]]] = {"match": [], "match1": [], "cache": []}
    seen, i = 0, 0
    read: list[np.ndarray[Any, Any]] = []  # the lines before, for the cache
    with torch.inference_mode():
        while i < len(data) and seen < max_tokens:
            first, seqs = i, list[list[int]]()
            while i < len(data) and len(seqs) < 64 and seen < max_tokens:
                s = [start, *data.sequence(i)[:-1].tolist(), EOS]
                seqs.append(s)
                seen += len(s) - 1
                i += 1
            inp, tgt = padded(seqs)
            mask = inp != PAD
            feats, _ = model.features(torch.from_numpy(inp))
            lp = model.log_probs(feats)[torch.from_numpy(mask)]  # (N, V)
            hist = histories_of(inp, ngram.order)[mask]  # (N, order-1)
            _, bucket = ngram.logprob_and_bucket(hist, tgt[mask])  # the bucket: history only
            probs = layout.probabilities(hist, dtype=np.float64)  # (N, V)
            rnn.append(lp.double())  # float64: sums checked to 1e-6 and better
            with np.errstate(divide="ignore"):
                ng.append(torch.from_numpy(np.log(probs)).clamp(min=FLOOR))
            buckets.append(torch.from_numpy(bucket))
            targets.append(torch.from_numpy(tgt[mask]))
            if index is not None:
                long = histories_of(inp, index.max_len + 1)[mask]
                found = index.lookup(long)  # once: the counts, then their one guess
                counted["match"].append(counted_part(*found))
                lp1, _ = counted_part(*found, one_guess=True)
                counted["match1"].append((lp1, counted["match"][-1][1]))  # the same stats
            if cache_len > 0:
                long = histories_of(inp, cache_len + 1)  # (B, T, cache_len)
                for r, s in enumerate(seqs):
                    cache = (MatchIndex(training_stream(read, start), vocab, cache_len)
                             if read else None)  # fmt: skip
                    h = long[r, : len(s) - 1]
                    found = cache.lookup(h) if cache else no_match(len(h), vocab)
                    counted["cache"].append(counted_part(*found))
                    read.append(data.sequence(first + r))  # read: the next line sees it
    parts = {k: (torch.cat([lp for lp, _ in v]), torch.cat([st for _, st in v]))
             for k, v in counted.items() if v}  # fmt: skip
    return Positions(torch.cat(rnn).clamp(min=FLOOR), torch.cat(ng), torch.cat(buckets),
                     torch.cat(targets), parts)  # fmt: skip


def match_index(run: Path, corpus: Path, max_len: int) -> MatchIndex:
    """The match model of the checkpoint's training split, as the model reads it."""
    ckpt = load_checkpoint(run)
    train = TokenSplit(corpus, "train")
    stream = training_stream((train.sequence(i) for i in range(len(train))),
                             start_token(ckpt.mode))  # fmt: skip
    return MatchIndex(stream, ckpt.model.config.vocab_size, max_len)


def features(p: Positions, buckets: int, ngram: bool = True) -> Tensor:
    """φ of each position (N, buckets + 4): the bucket one-hot; each part's entropy and
    largest ln P. Functions of the two distributions and the bucket: the history's.
    ngram=False: the RNN's only (N, buckets + 2), what scoring has without the n-gram's
    whole distribution."""
    onehot = F.one_hot(p.bucket, buckets).double()
    cols = []
    for lp in (p.rnn, p.ngram) if ngram else (p.rnn,):
        probs = lp.exp()
        cols += [-(probs * lp).sum(1), lp.max(1).values]
    return torch.cat([onehot, torch.stack(cols, 1)], 1)


def served_match(p: Positions) -> tuple[Tensor, Tensor, Tensor]:
    """What the served match model knows at each position, from the match's one guess:
    whether there is a match (N,), its served μ bucket (N,; 0 without; models/match.py's
    `bucket` of its length and occurrences) and the guess (N, 1)."""
    lp1, stats = p.counted["match1"]
    length, occ = stats[:, 0].long(), stats[:, 1].long()
    has = length > 0
    mb = torch.from_numpy(served_bucket(np.maximum(length.numpy(), 1), occ.numpy()))
    return has, torch.where(has, mb, torch.zeros_like(mb)), lp1.argmax(1)[:, None]


def served_features(p: Positions, buckets: int, spread: str) -> Tensor:
    """φ a served gate could read at every scored position without the n-gram's whole
    distribution (N, ·): the mixing bucket and the served match bucket (length by
    occurrences; models/match.py) one-hot, the RNN's entropy and largest ln P, ln of the
    occurrences, and each part's ln P of the match's one guess (a token chosen by the
    history: 0 where there is none). `spread` "none": neither part's entropy and largest
    ln P; "rnn": the RNN's; "both": the n-gram's too (its whole distribution at every
    position)."""
    has, mb, guess = served_match(p)
    stats = p.counted["match1"][1]
    cols = [stats[:, 1].log1p(), torch.where(has, p.rnn.gather(1, guess)[:, 0], 0.0),
            torch.where(has, p.ngram.gather(1, guess)[:, 0], 0.0)]  # fmt: skip
    for lp in (p.rnn, p.ngram)[: {"none": 0, "rnn": 1, "both": 2}[spread]]:
        cols += [-(lp.exp() * lp).sum(1), lp.max(1).values]
    return torch.cat([F.one_hot(p.bucket, buckets).double(),
                      F.one_hot(mb, SERVED_BUCKETS).double(), torch.stack(cols, 1)], 1)  # fmt: skip


def on_valid_scale(fv: Tensor, ft: Tensor) -> tuple[Tensor, Tensor]:
    """Validation's and test's φ standardised by validation's mean and spread, the
    scale every gate is fit on."""
    mean, std = fv.mean(0), fv.std(0).clamp(min=1e-6)
    return (fv - mean) / std, (ft - mean) / std


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


class CountedAlone(Mixer):
    """A count-based part by itself (uniform where nothing matched)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def log_probs(self, p: Positions, phi: Tensor) -> Tensor:
        return p.counted[self.name][0]


class MatchLinear(Mixer):
    """The RNN, the n-gram and count-based parts (`names`), linearly.

    With no `table`: weights softmax(W·φ + b) over them all, φ with each counted part's
    features. With one: the served mixture first (the checkpoint's λ per bucket), then
    (1−μ)·P_served + μ·P_match with μ per match bucket: what a served model would add,
    one more table."""

    def __init__(
        self, width: int, names: tuple[str, ...], table: Tensor | None = None, lam: float = 0.5,
        by_kinds: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.names, self.by_kinds = names, by_kinds
        self.served = Linear(width, table) if table is not None else None
        self.gate = nn.Linear(width, 2 + len(names)) if table is None else None
        # σ⁻¹(0.05): the match model at a twentieth to start.
        self.mu = nn.Parameter(torch.full((MATCH_BUCKETS,), -2.944)) if table is not None else None
        if self.gate is not None:  # start near the served mixture (λ on average: `lam`)
            start = [lam * 0.9, (1 - lam) * 0.9] + [0.1 / len(names)] * len(names)
            nn.init.zeros_(self.gate.weight)
            with torch.no_grad():
                self.gate.bias.copy_(torch.tensor(start).log())

    def log_probs(self, p: Positions, phi: Tensor) -> Tensor:
        counted = [p.counted[k] for k in self.names]
        if self.gate is not None:
            w = torch.log_softmax(self.gate(phi), 1)  # (N, parts), ln of weights summing to 1
            parts = torch.stack([p.rnn, p.ngram, *(lp for lp, _ in counted)], 2)  # (N, V, parts)
            return torch.logsumexp(parts + w[:, None], 2)
        assert self.served is not None and self.mu is not None and len(counted) == 1
        ((match, stats),) = counted
        served = self.served.log_probs(p, phi)
        mu = self.mu[match_bucket(stats, self.by_kinds)][:, None]
        return torch.logaddexp(served + F.logsigmoid(-mu), match + F.logsigmoid(mu))


class PeakTable(Mixer):
    """λ per (mixing bucket, bin of the n-gram's largest ln P): a table as served, one
    dimension more, the n-gram's peak cut at `edges` (valid's quantiles). The peak is a
    function of the history (its n-gram distribution), not of the token predicted."""

    def __init__(self, table: Tensor, edges: Tensor) -> None:
        super().__init__()
        self.edges = edges
        start = table.clamp(1e-4, 1 - 1e-4).logit()[:, None].repeat(1, len(edges) + 1)
        self.logit = nn.Parameter(start)  # (buckets, bins), from the served λ

    def log_probs(self, p: Positions, phi: Tensor) -> Tensor:
        peak = torch.bucketize(p.ngram.max(1).values.contiguous(), self.edges)
        lam = torch.sigmoid(self.logit[p.bucket, peak]).clamp(1e-6, 1 - 1e-6)[:, None]
        return torch.logaddexp(p.rnn + lam.log(), p.ngram + (-lam).log1p())


class GatedMatch(Mixer):
    """λ = σ(w·φ + b) between the RNN and the n-gram (or `mixture`'s), then (1−μ)·P +
    μ·[t = guess] with μ per served match bucket (models/match.py's `bucket`): a gate a
    served model could use in place of its λ table, the match model as served."""

    def __init__(self, width: int, lam: float, mixture: Mixer | None = None) -> None:
        super().__init__()
        if mixture is None:
            mixture = Linear(width)
            assert mixture.gate is not None
            nn.init.zeros_(mixture.gate.weight)
            nn.init.constant_(mixture.gate.bias, math.log(lam / (1 - lam)))
        self.mixture = mixture
        self.mu = nn.Parameter(torch.full((SERVED_BUCKETS,), -2.944))

    def log_probs(self, p: Positions, phi: Tensor) -> Tensor:
        has, mb, _ = served_match(p)
        mu = torch.where(has, self.mu[mb], -1e9)[:, None]
        lp1 = p.counted["match1"][0]
        mixed = self.mixture.log_probs(p, phi)
        return torch.logaddexp(mixed + F.logsigmoid(-mu), lp1 + F.logsigmoid(mu))


class ServedGate(Mixer):
    """The checkpoint's own gate (models/gate.py), as served: λ from the bucket and each
    part's entropy and largest ln P, nothing fit here."""

    def __init__(self, gate: MixingGate) -> None:
        super().__init__()
        self.gate = gate

    def log_probs(self, p: Positions, phi: Tensor) -> Tensor:
        rnn, ngram = log_features(p.rnn.numpy()), log_features(p.ngram.numpy())
        lam = torch.from_numpy(self.gate.weights(p.bucket.numpy(), rnn, ngram))
        lam = lam.clamp(1e-12, 1 - 1e-12)[:, None]
        return torch.logaddexp(p.rnn + lam.log(), p.ngram + (-lam).log1p())


class MatchGatedMu(Mixer):
    """The served mixture (the checkpoint's λ per bucket), then (1−μ)·P_served +
    μ·[t = guess] with μ = σ(w·φ + b) on `mu_features`: a gate on the match's weight
    alone, the λ table kept; μ = 0 where nothing matched, as served."""

    def __init__(self, width: int, table: Tensor) -> None:
        super().__init__()
        self.served = Linear(width, table)
        self.gate = nn.Linear(width, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, -2.944)  # σ⁻¹(0.05), as MatchLinear's μ

    def log_probs(self, p: Positions, phi: Tensor) -> Tensor:
        lp1, stats = p.counted["match1"]
        has = (stats[:, 0] > 0)[:, None]
        mu = torch.where(has, self.gate(phi), -1e9)
        served = self.served.log_probs(p, phi)
        return torch.logaddexp(served + F.logsigmoid(-mu), lp1 + F.logsigmoid(mu))


def mu_features(p: Positions, table: Tensor, spread: str) -> Tensor:
    """φ of `MatchGatedMu` (N, ·): the served match bucket one-hot, ln of the
    occurrences, the served mixture's ln P of the guess (0 where none); "parts": each
    part's ln P of the guess too; "rnn": and the RNN's entropy and largest ln P."""
    has, mb, guess = served_match(p)
    stats = p.counted["match1"][1]
    served = Linear(1, table).log_probs(p, p.rnn[:, :1]).gather(1, guess)[:, 0]
    cols = [stats[:, 1].log1p(), torch.where(has, served, 0.0)]
    if spread in ("parts", "rnn"):
        cols += [torch.where(has, p.rnn.gather(1, guess)[:, 0], 0.0),
                 torch.where(has, p.ngram.gather(1, guess)[:, 0], 0.0)]  # fmt: skip
    if spread == "rnn":
        cols += [-(p.rnn.exp() * p.rnn).sum(1), p.rnn.max(1).values]
    return torch.cat([F.one_hot(mb, SERVED_BUCKETS).double(), torch.stack(cols, 1)], 1)


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
    for step in range(0, steps + 1):  # step 0: where it starts, a candidate too
        if step:
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
    ap.add_argument("--match-len", type=int, default=64,
                    help="longest match of the match model, tokens; 0: none")  # fmt: skip
    ap.add_argument("--mixers", default="", help="only these rows, comma-separated")
    ap.add_argument("--cache-len", type=int, default=64,
                    help="the same over the lines read before (adapting); 0: none")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    index = match_index(args.run, args.corpus, args.match_len) if args.match_len > 0 else None
    index_s = time.perf_counter() - t0
    valid = positions(args.run, args.corpus, "valid", args.max_tokens, index, args.cache_len)
    test = positions(args.run, args.corpus, "test", args.max_tokens, index, args.cache_len)
    ckpt = load_checkpoint(args.run)
    assert ckpt.ngram is not None
    buckets = ckpt.ngram.order * KID_BINS
    table = torch.from_numpy(np.asarray(ckpt.mixing_table(), np.float64))
    phi_v, phi_t = on_valid_scale(features(valid, buckets), features(test, buckets))
    width = phi_v.shape[1]
    common: dict[str, Any] = {
        "run": str(args.run),
        "valid_tokens": len(valid),
        "test_tokens": len(test),
        "vocab": int(valid.rnn.shape[1]),
        "prepare_s": round(time.perf_counter() - t0, 1),
    }
    for name, (_, stats) in test.counted.items():
        if name == "match1":  # the match's stats
            continue
        length = stats[:, 0]
        common |= {f"{name}_len": args.match_len if name == "match" else args.cache_len,
                   f"test_{name}_len_mean": round(float(length.mean()), 2),
                   # matches longer than the n-gram's longest context: where it adds reach
                   f"test_{name}_beyond_ngram": round(float((length >= ckpt.ngram.order)
                                                            .double().mean()), 4)}  # fmt: skip
    if index is not None:
        common["match_index_s"] = round(index_s, 1)
    # φ with the counted parts' features, on valid's scale, for the mixers that use them.
    with_counted: dict[tuple[str, ...], tuple[Tensor, Tensor]] = {}
    for names in (("match",), ("cache",), ("match", "cache")):
        if all(k in valid.counted for k in names):
            mf_v = torch.cat([match_features(*valid.counted[k]) for k in names], 1)
            mf_t = torch.cat([match_features(*test.counted[k]) for k in names], 1)
            mf_v, mf_t = on_valid_scale(mf_v, mf_t)
            with_counted[names] = (torch.cat([phi_v, mf_v], 1), torch.cat([phi_t, mf_t], 1))
    torch.set_default_dtype(torch.float64)  # the gates' weights, as the positions
    mixers: dict[str, Mixer] = {
        "rnn": Linear(width, torch.ones(buckets, dtype=torch.float64)),
        "ngram": Linear(width, torch.zeros(buckets, dtype=torch.float64)),
        "linear-buckets": Linear(width, table),
        "linear-gated": Linear(width),
        "loglinear-buckets": LogLinear(width, buckets, gated=False),
        "loglinear-gated": LogLinear(width, buckets, gated=True),
    }
    phis: dict[str, tuple[Tensor, Tensor]] = {}
    # λ from what scoring has cheaply, the RNN's distribution: its entropy and largest ln P.
    rnn_phis = on_valid_scale(features(valid, buckets, ngram=False),
                              features(test, buckets, ngram=False))  # fmt: skip
    phis["linear-gated-rnn"] = rnn_phis
    mixers["linear-gated-rnn"] = Linear(rnn_phis[0].shape[1])
    # λ per bucket and per bin of the n-gram's largest ln P (bins: valid's quantiles).
    peak_edges: dict[int, Tensor] = {}
    for bins in (4, 8):
        q = torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]
        peak_edges[bins] = torch.quantile(valid.ngram.max(1).values, q).contiguous()
        mixers[f"linear-peak{bins}"] = PeakTable(table, peak_edges[bins])
    lam_mean = min(max(float(table[valid.bucket].mean()), 0.01), 0.99)  # served λ, mean
    if ckpt.mix_gate is not None:  # the served mixture is the gate's; the table is its start
        mixers["served-gate"] = ServedGate(ckpt.mix_gate)
    if "match" in valid.counted:
        mixers["match"] = CountedAlone("match")
        mixers["match-linear-buckets"] = MatchLinear(width, ("match",), table)
        mixers["match1-linear-buckets"] = MatchLinear(width, ("match1",), table)
        mixers["match1-linear-lengths"] = MatchLinear(width, ("match1",), table, by_kinds=False)
    # The cache reads the split's earlier lines: adapting, so its rows are named so.
    for names, row in ((("match",), "match-linear-gated"), (("cache",), "cache-adapting"),
                       (("match", "cache"), "match+cache-adapting")):  # fmt: skip
        if names in with_counted:
            phis[row] = with_counted[names]
            mixers[row] = MatchLinear(phis[row][0].shape[1], names, lam=lam_mean)
    if "match1" in valid.counted:  # gates a served model could read (its one guess)
        for row, spread in (("match1-gated-guess", "none"), ("match1-gated-rnn", "rnn"),
                            ("match1-gated-both", "both")):  # fmt: skip
            phis[row] = on_valid_scale(served_features(valid, buckets, spread),
                                       served_features(test, buckets, spread))  # fmt: skip
            mixers[row] = MatchLinear(phis[row][0].shape[1], ("match1",), lam=lam_mean)
        phis["match1-lambda-gated-rnn"] = rnn_phis
        mixers["match1-lambda-gated-rnn"] = GatedMatch(rnn_phis[0].shape[1], lam_mean)
        for bins, edges in peak_edges.items():
            mixers[f"match1-linear-peak{bins}"] = GatedMatch(
                width, lam_mean, PeakTable(table, edges))  # fmt: skip
        mixers["match1-lambda-gated"] = GatedMatch(width, lam_mean)
        if ckpt.mix_gate is not None:  # the served gate, then μ per match bucket, as served
            mixers["match1-served-gate"] = GatedMatch(width, lam_mean, ServedGate(ckpt.mix_gate))
        for row, spread in (("match1-mu-served", "served"), ("match1-mu-parts", "parts"),
                            ("match1-mu-rnn", "rnn")):  # fmt: skip
            phis[row] = on_valid_scale(mu_features(valid, table, spread),
                                       mu_features(test, table, spread))  # fmt: skip
            mixers[row] = MatchGatedMu(phis[row][0].shape[1], table)
    ngram_bits = bits(mixers["ngram"], test, phi_t)
    for name, mixer in mixers.items():
        if args.mixers and name not in args.mixers.split(","):
            continue
        t1 = time.perf_counter()
        pv, pt = phis.get(name, (phi_v, phi_t))
        info = fit(mixer, valid, pv, args.steps)
        n = min(args.check, len(test))
        sub, sub_phi = test.part(slice(0, n)), pt[:n]
        worst = check_sums(lambda tg: mixer.token_logprob(sub, sub_phi, tg),  # noqa: B023
                           sub.rnn.shape[1], n)  # fmt: skip
        test_bits = bits(mixer, test, pt)
        print(json.dumps({"bench": "mixer", "mixer": name, **common, **info,
                          "valid_bits": round(bits(mixer, valid, pv), 4),
                          "test_bits": round(test_bits, 4),
                          "test_bits_vs_ngram": round(test_bits / ngram_bits, 4),
                          "max_sum_error": worst, "fit_s": round(time.perf_counter() - t1, 1)}),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

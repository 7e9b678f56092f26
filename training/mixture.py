"""The mixture λ·P_rnn + (1−λ)·P_ngram: fitting λ, and putting an n-gram into a checkpoint.

λ is the RNN's share, fit on the validation split by maximum likelihood, as
SRILM's compute-best-mix and Mikolov's rnnlm toolkit fit interpolation weights
(they iterate EM; the log-likelihood of a two-part mixture is concave in λ, so
its one maximum is found directly here, see `fit_mixing_weight`). Then one λ
per mixing bucket (how much the n-gram has seen of the history, models/ngram.py),
each fit the same way on the validation tokens whose history falls in it, as
Jelinek and Mercer tied interpolation weights by buckets of history counts: a
bucket with fewer than `MIN_BUCKET_TOKENS` of them takes the λ of all the
buckets of its context length, or failing that the single λ. The buckets are
kept only where they predict held-out text better than one λ does: fit on one
half of the validation tokens, scored on the other, and the other way round
(`choose_weights`); a small validation split keeps one λ. On `fortunes` they
cut the word model's test perplexity by about 1% against one λ (docs/ngram.md).

Then, for a vocabulary small enough to read each part's whole distribution at every
scored position (models/gate.py's `GATE_MAX_VOCAB`: characters, not words), a gate:
λ = σ(a[bucket] + w·φ), φ each part's entropy and largest ln P, fit by Adam on the
validation split from the table's λ (`fit_gate`), and kept only where it predicts
held-out validation text better than the table does, two-fold as above (`choose_gate`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rnnlm.models.checkpoint import (
    Checkpoint,
    load_checkpoint,
    read_config,
    save_checkpoint,
    start_token,
)
from rnnlm.models.engine import Engine
from rnnlm.models.errors import RnnlmError
from rnnlm.models.gate import GATE_MAX_VOCAB, MixingGate
from rnnlm.models.match import MAX_LEN
from rnnlm.models.ngram import KID_BINS, NgramModel, mix_logprobs
from rnnlm.models.tokenizers import Tokenizer
from rnnlm.models.weights import DEFAULT_WEIGHT, fit_mixing_weight
from rnnlm.training.arpa import import_arpa, token_words
from rnnlm.training.corpus import TokenSplit, load_corpus_tokenizer
from rnnlm.training.match_fit import build_match, fit_match, test_logprobs
from rnnlm.training.ngram import estimate

Floats = np.ndarray[Any, np.dtype[np.float64]]
_CHUNK = 1024  # sequences scored at a time
MIN_BUCKET_TOKENS = 50  # validation tokens a mixing bucket needs for a λ of its own


def fit_bucket_weights(
    rnn: Floats, ngram: Floats, bucket: np.ndarray[Any, Any], order: int, overall: float
) -> Floats:
    """λ of every mixing bucket (order · KID_BINS,) from the tokens in each (see the
    module's docstring); `overall` where a context length has too few tokens."""
    weights = np.full(order * KID_BINS, overall)
    length = bucket // KID_BINS
    for j in range(order):  # a context length's λ first: its buckets' fallback
        m = length == j
        if m.sum() >= MIN_BUCKET_TOKENS:
            weights[j * KID_BINS : (j + 1) * KID_BINS] = fit_mixing_weight(rnn[m], ngram[m])
    for b in np.unique(bucket):
        m = bucket == b
        if m.sum() >= MIN_BUCKET_TOKENS:
            weights[b] = fit_mixing_weight(rnn[m], ngram[m])
    return weights


def choose_weights(rnn: Floats, ngram: Floats, bucket: np.ndarray[Any, Any], order: int
                   ) -> tuple[float, Floats | None]:  # fmt: skip
    """λ, and λ per mixing bucket if those beat the single λ out of sample (two-fold
    cross-validation over the two halves of the tokens, which come sequence by sequence)."""
    weight = fit_mixing_weight(rnn, ngram)
    half = len(rnn) // 2
    folds = [(slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))]
    single = buckets = 0.0  # held-out log-likelihoods
    for fit_on, score_on in folds:
        r, n, b = rnn[fit_on], ngram[fit_on], bucket[fit_on]
        if not len(r) or not len(rnn[score_on]):
            return weight, None
        w = fit_mixing_weight(r, n)
        table = fit_bucket_weights(r, n, b, order, w)
        single += float(mix_logprobs(rnn[score_on], ngram[score_on], w).sum())
        buckets += float(
            mix_logprobs(rnn[score_on], ngram[score_on], table[bucket[score_on]]).sum()
        )
    if buckets <= single:
        return weight, None
    return weight, fit_bucket_weights(rnn, ngram, bucket, order, weight)


def split_sequences(split: TokenSplit, max_tokens: int | None = None) -> Iterator[list[list[int]]]:
    """The split's sequences without their closing <eos> (the engine adds it), in chunks."""
    seqs: list[list[int]] = []
    seen = 0
    for i in range(len(split)):
        s = split.sequence(i)
        seqs.append(s[:-1].tolist())
        seen += len(s)
        if len(seqs) >= _CHUNK:
            yield seqs
            seqs = []
        if max_tokens is not None and seen >= max_tokens:
            break
    if seqs:
        yield seqs


Components = tuple[Floats, Floats, np.ndarray[Any, np.dtype[np.int64]]]
GATE_STEPS = 300  # Adam steps of a gate's fit (full batch; a few seconds for 120k tokens)


def component_logprobs(
    checkpoint: Checkpoint, ngram: NgramModel, split: TokenSplit, max_tokens: int | None = None
) -> Components:
    """Every token's ln P_rnn, ln P_ngram and mixing bucket over a split, as the engine
    scores it."""
    return components_and_features(checkpoint, ngram, split, max_tokens)[0]


def components_and_features(
    checkpoint: Checkpoint,
    ngram: NgramModel,
    split: TokenSplit,
    max_tokens: int | None = None,
    features: bool = False,
) -> tuple[Components, Floats | None]:
    """`component_logprobs`, and with `features` each token's φ (N, 4) (models/gate.py)."""
    mixed = Checkpoint(checkpoint.path, checkpoint.model, checkpoint.tokenizer,
                       checkpoint.config, ngram, DEFAULT_WEIGHT)  # fmt: skip
    engine = Engine(mixed)
    rnn: list[float] = []
    ng: list[float] = []
    buckets: list[int] = []
    phi: list[list[float]] = []
    for seqs in split_sequences(split, max_tokens):
        for r, n, b, f in engine.score_components(seqs, features=features):
            rnn.extend(r)
            ng.extend(n)
            buckets.extend(b)
            phi.extend(f or [])
    parts = np.array(rnn), np.array(ng), np.array(buckets, dtype=np.int64)
    return parts, np.array(phi, np.float64).reshape(-1, 4) if features else None


def gate_weights(gate: MixingGate, bucket: np.ndarray[Any, Any], phi: Floats) -> Floats:
    """λ of each token from its bucket and φ (N, 4)."""
    return gate.weights(bucket, phi[:, :2], phi[:, 2:])


def fit_gate(parts: Components, phi: Floats, table: Floats, steps: int = GATE_STEPS) -> MixingGate:
    """The gate that maximises the mixture's likelihood of `parts`' tokens, by Adam from
    the table's λ (bias = logit λ[bucket], no slopes), on φ standardised by its mean and
    spread (folded back into the bias and slopes at the end, so the gate reads raw φ).
    A bucket with fewer than MIN_BUCKET_TOKENS of the tokens keeps the table's logit, as
    the table itself falls back there (Adam would move its bias as far as any other's)."""
    rnn, ngram, bucket = (torch.from_numpy(np.asarray(x)) for x in parts)
    x = torch.from_numpy(phi)
    mean, std = x.mean(0), (x.std(0).clamp(min=1e-6) if len(x) > 1 else torch.ones(4))
    x = (x - mean) / std
    lam = torch.from_numpy(np.clip(table, 1e-4, 1 - 1e-4))
    start = torch.log(lam / (1 - lam))  # (buckets,)
    free = torch.bincount(bucket, minlength=len(table)) >= MIN_BUCKET_TOKENS
    offset = torch.zeros(len(table), dtype=torch.float64, requires_grad=True)
    slopes = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([offset, slopes], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        z = (start + offset * free)[bucket] + x @ slopes
        nll = -torch.logaddexp(rnn + F.logsigmoid(z), ngram + F.logsigmoid(-z)).mean()
        nll.backward()  # type: ignore[no-untyped-call]
        opt.step()
    with torch.no_grad():
        w = slopes / std
        bias = start + offset * free - (w * mean).sum()
        return MixingGate(bias.numpy().copy(), w.numpy().copy())


def choose_gate(
    parts: Components,
    phi: Floats,
    order: int,
    table: Floats,
    buckets: bool,
    steps: int = GATE_STEPS,
) -> tuple[MixingGate | None, float]:
    """A gate fit on all of `parts` from `table` (the λ per bucket `choose_weights` chose
    on them: per bucket with `buckets`, else one λ everywhere), if on each half of the
    tokens the table and the gate fit on the other half predict it better with the gate;
    and that held-out gain, nats a token (two-fold, as `choose_weights`: each fold's
    table is refit on its half, so the held-out half judges both alike)."""
    rnn, ngram, bucket = parts
    half = len(rnn) // 2
    if not half:
        return None, 0.0

    def table_of(r: Floats, n: Floats, b: np.ndarray[Any, Any]) -> Floats:
        w = fit_mixing_weight(r, n)
        return fit_bucket_weights(r, n, b, order, w) if buckets else np.full(order * KID_BINS, w)

    gain = 0.0
    for fit_on, score_on in ((slice(0, half), slice(half, None)),
                             (slice(half, None), slice(0, half))):  # fmt: skip
        fit = rnn[fit_on], ngram[fit_on], bucket[fit_on]
        table = table_of(*fit)
        gate = fit_gate(fit, phi[fit_on], table, steps)
        r, n, b = rnn[score_on], ngram[score_on], bucket[score_on]
        gain += float(mix_logprobs(r, n, gate_weights(gate, b, phi[score_on])).sum())
        gain -= float(mix_logprobs(r, n, table[b]).sum())
    gain /= len(rnn)
    if gain <= 0:
        return None, gain
    return fit_gate(parts, phi, table, steps), gain


def perplexities(
    parts: Components,
    weight: float,
    bucket_weights: Floats | None = None,
    gated: Floats | None = None,
) -> dict[str, float | None]:
    """Perplexity of the RNN alone, the n-gram alone and the mixture at `weight` (and,
    with `bucket_weights`, `mixture` at those, `mixture_one_weight` at `weight`; with
    `gated`, λ of every token from a gate, `mixture` at those, `mixture_table` at the
    table's)."""
    rnn, ngram, bucket = parts
    if not len(rnn):
        return {"tokens": 0, "rnn": None, "ngram": None, "mixture": None}
    single = math.exp(-float(np.mean(mix_logprobs(rnn, ngram, weight))))
    out: dict[str, float | None] = {
        "tokens": len(rnn),
        "rnn": math.exp(-float(np.mean(rnn))),
        "ngram": math.exp(-float(np.mean(ngram))),
        "mixture": single,
    }
    if bucket_weights is not None:
        out["mixture"] = math.exp(-float(np.mean(mix_logprobs(rnn, ngram, bucket_weights[bucket]))))
        out["mixture_one_weight"] = single
    if gated is not None:
        out["mixture_table"] = out["mixture"]
        out["mixture"] = math.exp(-float(np.mean(mix_logprobs(rnn, ngram, gated))))
    return out


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    return a.kind == b.kind and token_words(a) == token_words(b)


def build_ngram(
    tokenizer: Tokenizer,
    corpus: Path | None,
    mode: str,
    order: int,
    arpa: Path | None = None,
    note: Any = None,
) -> tuple[NgramModel, dict[str, Any]]:
    """Estimate an n-gram of `order` from the corpus's training split, or import `arpa`."""
    if arpa is not None:
        t0 = time.monotonic()
        ngram, report = import_arpa(arpa, tokenizer, start_token(mode))
        return ngram, {"source": "arpa", "arpa": report, "seconds": round(time.monotonic() - t0, 2)}
    if corpus is None:
        raise RnnlmError("an n-gram needs a corpus (--corpus) or an ARPA file (--arpa)")
    if not same_vocabulary(load_corpus_tokenizer(corpus), tokenizer):
        raise RnnlmError(f"{corpus}: its vocabulary is not the model's; use the model's corpus")
    train = TokenSplit(corpus, "train")
    ngram, info = estimate(
        train.tokens, np.asarray(train.offsets), order, tokenizer.vocab_size,
        start_token(mode), fallback_note=note,
    )  # fmt: skip
    return ngram, {"source": "estimated", **info.to_dict()}


def attach_ngram(
    directory: Path,
    ngram: NgramModel,
    info: dict[str, Any],
    corpus: Path | None = None,
    weight: float | None = None,
    max_tokens: int | None = None,
    metrics: dict[str, Any] | None = None,
    match_len: int = MAX_LEN,
) -> dict[str, Any]:
    """Put `ngram` into the checkpoint at `directory`, with λ fit on the corpus's
    validation split (or `weight` as given); with a corpus and `match_len` > 0, the
    match model of its training split too, μ fit on the validation split over the
    mixture (training/match_fit.py; left out where it does not pay). Perplexities on
    valid and test recorded (the model's as `test_ppl`; each part's beside it), with
    `metrics` added to config.json's in the same write."""
    ck = load_checkpoint(directory)
    splits = {}
    if corpus is not None:
        if not same_vocabulary(load_corpus_tokenizer(corpus), ck.tokenizer):
            raise RnnlmError(f"{corpus}: its vocabulary is not the model's")
        splits = {s: TokenSplit(corpus, s) for s in ("valid", "test")}
    # A gate is fit where λ is, for a vocabulary small enough (models/gate.py).
    gating = (
        weight is None
        and "valid" in splits
        and ck.tokenizer.vocab_size <= GATE_MAX_VOCAB
        and not ck.model.config.residual
    )
    splits = {name: split for name, split in splits.items() if len(split)}
    scored: dict[str, tuple[Components, Floats | None]] = {}
    if "valid" in splits:
        scored["valid"] = components_and_features(ck, ngram, splits["valid"], max_tokens, gating)
    fitted, buckets = "given", None
    if weight is None:
        if "valid" in scored:
            weight, buckets = choose_weights(*scored["valid"][0], ngram.order)
            fitted = "validation"
        else:
            weight, fitted = DEFAULT_WEIGHT, "default (no validation text)"
    table = buckets if buckets is not None else np.full(ngram.buckets(), weight)
    gate, gain = None, None
    if gating and "valid" in scored:
        parts, phi_valid = scored["valid"]
        assert phi_valid is not None
        gate, gain = choose_gate(parts, phi_valid, ngram.order, table, buckets is not None)
    if "test" in splits:  # φ only where a gate was kept (the whole distribution: seconds)
        scored["test"] = components_and_features(ck, ngram, splits["test"], None, gate is not None)
    scores = {name: parts for name, (parts, _) in scored.items()}
    # λ of every scored token: the gate's, or the table's.
    lams: dict[str, Floats] = {}
    for name, (parts, phi) in scored.items():
        if gate is None:
            lams[name] = table[parts[2]]
        else:
            assert phi is not None  # scored with φ where a gate was fit
            lams[name] = gate_weights(gate, parts[2], phi)
    report = {
        **info,
        "lambda": weight,
        "lambda_from": fitted,
        "lambda_buckets": None if buckets is None else [float(b) for b in buckets],
        "lambda_gate": None if gate is None else gate.to_dict(),
        # nats a token the gate gained over the table on held-out validation text
        "gate_gain": gain,
        "perplexity": {
            name: perplexities(s, weight, buckets, None if gate is None else lams[name])
            for name, s in scores.items()
        },
        "memory_bytes": ngram.nbytes(),
    }
    match, match_report = None, None
    if match_len > 0 and corpus is not None and "valid" in scores:
        start = start_token(ck.mode)
        # Each split's sequences, as component_logprobs scored them.
        seqs = {
            name: [s for c in split_sequences(splits[name], max_tokens if name == "valid" else None)
                   for s in c]
            for name in scores
        }  # fmt: skip
        match = build_match(TokenSplit(corpus, "train"), start, ck.mode, match_len)
        model = {name: mix_logprobs(p[0], p[1], lams[name]) for name, p in scores.items()}
        fitted_match, match_report = fit_match(match, seqs["valid"], model["valid"], start)
        for name in scores:
            if fitted_match is not None:
                lp = test_logprobs(fitted_match, seqs[name], model[name], start)
                report["perplexity"][name]["with_match"] = math.exp(-float(np.mean(lp)))
        match = fitted_match
        report["match"] = match_report
    extra = _extra_config(directory)
    recorded = extra.setdefault("metrics", {})
    recorded |= metrics or {}
    if "test" in report["perplexity"]:
        test = report["perplexity"]["test"]
        recorded |= {
            "test_ppl": test.get("with_match", test["mixture"]),
            "test_ppl_rnn": test["rnn"],
            "test_ppl_ngram": test["ngram"],
            "test_ppl_mixture": test["mixture"],
        }
    if "valid" in report["perplexity"]:
        recorded["valid_ppl_mixture"] = report["perplexity"]["valid"]["mixture"]
    ngram_info = {k: v for k, v in report.items() if k != "match"}
    save_checkpoint(directory, ck.model, ck.tokenizer, ngram, ngram_info, match, match_report,
                    **extra)  # fmt: skip
    return report


def refuse_residual(ck: Checkpoint, what: str) -> None:
    """A residual model's n-gram is part of it: its logits correct that n-gram's."""
    if ck.model.config.residual:
        raise RnnlmError(
            f"{ck.path}: a residual model was trained over its own n-gram, which cannot be "
            f"{what}: its RNN learnt that n-gram's mistakes (train again to change it)"
        )


def _extra_config(directory: Path) -> dict[str, Any]:
    """config.json's sections other than those a save writes itself."""
    own = ("format_version", "model", "tokenizer", "weights_sha256", "ngram", "match")
    return {k: v for k, v in read_config(directory).items() if k not in own}


def detach_ngram(directory: Path) -> bool:
    """Remove the n-gram from a checkpoint; whether it had one."""
    ck = load_checkpoint(directory)
    if ck.ngram is None:
        return False
    refuse_residual(ck, "removed")
    extra = _extra_config(directory)
    metrics = extra.get("metrics", {})
    if "test_ppl_rnn" in metrics:  # the model's test perplexity is the RNN's again
        metrics["test_ppl"] = metrics["test_ppl_rnn"]
    for key in ("test_ppl_rnn", "test_ppl_ngram", "test_ppl_mixture", "valid_ppl_mixture"):
        metrics.pop(key, None)
    save_checkpoint(directory, ck.model, ck.tokenizer, **extra)
    return True

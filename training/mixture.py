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
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rnnlm.models.checkpoint import (
    Checkpoint,
    load_checkpoint,
    read_config,
    save_checkpoint,
    start_token,
)
from rnnlm.models.engine import Engine
from rnnlm.models.errors import RnnlmError
from rnnlm.models.match import MAX_LEN
from rnnlm.models.ngram import KID_BINS, NgramModel, mix_logprobs
from rnnlm.models.tokenizers import Tokenizer
from rnnlm.models.weights import DEFAULT_WEIGHT, fit_mixing_weight
from rnnlm.training.arpa import import_arpa, token_words
from rnnlm.training.corpus import TokenSplit, load_corpus_tokenizer
from rnnlm.training.match_fit import build_match, fit_match, model_logprobs, test_logprobs
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


def component_logprobs(
    checkpoint: Checkpoint, ngram: NgramModel, split: TokenSplit, max_tokens: int | None = None
) -> Components:
    """Every token's ln P_rnn, ln P_ngram and mixing bucket over a split, as the engine
    scores it."""
    mixed = Checkpoint(checkpoint.path, checkpoint.model, checkpoint.tokenizer,
                       checkpoint.config, ngram, DEFAULT_WEIGHT)  # fmt: skip
    engine = Engine(mixed)
    rnn: list[float] = []
    ng: list[float] = []
    buckets: list[int] = []
    for seqs in split_sequences(split, max_tokens):
        for r, n, b in engine.score_components(seqs):
            rnn.extend(r)
            ng.extend(n)
            buckets.extend(b)
    return np.array(rnn), np.array(ng), np.array(buckets, dtype=np.int64)


def perplexities(
    parts: Components, weight: float, bucket_weights: Floats | None = None
) -> dict[str, float | None]:
    """Perplexity of the RNN alone, the n-gram alone and the mixture at `weight` (and,
    with `bucket_weights`, `mixture` at those, `mixture_one_weight` at `weight`)."""
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
    scores = {
        name: component_logprobs(ck, ngram, split, max_tokens if name == "valid" else None)
        for name, split in splits.items()
        if len(split)
    }
    fitted, buckets = "given", None
    if weight is None:
        if "valid" in scores:
            weight, buckets = choose_weights(*scores["valid"], ngram.order)
            fitted = "validation"
        else:
            weight, fitted = DEFAULT_WEIGHT, "default (no validation text)"
    report = {
        **info,
        "lambda": weight,
        "lambda_from": fitted,
        "lambda_buckets": None if buckets is None else [float(b) for b in buckets],
        "perplexity": {name: perplexities(s, weight, buckets) for name, s in scores.items()},
        "memory_bytes": ngram.nbytes(),
    }
    match, match_report = None, None
    if match_len > 0 and corpus is not None and "valid" in scores:
        start = start_token(ck.mode)
        table = buckets if buckets is not None else np.full(ngram.buckets(), weight)
        # Each split's sequences, as component_logprobs scored them.
        seqs = {
            name: [s for c in split_sequences(splits[name], max_tokens if name == "valid" else None)
                   for s in c]
            for name in scores
        }  # fmt: skip
        match = build_match(TokenSplit(corpus, "train"), start, ck.mode, match_len)
        model = {name: model_logprobs(parts, table) for name, parts in scores.items()}
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

"""`rnnlm eval`: how good a model is on a text file, one sequence per line.

For a model with an n-gram, the figures are the mixture's (the model's own
probabilities), and `perplexity_rnn` / `perplexity_ngram` give each part alone.

Two regimes. Teacher forcing, which training optimises: every prediction is
conditioned on the true previous tokens, and the file's perplexity says how
well the model predicts real text. Free running, which is how the model is
used to generate: it is fed its own samples, so its mistakes become its
context. `--free-running N` samples N sequences from `<bos>` at temperature 1
(the model's own distribution) and compares them with the file: how often they
end with `<eos>` before the length cap, their mean length, and how often a
4-gram repeats earlier in the same sequence (the loops a model falls into).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rnnlm.models.adapt import DEFAULT_CACHE, DEFAULT_LR, Adaptation, score_adapting
from rnnlm.models.batch import sample
from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.errors import RnnlmError
from rnnlm.models.sampling import SampleParams
from rnnlm.models.tokenizers import EOS


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise RnnlmError(f"{path}: no such file")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise RnnlmError(f"{path}: not UTF-8 ({e.reason})") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise RnnlmError(f"{path}: no text to evaluate")
    return lines


def evaluate_file(
    model_dir: Path,
    path: Path,
    device: str = "cpu",
    free_running: int = 0,
    max_tokens: int | None = None,
    seed: int = 0,
    adapt: Adaptation | None = None,
) -> dict[str, Any]:
    """Score every non-empty line as `<bos> ... <eos>`, the way the corpus builder splits.

    `free_running` > 0 adds that many samples' statistics (`free_running_stats`).
    `adapt`: the lines scored again in order, adapting (models/adapt.py), as `adapted`.
    """
    lines = read_lines(path)
    engine = Engine(load_checkpoint(model_dir, device=device))
    out: dict[str, Any] = {"model": str(model_dir), "input": str(path)}
    out.update(static_figures(engine, lines))
    tokens, chars = out["tokens"], out["characters"]
    if engine.match is not None:
        # The model is the match model over the mixture; the mixture alone, again.
        plain = Engine(dataclasses.replace(engine.checkpoint, match=None))
        nll_plain = -static_figures(plain, lines)["logprob"]
        out["match"] = {
            "max_len": engine.match.max_len,
            "perplexity_without": math.exp(nll_plain / tokens),
            "bits_per_character_without": nll_plain / chars / math.log(2),
        }
    if adapt is not None:
        out["adapted"] = adapted_figures(engine, lines, adapt, chars)
    if free_running:
        out["free_running"] = free_running_stats(engine, lines, free_running, max_tokens, seed)
    return out


def static_figures(engine: Engine, lines: list[str]) -> dict[str, Any]:
    """The lines' figures, each line scored alone as `<bos> ... <eos>`: the model's own
    (with an n-gram, the mixture's) and, with an n-gram, each part's on the same tokens."""
    nll = nll_backward = nll_rnn = nll_ngram = 0.0
    tokens = unk = chars = 0
    for start in range(0, len(lines), 1024):
        for r in engine.score_batch(lines[start : start + 1024]):
            nll -= r.logprob
            nll_backward -= r.backward_logprob or 0.0
            nll_rnn -= r.rnn_logprob or 0.0
            nll_ngram -= r.ngram_logprob or 0.0
            tokens += r.num_tokens
            unk += r.oov_count
            chars += len(r.text) + 1  # the end of the line counts as a character
    out: dict[str, Any] = {
        "sequences": len(lines),
        "tokens": tokens,  # <eos> included
        "characters": chars,  # newline included
        "unk_count": unk,
        "logprob": -nll,
        "perplexity": math.exp(nll / tokens),
        "bits_per_token": nll / tokens / math.log(2),
        "bits_per_character": nll / chars / math.log(2),
    }
    if engine.bidirectional:
        out["perplexity_backward"] = math.exp(nll_backward / tokens)
    if engine.ngram is not None:
        # The model is the mixture; each of its parts alone, on the same tokens.
        out["ngram"] = {
            "order": engine.ngram.order,
            "lambda": engine.mix_weight,
            "bucket_weights": engine.checkpoint.mix_buckets is not None,
            "gate": engine.mix_gate is not None,
        }
        for part, part_nll in (("rnn", nll_rnn), ("ngram", nll_ngram)):
            out[f"perplexity_{part}"] = math.exp(part_nll / tokens)
            out[f"bits_per_character_{part}"] = part_nll / chars / math.log(2)
    return out


def adapted_figures(
    engine: Engine, lines: list[str], adapt: Adaptation, chars: int
) -> dict[str, Any]:
    """The file's figures when its lines are read in order as one document, the model
    adapting after each: a row of its own, never mixed into the static figures."""
    results = score_adapting(engine, lines, adapt=adapt)
    nll = -sum(r.logprob for r in results)
    tokens = sum(r.num_tokens for r in results)
    out: dict[str, Any] = {
        "lr": adapt.lr,
        "decay": adapt.decay,
        "cache": adapt.cache,
        "logprob": -nll,
        "perplexity": math.exp(nll / tokens),
        "bits_per_token": nll / tokens / math.log(2),
        "bits_per_character": nll / chars / math.log(2),
    }
    if engine.ngram is not None:
        rnn = -sum(r.rnn_logprob or 0.0 for r in results)
        out["perplexity_rnn"] = math.exp(rnn / tokens)
    return out


def repeated_ngrams(seqs: Sequence[Sequence[int]], n: int = 4) -> float | None:
    """The fraction of n-grams that already occurred earlier in their own sequence."""
    total = repeated = 0
    for s in seqs:
        seen: set[tuple[int, ...]] = set()
        for i in range(len(s) - n + 1):
            gram = tuple(s[i : i + n])
            repeated += gram in seen
            seen.add(gram)
            total += 1
    return repeated / total if total else None


def free_running_stats(
    engine: Engine, lines: list[str], n: int, max_tokens: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Sample `n` sequences (seeds seed..seed+n-1) and compare them with `lines`.

    Lengths count tokens without `<eos>`. `max_tokens` defaults to twice the
    longest line. `perplexity` is that of the samples under the model itself:
    at temperature 1 it estimates the model's entropy per token, and a model
    whose own text surprises it much less than real text does (the
    teacher-forced perplexity) is more certain than it has reason to be.
    """
    reference = [engine.tokenizer.encode(line) for line in lines]
    cap = max_tokens or 2 * max(len(r) for r in reference) + 1
    params = SampleParams(max_tokens=cap, temperature=1.0, seed=seed, logprobs=True)
    samples = sample(engine, "", params, n=n)
    ids = [[t.id for t in s.tokens or [] if t.id != EOS] for s in samples]
    scored = sum(s.num_tokens for s in samples)
    return {
        "samples": n,
        "seed": seed,
        "max_tokens": cap,
        "ended_with_eos": sum(s.finish_reason == "eos" for s in samples) / n,
        "mean_tokens": sum(len(x) for x in ids) / n,
        "input_mean_tokens": sum(len(r) for r in reference) / len(reference),
        "repeated_4grams": repeated_ngrams(ids),
        "input_repeated_4grams": repeated_ngrams(reference),
        "perplexity": math.exp(-sum(s.logprob for s in samples) / scored) if scored else None,
    }


def eval_command(args: argparse.Namespace) -> None:
    result = evaluate_file(
        Path(args.model),
        Path(args.input),
        args.device,
        free_running=args.free_running,
        max_tokens=args.max_tokens,
        seed=args.seed,
        adapt=Adaptation(
            DEFAULT_LR if args.adapt_lr is None else args.adapt_lr,
            args.adapt_decay,
            DEFAULT_CACHE if args.adapt_cache is None else args.adapt_cache,
        )
        if args.adapt
        else None,
    )
    print(json.dumps(result, indent=2))

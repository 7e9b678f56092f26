"""`rnnlm score` and `rnnlm sample`: the engine, driven from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from rnnlm.models.batch import sample
from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.errors import RnnlmError
from rnnlm.models.sampling import SampleParams


def _texts(args: argparse.Namespace) -> Iterator[str]:
    yield from args.texts
    if args.input:
        if args.input == "-":
            for line in sys.stdin:
                yield line.rstrip("\n")
            return
        path = Path(args.input)
        if not path.is_file():
            raise RnnlmError(f"{path}: no such file")
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    yield line.rstrip("\n")
        except UnicodeDecodeError as e:
            raise RnnlmError(f"{path}: not UTF-8 ({e.reason})") from None


def score_command(args: argparse.Namespace) -> None:
    if not args.texts and not args.input:
        raise RnnlmError("nothing to score: give TEXT arguments or --input FILE")
    engine = Engine(load_checkpoint(args.model, device=args.device))
    batch: list[str] = []

    def flush() -> None:
        for r in engine.score_batch(batch, bos=args.bos, eos=args.eos, per_token=args.per_token):
            row = {
                "text": r.text,
                "logprob": r.logprob,
                "log10prob": r.log10prob,
                "num_tokens": r.num_tokens,
                "perplexity": r.perplexity,
                "oov_count": r.oov_count,
            }
            if r.rnn_logprob is not None:  # models with an n-gram: each component alone
                row["rnn_logprob"] = r.rnn_logprob
                row["ngram_logprob"] = r.ngram_logprob
            if r.backward_logprob is not None:  # bidirectional models only
                row["backward_logprob"] = r.backward_logprob
                row["average_logprob"] = r.average_logprob
            if r.tokens is not None:
                row["tokens"] = [{"token": t.token, "logprob": t.logprob} for t in r.tokens]
            print(json.dumps(row, ensure_ascii=False))
        batch.clear()

    for text in _texts(args):
        batch.append(text)
        if len(batch) >= 256:
            flush()
    flush()


def sample_command(args: argparse.Namespace) -> None:
    try:
        params = SampleParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            seed=args.seed,
            stop=args.stop,
        )
    except ValueError as e:
        raise RnnlmError(str(e)) from None
    engine = Engine(load_checkpoint(args.model, device=args.device))
    for s in sample(engine, args.prompt, params, n=args.n):
        if args.json:
            row = {
                "text": s.text,
                "finish_reason": s.finish_reason,
                "num_tokens": s.num_tokens,
                "logprob": s.logprob,
                "seed": s.seed,
            }
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(args.prompt + s.text)

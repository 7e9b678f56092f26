"""`rnnlm ngram estimate | import | export | remove`: the n-gram inside a model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rnnlm.models.checkpoint import load_checkpoint, read_config, start_token
from rnnlm.models.errors import RnnlmError
from rnnlm.training.arpa import token_words, write_arpa
from rnnlm.training.config import default_ngram_order
from rnnlm.training.corpus import load_corpus_tokenizer, read_corpus_meta
from rnnlm.training.mixture import attach_ngram, build_ngram, detach_ngram, refuse_residual


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def ngram_command(args: argparse.Namespace) -> None:
    if args.action == "estimate":
        corpus = Path(args.corpus)
        kind = read_corpus_meta(corpus)["tokenizer"]["kind"]
        order = args.order or default_ngram_order(kind)
        if args.arpa:
            tok = load_corpus_tokenizer(corpus)
            ngram, info = build_ngram(tok, corpus, "sentence", order, note=_note)
            out = write_arpa(ngram, token_words(tok), Path(args.arpa))
            print(json.dumps({**info, "arpa": out}, indent=2))
            return
        model = Path(args.model)
        ck = load_checkpoint(model)
        refuse_residual(ck, "replaced")
        ngram, info = build_ngram(ck.tokenizer, corpus, ck.mode, order, note=_note)
        report = attach_ngram(model, ngram, info, corpus, args.weight)
        print(json.dumps(report, indent=2))
    elif args.action == "import":
        model = Path(args.model)
        ck = load_checkpoint(model)
        refuse_residual(ck, "replaced")
        ngram, info = build_ngram(ck.tokenizer, None, ck.mode, 0, Path(args.arpa))
        arpa = info["arpa"]
        _note(
            f"ngram import: {arpa['order']}-gram, {arpa['unknown_words']} word(s) the model "
            f"lacks (their n-grams dropped: {arpa['dropped_ngrams']}), "
            f"{arpa['tokens_scored_as_unk']} model token(s) the file lacks (scored as <unk>), "
            f"{sum(arpa['filled_ngrams'])} n-gram(s) filled in; renormalised by at most "
            f"{arpa['max_abs_log10_renormalisation']:.2g} in log10"
        )
        fit_on = Path(args.corpus) if args.corpus else None
        report = attach_ngram(model, ngram, info, fit_on, args.weight)
        print(json.dumps(report, indent=2))
    elif args.action == "export":
        ck = load_checkpoint(Path(args.model))
        if ck.ngram is None:
            raise RnnlmError(f"{args.model}: this model has no n-gram (see `rnnlm ngram estimate`)")
        if ck.ngram.start_id != start_token("sentence"):
            raise RnnlmError(
                f"{args.model}: a stream-mode model's n-gram starts each text after </s>; "
                "ARPA's <s> cannot stand for that, so it has no ARPA form"
            )
        out = write_arpa(ck.ngram, token_words(ck.tokenizer), Path(args.out))
        print(json.dumps({**out, "lambda": read_config(Path(args.model))["ngram"]["lambda"]}))
    elif args.action == "remove":
        had = detach_ngram(Path(args.model))
        _note(f"ngram remove: {'removed' if had else 'there was no n-gram in'} {args.model}")

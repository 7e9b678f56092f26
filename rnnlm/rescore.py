"""`rnnlm rescore`: choose each utterance's hypothesis from an n-best list with the model.

A hypothesis' total, in natural log:

    total_logprob = acoustic_logprob + lm_weight · lm_logprob + word_bonus · words

where `lm_logprob` is the model's (the mixture's, with `<s>` and `</s>`), computed by
`LanguageModel.score_batch`: the numbers `rnnlm score` and `POST /score` give. With
`--tune REFS` both weights are grid-searched for the lowest word error rate against
the reference transcripts; WER before (the best acoustic score), after and the oracle
(the best hypothesis of each list) are printed. The n-best file is read twice then
(once to score, once to write the choices), one utterance at a time, so its size is
never held in memory; only each hypothesis' numbers are.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from rnnlm.lm import LanguageModel
from rnnlm.nbest import NbestError, Utterance, read_costs, read_nbest, read_references

Floats = np.ndarray[Any, np.dtype[np.float64]]
LN10 = math.log(10)
SCORE_BATCH = 256  # hypotheses scored together
WEIGHTS = [round(0.1 * i, 2) for i in range(0, 31)]  # lm_weight grid, 0 to 3
# word_bonus grid, -4 to 8, nearest 0 first: of equal WERs the tuning keeps the first. A
# word costs about 5 nats of LM log-probability at weight 1, so the best bonus grows with
# the weight; the grid reaches past what weight 3 wants on fortunes' n-best lists.
BONUSES = sorted((round(0.25 * i, 2) for i in range(-16, 33)), key=abs)


@dataclass
class Scored:
    """One utterance's hypotheses as numbers: acoustic and LM log-probs, words, errors."""

    id: str
    acoustic: Floats  # (H,) natural log
    lm: Floats  # (H,) natural log
    words: Floats  # (H,)
    errors: Floats | None = None  # (H,) word errors against the reference
    ref_words: int = 0


def _batched(utts: Iterator[Utterance], size: int) -> Iterator[list[Utterance]]:
    batch: list[Utterance] = []
    n = 0
    for u in utts:
        batch.append(u)
        n += len(u.hypotheses)
        if n >= size:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def score_utterances(
    lm: LanguageModel, utts: Iterator[Utterance], progress: bool = False
) -> Iterator[tuple[Utterance, Scored]]:
    """Each utterance with its hypotheses' LM log-probs (natural log), scored in batches."""
    bar = tqdm(unit="hyp", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for batch in _batched(utts, SCORE_BATCH):
        texts = [h.text for u in batch for h in u.hypotheses]
        log10s = lm.score_batch(texts)
        bar.update(len(texts))
        at = 0
        for u in batch:
            n = len(u.hypotheses)
            yield (
                u,
                Scored(
                    u.id,
                    np.array([h.acoustic_logprob for h in u.hypotheses], np.float64),
                    np.array(log10s[at : at + n], np.float64) * LN10,
                    np.array([len(h.text.split()) for h in u.hypotheses], np.float64),
                ),
            )
            at += n
    bar.close()


def choose(s: Scored, lm_weight: float, word_bonus: float) -> int:
    """The index of the hypothesis with the highest total (the first, on a tie)."""
    return int(np.argmax(s.acoustic + lm_weight * s.lm + word_bonus * s.words))


def word_errors(reference: str, hypothesis: str) -> int:
    """Substitutions + deletions + insertions (jiwer's alignment)."""
    import jiwer

    ref, hyp = reference.split(), hypothesis.split()
    if not ref:
        return len(hyp)
    if not hyp:
        return len(ref)
    out = jiwer.process_words(reference, hypothesis)
    return int(out.substitutions + out.deletions + out.insertions)


def wer(scored: Sequence[Scored], picks: Sequence[int]) -> float:
    errors = sum(
        int(s.errors[p]) for s, p in zip(scored, picks, strict=True) if s.errors is not None
    )
    words = sum(s.ref_words for s in scored)
    return errors / max(1, words)


def tune(scored: Sequence[Scored]) -> tuple[float, float, float]:
    """(lm_weight, word_bonus, WER) of the grid's best pair (on a tie, the smallest weight,
    then the bonus nearest 0, so the choice is stable)."""
    best = (math.inf, 0.0, 0.0)
    for w in WEIGHTS:
        for b in BONUSES:
            e = wer(scored, [choose(s, w, b) for s in scored])
            if e < best[0] - 1e-12:
                best = (e, w, b)
    return best[1], best[2], best[0]


def _open_out(path: str | None) -> TextIO:
    return sys.stdout if path in (None, "-") else open(path, "w", encoding="utf-8")  # noqa: SIM115


def rescore_command(args: argparse.Namespace) -> None:
    nbest = Path(args.nbest)
    costs = read_costs(Path(args.acoustic_costs)) if args.acoustic_costs else None
    if costs is not None and args.format != "kaldi":
        raise NbestError("--acoustic-costs goes with --format kaldi (the others carry scores)")
    refs = read_references(Path(args.tune), args.format) if args.tune else None
    lm = LanguageModel(args.model, device=args.device)

    def utterances() -> Iterator[Utterance]:
        return read_nbest(nbest, args.format, costs, args.beam_size)

    scores_out = open(args.scores, "w", encoding="utf-8") if args.scores else None  # noqa: SIM115
    if scores_out is not None:
        scores_out.write("id\tlm_log10prob\tlm_logprob\tacoustic_logprob\twords\n")
    all_scored: list[Scored] = []
    chosen: list[tuple[str, str]] = []
    try:
        for u, s in score_utterances(lm, utterances(), progress=not args.no_progress):
            if scores_out is not None:
                for h, a, m, n in zip(u.hypotheses, s.acoustic, s.lm, s.words, strict=True):
                    scores_out.write(f"{h.id}\t{m / LN10:.6f}\t{m:.6f}\t{a:.6f}\t{int(n)}\n")
            if refs is not None:
                if u.id not in refs:
                    raise NbestError(f"{args.tune}: no reference for utterance {u.id!r}")
                ref = refs[u.id]
                s.errors = np.array([word_errors(ref, h.text) for h in u.hypotheses], np.float64)
                s.ref_words = len(ref.split())
                all_scored.append(s)
            else:  # the weights are given: choose as we go
                pick = choose(s, args.lm_weight, args.word_bonus)
                chosen.append((u.id, u.hypotheses[pick].text))
    finally:
        if scores_out is not None:
            scores_out.close()
    report: dict[str, object] = {}
    weight, bonus = args.lm_weight, args.word_bonus
    if refs is not None:
        weight, bonus, tuned = tune(all_scored)
        report = {
            "utterances": len(all_scored),
            "hypotheses": int(sum(len(s.lm) for s in all_scored)),
            "reference_words": sum(s.ref_words for s in all_scored),
            "wer_before": wer(all_scored, [int(np.argmax(s.acoustic)) for s in all_scored]),
            "wer_after": tuned,
            "wer_oracle": wer(
                all_scored, [int(np.argmin(s.errors)) for s in all_scored if s.errors is not None]
            ),  # fmt: skip
            "lm_weight": weight,
            "word_bonus": bonus,
            "wer_given_weights": wer(
                all_scored, [choose(s, args.lm_weight, args.word_bonus) for s in all_scored]
            ),
        }
        # The choices with the tuned weights: the n-best file once more, numbers reused.
        by_id = {s.id: s for s in all_scored}
        chosen = [
            (u.id, u.hypotheses[choose(by_id[u.id], weight, bonus)].text) for u in utterances()
        ]
    out = _open_out(args.out)
    try:
        for utt, text in chosen:
            out.write(f"{utt} {text}\n" if text else f"{utt}\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if report:
        where = sys.stderr if args.out in (None, "-") else sys.stdout
        print(json.dumps(report, indent=2), file=where)

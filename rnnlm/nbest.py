"""N-best lists in, one hypothesis per utterance out: the formats `rnnlm rescore` reads.

Every score here is a natural-log probability (`*_logprob`) unless its name says
`log10`; a Kaldi *cost* is its negative (−ln p), as Kaldi writes them.

    kaldi   one hypothesis a line, `<utt>-<n> word word ...` (the n-th of utterance <utt>);
            acoustic scores, optionally, in a second file of `<utt>-<n> <cost>` lines
    nemo    NeMo's TSV: `text<TAB>score` (score: the acoustic log-probability), a fixed
            number of lines (`beam_size`) per utterance, utterances in order
    jsonl   one hypothesis a line: {"id": "<utt>", "text": "...", "acoustic_logprob": -4.2}
            (`acoustic_logprob` optional); an utterance's lines are consecutive

Readers are generators of `Utterance`s, one at a time, so a file of any size streams;
a malformed line raises `NbestError` naming the file and the line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rnnlm.models.errors import RnnlmError

FORMATS = ("kaldi", "nemo", "jsonl")


class NbestError(RnnlmError):
    """A malformed n-best or reference file: the message names the file and the line."""


@dataclass
class Hypothesis:
    id: str  # kaldi: <utt>-<n>; otherwise <utt>-<n> made up from the order
    text: str
    acoustic_logprob: float = 0.0


@dataclass
class Utterance:
    id: str
    hypotheses: list[Hypothesis] = field(default_factory=list)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                yield number, line.rstrip("\n").rstrip("\r")
    except UnicodeDecodeError as e:
        raise NbestError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise NbestError(f"{path}: cannot be read ({e.strerror})") from None


def _split_kaldi_id(path: Path, number: int, key: str) -> str:
    utt, dash, n = key.rpartition("-")
    if not dash or not utt or not n.isdigit():
        raise NbestError(
            f"{path}:{number}: expected '<utt>-<n> words ...' (a hypothesis id ending in "
            f"'-' and its number), got {key!r}"
        )
    return utt


def _float(path: Path, number: int, value: str, what: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise NbestError(f"{path}:{number}: {what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise NbestError(f"{path}:{number}: {what} must be finite, got {value!r}")
    return x


def read_costs(path: Path) -> dict[str, float]:
    """Kaldi acoustic costs, `<utt>-<n> <cost>` per line: {id: acoustic_logprob = −cost}."""
    costs: dict[str, float] = {}
    for number, line in _lines(path):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise NbestError(f"{path}:{number}: expected '<utt>-<n> <cost>', got {line!r}")
        _split_kaldi_id(path, number, parts[0])
        if parts[0] in costs:
            raise NbestError(f"{path}:{number}: {parts[0]!r} appears twice")
        costs[parts[0]] = -_float(path, number, parts[1], "the cost")
    return costs


def read_nbest(
    path: Path, fmt: str, costs: dict[str, float] | None = None, beam_size: int | None = None
) -> Iterator[Utterance]:
    """The utterances of an n-best file, in order (see the module's docstring)."""
    if fmt == "kaldi":
        yield from _read_kaldi(path, costs)
    elif fmt == "nemo":
        if not beam_size or beam_size < 1:
            raise NbestError(f"{path}: NeMo's TSV needs its beam size (lines per utterance)")
        yield from _read_nemo(path, beam_size)
    elif fmt == "jsonl":
        yield from _read_jsonl(path)
    else:
        raise NbestError(f"unknown n-best format {fmt!r} (one of {', '.join(FORMATS)})")


def _grouped(hyps: Iterator[tuple[int, str, Hypothesis]], path: Path) -> Iterator[Utterance]:
    """Consecutive hypotheses of the same utterance, as one; an utterance seen again
    after another began is an error (its lines must be together)."""
    current: Utterance | None = None
    done: set[str] = set()
    for number, utt, hyp in hyps:
        if current is not None and utt != current.id:
            done.add(current.id)
            yield current
            current = None
        if current is None:
            if utt in done:
                raise NbestError(
                    f"{path}:{number}: utterance {utt!r} again, after others: an "
                    "utterance's hypotheses must be on consecutive lines"
                )
            current = Utterance(utt)
        current.hypotheses.append(hyp)
    if current is not None:
        yield current


def _read_kaldi(path: Path, costs: dict[str, float] | None) -> Iterator[Utterance]:
    def hyps() -> Iterator[tuple[int, str, Hypothesis]]:
        for number, line in _lines(path):
            if not line.strip():
                continue
            key, _, text = line.strip().partition(" ")
            utt = _split_kaldi_id(path, number, key)
            acoustic = 0.0
            if costs is not None:
                if key not in costs:
                    raise NbestError(f"{path}:{number}: no acoustic cost for {key!r}")
                acoustic = costs[key]
            yield number, utt, Hypothesis(key, " ".join(text.split()), acoustic)

    yield from _grouped(hyps(), path)


def _read_nemo(path: Path, beam_size: int) -> Iterator[Utterance]:
    def hyps() -> Iterator[tuple[int, str, Hypothesis]]:
        k = 0
        for number, line in _lines(path):
            text, tab, score = line.rpartition("\t")
            if not tab:
                raise NbestError(f"{path}:{number}: expected 'text<TAB>score', got {line!r}")
            utt = str(k // beam_size)
            acoustic = _float(path, number, score, "the score")
            yield number, utt, Hypothesis(f"{utt}-{k % beam_size + 1}", text.strip(), acoustic)
            k += 1
        if k % beam_size:
            raise NbestError(
                f"{path}: {k} lines are not a whole number of utterances of {beam_size}"
            )

    yield from _grouped(hyps(), path)


def _read_jsonl(path: Path) -> Iterator[Utterance]:
    def hyps() -> Iterator[tuple[int, str, Hypothesis]]:
        counts: dict[str, int] = {}
        for number, line in _lines(path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise NbestError(f"{path}:{number}: not JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("id"), str | int):
                raise NbestError(f"{path}:{number}: expected an object with an 'id'")
            if not isinstance(row.get("text"), str):
                raise NbestError(f"{path}:{number}: 'text' must be a string")
            acoustic = row.get("acoustic_logprob", 0.0)
            if isinstance(acoustic, bool) or not isinstance(acoustic, int | float):
                raise NbestError(f"{path}:{number}: 'acoustic_logprob' must be a number")
            utt = str(row["id"])
            counts[utt] = counts.get(utt, 0) + 1
            acoustic = _float(path, number, str(acoustic), "'acoustic_logprob'")
            yield number, utt, Hypothesis(f"{utt}-{counts[utt]}", row["text"], acoustic)

    yield from _grouped(hyps(), path)


def read_references(path: Path, fmt: str) -> dict[str, str]:
    """Reference transcripts: `<utt> words ...` lines (kaldi, jsonl: the utterance's id;
    nemo: one line per utterance, in order, numbered from 0)."""
    refs: dict[str, str] = {}
    for number, line in _lines(path):
        if fmt == "nemo":
            refs[str(len(refs))] = " ".join(line.split())
            continue
        if not line.strip():
            continue
        utt, _, text = line.strip().partition(" ")
        if utt in refs:
            raise NbestError(f"{path}:{number}: utterance {utt!r} appears twice")
        refs[utt] = " ".join(text.split())
    return refs

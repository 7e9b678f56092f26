"""N-gram baselines for the prepared benchmark data, built with KenLM.

Word level: a 5-gram interpolated modified Kneser-Ney model (KenLM `lmplz`,
default settings: Chen & Goodman's three discounts per order estimated from
count-of-counts, no pruning) on OUT/ptb/train.txt, scored with KenLM `query`
on OUT/ptb/{valid,test}.txt. Each line is one sentence: `query` starts it in
the <s> context and scores every token and the closing </s>, so

    PPL = exp(-sum ln p / (tokens + sentences)).

`<unk>` is an ordinary word here, as in the Penn Treebank convention: KenLM
reserves the literal `<unk>` for its own unknown word (and `lmplz` refuses it
in a corpus), so the files' `<unk>` is renamed to UNK_ALIAS before KenLM sees
it. Every test word is then in the model's vocabulary; the script checks that
`query` reports no OOV.

Character level: the same toolkit on OUT/raw/*.txt with characters as tokens
(a space is written SPACE), --char-order (default 10), reported in bits per
character: -sum log2 p / (characters + lines), the end of each line (</s>)
counting as one character. A character never seen in training would be scored
as KenLM's <unk> (its probability counted, not skipped) and is reported.

Tools: bench/build_kenlm.sh builds lmplz and query into bench/.tools/kenlm.
Prints one JSON object (also written to WORK/ngram.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

UNK = "<unk>"
UNK_ALIAS = "UNK"  # the data is lowercased, so no real token can be this
SPACE = "<sp>"
KENLM_SPECIALS = frozenset({"<s>", "</s>", "<unk>"})
DEFAULT_BIN = Path(__file__).resolve().parent / ".tools" / "kenlm" / "bin"
LN10 = math.log(10.0)
_DISCOUNT_RE = re.compile(r"^(\d+) (\d+) D1=(\S+) D2=(\S+) D3\+=(\S+)$")


@dataclass
class Score:
    split: str
    sentences: int
    tokens: int  # words (or characters), without </s>
    predictions: int  # tokens + sentences: every token and every </s>
    oov: int
    log10_prob: float
    ppl: float
    bits_per_token: float
    query_reported_ppl: float
    seconds: float


class Runner:
    """Runs the toolkit's commands, niced, and records them with their wall-clock time."""

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self.log: list[dict[str, Any]] = []

    def __call__(self, argv: Sequence[str], stdin: Path, stdout: Path, stderr: Path) -> float:
        full = (["nice", "-n", str(self.nice)] if self.nice else []) + list(argv)
        start = time.perf_counter()
        with stdin.open("rb") as fin, stdout.open("wb") as fout, stderr.open("wb") as ferr:
            proc = subprocess.run(full, stdin=fin, stdout=fout, stderr=ferr, check=False)
        seconds = time.perf_counter() - start
        command = f"{shlex.join(full)} < {stdin} > {stdout} 2> {stderr}"
        self.log.append({"command": command, "seconds": round(seconds, 3), "rc": proc.returncode})
        if proc.returncode != 0:
            tail = stderr.read_text(errors="replace")[-3000:]
            raise SystemExit(f"ngram: command failed ({proc.returncode}): {command}\n{tail}")
        return seconds


def find_tool(name: str, bin_dir: Path) -> Path:
    candidate = bin_dir / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise SystemExit(
        f"ngram: KenLM's {name} not found in {bin_dir} or on PATH; run bench/build_kenlm.sh first"
    )


def write_lines(path: Path, lines: Iterable[str]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for line in lines:
            fh.write(line + "\n")


def read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def word_view(lines: Sequence[str]) -> list[str]:
    out = []
    for line in lines:
        toks = line.split()
        bad = [t for t in toks if t == UNK_ALIAS or t in KENLM_SPECIALS - {UNK}]
        if bad:
            raise SystemExit(f"ngram: the data holds {bad[0]!r}, which this script reserves")
        out.append(" ".join(UNK_ALIAS if t == UNK else t for t in toks))
    return out


def char_view(lines: Sequence[str], known: set[str] | None) -> list[str]:
    out = []
    for line in lines:
        chars = []
        for c in line:
            if c.isspace() and c != " ":
                raise SystemExit(
                    f"ngram: raw line holds whitespace {c!r}; prepare_data.py collapses it"
                )
            tok = SPACE if c == " " else c
            chars.append(tok if known is None or c in known else UNK)
        out.append(" ".join(chars))
    return out


def parse_discounts(log: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = _DISCOUNT_RE.match(line.strip())
        if m:
            out[m.group(1)] = [float(m.group(3)), float(m.group(4)), float(m.group(5))]
    return out


def parse_query(path: Path, expected_lines: int, split: str, seconds: float) -> Score:
    """Sum query's per-sentence totals; count each token and </s> it scored."""
    total = 0.0
    predictions = 0
    oov = 0
    sentences = 0
    reported = float("nan")
    for line in path.read_text(encoding="utf-8").splitlines():
        if "\tTotal: " in line or line.startswith("Total: "):
            body, _, tail = line.rpartition("Total: ")
            fields = tail.split()
            total += float(fields[0])
            oov += int(fields[2])
            predictions += len(body.split("\t")) - 1 if body else 0
            sentences += 1
        elif line.startswith("Perplexity including OOVs:"):
            reported = float(line.split("\t")[1])
    if sentences != expected_lines:
        raise SystemExit(
            f"ngram: query scored {sentences} sentences, the file has {expected_lines}"
        )
    ln = total * LN10
    return Score(
        split=split,
        sentences=sentences,
        tokens=predictions - sentences,
        predictions=predictions,
        oov=oov,
        log10_prob=round(total, 4),
        ppl=math.exp(-ln / predictions),
        bits_per_token=-ln / math.log(2.0) / predictions,
        query_reported_ppl=reported,
        seconds=round(seconds, 3),
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_and_score(
    name: str,
    order: int,
    views: dict[str, list[str]],
    splits: Sequence[str],
    work: Path,
    lmplz: Path,
    query: Path,
    memory: str,
    run: Runner,
    extra: Callable[[Score], dict[str, Any]],
) -> dict[str, Any]:
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    for split, lines in views.items():
        write_lines(d / f"{split}.txt", lines)
    arpa = d / f"{name}{order}.arpa"
    build_s = run(
        [str(lmplz), "-o", str(order), "-S", memory, "-T", str(d)],
        d / "train.txt",
        arpa,
        d / "lmplz.log",
    )
    results: dict[str, Any] = {}
    for split in splits:
        out = d / f"query.{split}.txt"
        secs = run([str(query), str(arpa)], d / f"{split}.txt", out, d / f"query.{split}.log")
        score = parse_query(out, len(views[split]), split, secs)
        results[split] = {**asdict(score), **extra(score)}
    return {
        "order": order,
        "arpa": str(arpa),
        "arpa_sha256": sha256(arpa),
        "discounts_D1_D2_D3plus": parse_discounts(d / "lmplz.log"),
        "build_seconds": round(build_s, 3),
        "scores": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "data", nargs="?", type=Path, default=Path("data/fortunes"), help="prepare_data.py output"
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="models and logs (default DATA/ngram)"
    )
    parser.add_argument(
        "--kenlm-bin", type=Path, default=DEFAULT_BIN, help="directory of lmplz and query"
    )
    parser.add_argument("--word-order", type=int, default=5)
    parser.add_argument("--char-order", type=int, default=10)
    parser.add_argument("--memory", default="1G", help="lmplz -S (sorting memory)")
    parser.add_argument(
        "--nice", type=int, default=10, help="niceness of the toolkit's processes (0: none)"
    )
    parser.add_argument("--skip-char", action="store_true", help="word level only")
    args = parser.parse_args(argv)

    splits = ("valid", "test")
    for sub in ("ptb", "raw"):
        for split in ("train", *splits):
            if not (args.data / sub / f"{split}.txt").is_file():
                raise SystemExit(
                    f"ngram: {args.data / sub / split}.txt missing; run bench/prepare_data.py first"
                )
    work = args.work or args.data / "ngram"
    work.mkdir(parents=True, exist_ok=True)
    lmplz = find_tool("lmplz", args.kenlm_bin)
    query = find_tool("query", args.kenlm_bin)
    run = Runner(args.nice)
    started = time.perf_counter()

    ptb = {s: read_lines(args.data / "ptb" / f"{s}.txt") for s in ("train", *splits)}
    word = build_and_score(
        "word",
        args.word_order,
        {s: word_view(lines) for s, lines in ptb.items()},
        splits,
        work,
        lmplz,
        query,
        args.memory,
        run,
        lambda sc: {"unk_tokens": sum(line.split().count(UNK) for line in ptb[sc.split])},
    )
    for split in splits:
        if word["scores"][split]["oov"]:
            raise SystemExit("ngram: KenLM reports OOV words in a closed-vocabulary split")

    result: dict[str, Any] = {
        "toolkit": "KenLM 0.3.0 (lmplz: interpolated modified Kneser-Ney; query)",
        "lmplz": str(lmplz),
        "data": str(args.data),
        "convention": "per sentence (line): every token and </s> predicted, <s> only as context",
        "unk_handling": (
            f"PTB <unk> renamed {UNK_ALIAS!r}: an ordinary in-vocabulary word; KenLM OOVs: 0"
        ),
        "word": word,
    }

    if not args.skip_char:
        raw = {s: read_lines(args.data / "raw" / f"{s}.txt") for s in ("train", *splits)}
        known = set("".join(raw["train"]))
        views = {"train": char_view(raw["train"], None)}
        views.update({s: char_view(raw[s], known) for s in splits})
        char = build_and_score(
            "char",
            args.char_order,
            views,
            splits,
            work,
            lmplz,
            query,
            args.memory,
            run,
            lambda sc: {
                "bits_per_char": sc.bits_per_token,
                "chars_including_eol": sc.predictions,
                "unseen_chars": sc.oov,
            },
        )
        char["space_symbol"] = SPACE
        char["eol_counts_as_char"] = True
        result["char"] = char

    result["commands"] = run.log
    result["total_seconds"] = round(time.perf_counter() - started, 3)
    text = json.dumps(result, indent=2)
    (work / "ngram.json").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

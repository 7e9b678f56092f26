"""Deterministic word- and character-level benchmark data from Debian's fortunes.

Reads the plain-text fortune files that the Debian packages `fortunes` and
`fortunes-min` install under /usr/share/games/fortunes (one cookie per block,
blocks separated by a line holding only `%`). It installs nothing: if the files
are missing it says which packages to `apt-get install` and exits with 2.

Cleaning, in this order, for every fortune:
  * bytes are decoded as UTF-8; the few lines that are UTF-8 encoded twice
    (mojibake such as "donÃ¢ÂÂt") are repaired by a latin-1 round trip;
  * terminal overstriking ("_\\bX" underline, "X\\bX" bold, "'\\be" accents)
    keeps the last character written, and other control characters (bells)
    are dropped;
  * text is NFC-normalised, runs of whitespace (tabs, double spaces) become
    one space and every line is stripped; empty lines are dropped.
The file `ascii-art` (drawings, not language) is left out.

Exact and near-exact duplicate fortunes (same lowercased word sequence) are
kept once, the first in file-name order. Each remaining fortune is put into
train, valid or test by a keyed SHA-256 of its text (90/5/5), so all lines of
one fortune share a split and the split does not depend on file order.

Outputs, one sequence (one line of a fortune) per line, line-aligned:
  OUT/raw/{train,valid,test}.txt   cleaned text (for character-level models)
  OUT/ptb/{train,valid,test}.txt   Penn-Treebank style: lowercased, then NFC,
      tokens from the regex \\w+|[^\\w\\s] (rnnlm's word tokenizer), the
      --vocab most frequent training tokens kept (ties alphabetical), every
      other token written as the literal <unk>, tokens joined by one space.
  OUT/summary.json                 the JSON printed on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORTUNE_DIR = Path("/usr/share/games/fortunes")
# fortunes-min ships these three; fortunes (which depends on it) ships the rest.
MIN_FILES = ("fortunes", "literature", "riddles")
EXCLUDED_FILES = frozenset({"ascii-art"})
APT_HINT = "apt-get install -y fortunes fortunes-min"

SPLITS = ("train", "valid", "test")
UNK = "<unk>"
WORD_RE = re.compile(r"\w+|[^\w\s]")  # the same pattern as models/tokenizers.py
_OVERSTRIKE = re.compile(r"[^\n]\x08")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Fortune:
    source: str  # file name under FORTUNE_DIR
    index: int  # position within that file
    lines: tuple[str, ...]  # cleaned, non-empty lines


def fortune_files(directory: Path) -> list[Path]:
    """The cookie text files (not the strfile .dat indexes or .u8 links), sorted."""
    files = [
        p
        for p in sorted(directory.iterdir())
        if p.is_file()
        and not p.is_symlink()
        and p.suffix not in (".dat", ".u8")
        and p.name not in EXCLUDED_FILES
    ]
    return files


def check_installed(directory: Path) -> list[Path]:
    missing = [name for name in MIN_FILES if not (directory / name).is_file()]
    files = fortune_files(directory) if directory.is_dir() else []
    if missing or len(files) <= len(MIN_FILES):
        print(
            f"prepare_data: the fortune texts are not under {directory}.\n"
            f"Install them with:  {APT_HINT}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return files


def fix_mojibake(line: str) -> str:
    """Undo UTF-8 that was decoded as latin-1 and encoded again (at most twice)."""
    for _ in range(2):
        if all(ord(c) < 128 for c in line):
            break
        try:
            fixed = line.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            break
        line = fixed
    return line


def clean_line(line: str) -> str:
    line = fix_mojibake(line)
    while "\x08" in line:
        new = _OVERSTRIKE.sub("", line)
        if new == line:  # a backspace at the start of a line
            new = line.replace("\x08", "")
        line = new
    line = _CONTROL.sub("", line)
    line = unicodedata.normalize("NFC", line)
    return _SPACES.sub(" ", line).strip()


def read_fortunes(files: Iterable[Path]) -> list[Fortune]:
    fortunes: list[Fortune] = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        blocks: list[list[str]] = [[]]
        for raw in text.split("\n"):
            if raw.rstrip("\r") == "%":
                blocks.append([])
            else:
                blocks[-1].append(raw)
        for i, block in enumerate(blocks):
            lines = tuple(c for c in (clean_line(x) for x in block) if c)
            if lines:
                fortunes.append(Fortune(path.name, i, lines))
    return fortunes


def words(text: str) -> list[str]:
    """rnnlm's word tokenizer with lowercase=True: lower, then NFC, then the regex."""
    return WORD_RE.findall(unicodedata.normalize("NFC", text.lower()))


def dedup_key(f: Fortune) -> str:
    return " ".join(w for line in f.lines for w in words(line) if w[0].isalnum() or w[0] == "_")


def assign_split(key: str, seed: str, valid_pct: int, test_pct: int) -> str:
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    if bucket < test_pct:
        return "test"
    if bucket < test_pct + valid_pct:
        return "valid"
    return "train"


def build_vocab(counts: Counter[str], size: int) -> set[str]:
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    return set(ranked[:size])


def write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for line in lines:
            fh.write(line + "\n")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare(
    source: Path, out: Path, vocab_size: int, seed: str, valid_pct: int, test_pct: int
) -> dict[str, Any]:
    files = check_installed(source)
    fortunes = read_fortunes(files)

    seen: set[str] = set()
    unique: list[tuple[str, Fortune]] = []
    for f in fortunes:
        key = dedup_key(f)
        if key in seen:
            continue
        seen.add(key)
        unique.append((key, f))

    raw: dict[str, list[str]] = {s: [] for s in SPLITS}
    n_fortunes: Counter[str] = Counter()
    for key, f in unique:
        split = assign_split(key, seed, valid_pct, test_pct)
        n_fortunes[split] += 1
        raw[split].extend(f.lines)

    tokenized = {s: [words(line) for line in raw[s]] for s in SPLITS}
    counts: Counter[str] = Counter(w for line in tokenized["train"] for w in line)
    vocab = build_vocab(counts, vocab_size)
    ptb = {
        s: [" ".join(w if w in vocab else UNK for w in line) for line in tokenized[s]]
        for s in SPLITS
    }

    for s in SPLITS:
        write_lines(out / "raw" / f"{s}.txt", raw[s])
        write_lines(out / "ptb" / f"{s}.txt", ptb[s])

    train_lines = set(raw["train"])
    train_chars = set("".join(raw["train"]))
    splits: dict[str, Any] = {}
    for s in SPLITS:
        toks = [w for line in tokenized[s] for w in line]
        unk = sum(1 for w in toks if w not in vocab)
        chars = sum(len(line) for line in raw[s])
        splits[s] = {
            "fortunes": n_fortunes[s],
            "sequences": len(raw[s]),
            "tokens": len(toks),
            "tokens_with_eos": len(toks) + len(raw[s]),
            "unk_tokens": unk,
            "unk_rate": round(unk / max(1, len(toks)), 5),
            "oov_types": len({w for w in toks if w not in vocab}),
            "chars": chars,
            "chars_with_eol": chars + len(raw[s]),
            "chars_unseen_in_train": sum(
                1 for line in raw[s] for c in line if c not in train_chars
            ),
            "lines_also_in_train": 0
            if s == "train"
            else sum(1 for line in raw[s] if line in train_lines),
            "ptb_sha256": sha256_file(out / "ptb" / f"{s}.txt"),
            "raw_sha256": sha256_file(out / "raw" / f"{s}.txt"),
        }
    return {
        "source": str(source),
        "files": [p.name for p in files],
        "excluded_files": sorted(EXCLUDED_FILES),
        "fortunes_read": len(fortunes),
        "duplicate_fortunes_dropped": len(fortunes) - len(unique),
        "split_unit": "fortune (keyed sha256 of its lowercased word sequence)",
        "split_pct": {"train": 100 - valid_pct - test_pct, "valid": valid_pct, "test": test_pct},
        "seed": seed,
        "sequence_unit": "one line of a fortune",
        "train_word_types": len(counts),
        "vocab_words_kept": len(vocab),
        "vocab_with_unk": len(vocab) + 1,
        "vocab_with_unk_and_eos": len(vocab) + 2,
        "char_types_train": len(train_chars),
        "splits": splits,
        "out": str(out),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "out", nargs="?", type=Path, default=Path("data/fortunes"), help="output directory"
    )
    parser.add_argument("--source", type=Path, default=FORTUNE_DIR, help="fortune files directory")
    parser.add_argument(
        "--vocab", type=int, default=10000, help="training words kept (besides <unk>)"
    )
    parser.add_argument("--seed", default="rnnlm-fortunes-v1", help="key of the split hash")
    parser.add_argument("--valid-pct", type=int, default=5)
    parser.add_argument("--test-pct", type=int, default=5)
    args = parser.parse_args(argv)
    summary = prepare(args.source, args.out, args.vocab, args.seed, args.valid_pct, args.test_pct)
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    (args.out / "summary.json").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

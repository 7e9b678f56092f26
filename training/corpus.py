"""`rnnlm corpus`: text files -> a tokenised corpus directory that training memory-maps.

    <out>/corpus.json        format, dtype, tokenizer settings, unit
    <out>/stats.json         sequences, tokens, characters, <unk> rate per split
    <out>/vocab.json | spm.model
    <out>/{train,valid,test}.bin   token ids, each sequence followed by <eos>
    <out>/{train,valid,test}.idx   int64 offsets: sequence i is bin[idx[i]:idx[i+1]]

Inputs are streamed twice: once to count (or, for sentencepiece, to copy the
training split to a file) and once to encode, so a corpus larger than RAM
works. The split of each sequence is drawn from a generator seeded by `--seed`,
so the same inputs and seed always give the same corpus.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rnnlm.models.checkpoint import atomic_directory
from rnnlm.models.errors import RnnlmError
from rnnlm.models.tokenizers import (
    EOS,
    SPECIALS,
    UNK,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
)

CORPUS_FORMAT = 1
SPLITS = ("train", "valid", "test")
_FLUSH = 1 << 16  # ids buffered before a write: memory stays flat however big the input


@dataclass
class CorpusOptions:
    tokenizer: str = "char"
    vocab_size: int | None = None
    min_freq: int | None = None
    lowercase: bool = False
    pretokenized: bool = False
    sp_model_type: str = "unigram"
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    unit: str = "line"
    seed: int = 1234


def _check_input(path: Path) -> None:
    if not path.exists():
        raise RnnlmError(f"{path}: no such file")
    if path.is_dir():
        raise RnnlmError(f"{path}: is a directory, expected a text file")
    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\x00" in head:
        raise RnnlmError(f"{path}: looks like a binary file (it contains NUL bytes)")


def read_sequences(paths: list[Path], unit: str, bar: tqdm | None = None) -> Iterator[str]:
    """Yield sequences: non-empty lines, or blank-line separated paragraphs."""
    for path in paths:
        with open(path, "rb") as f:
            para: list[str] = []
            for lineno, raw in enumerate(f, 1):
                if bar is not None:
                    bar.update(len(raw))
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise RnnlmError(
                        f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start}); "
                        "convert it first, e.g. iconv -f latin1 -t utf-8"
                    ) from None
                if "\x00" in line:
                    raise RnnlmError(f"{path}:{lineno}: contains a NUL character (binary file?)")
                if unit == "line":
                    if line.strip():
                        yield line.strip()
                elif line.strip():
                    para.append(line.strip())
                elif para:
                    yield "\n".join(para)
                    para = []
            if para:
                yield "\n".join(para)


def _assign(opts: CorpusOptions) -> Iterator[str]:
    rng = random.Random(opts.seed)
    while True:
        u = rng.random()
        if u < opts.valid_fraction:
            yield "valid"
        elif u < opts.valid_fraction + opts.test_fraction:
            yield "test"
        else:
            yield "train"


def _labelled(
    inputs: list[Path], valid: Path | None, test: Path | None, opts: CorpusOptions, desc: str
) -> Iterator[tuple[str, str]]:
    """(split, sequence) over all inputs, with a progress bar over bytes read."""
    files = inputs + [p for p in (valid, test) if p is not None]
    total = sum(p.stat().st_size for p in files)
    # disable=None: no bar when stderr is not a terminal (logs, pipes, tests).
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False, disable=None) as bar:
        if valid is None and test is None:
            for seq, split in zip(
                read_sequences(inputs, opts.unit, bar), _assign(opts), strict=False
            ):
                yield split, seq
            return
        for seq in read_sequences(inputs, opts.unit, bar):
            yield "train", seq
        for split, path in (("valid", valid), ("test", test)):
            if path is not None:
                for seq in read_sequences([path], opts.unit, bar):
                    yield split, seq


def _fit(
    inputs: list[Path], valid: Path | None, test: Path | None, opts: CorpusOptions, work: Path
) -> Tokenizer:
    """First pass: fit the tokenizer on the training split only."""
    n_train = 0
    if opts.tokenizer == "sentencepiece":
        text_file = work / "train.txt"
        with open(text_file, "w", encoding="utf-8") as out:
            for split, seq in _labelled(inputs, valid, test, opts, "reading"):
                if split == "train":
                    out.write(seq.replace("\n", " ") + "\n")
                    n_train += 1
        if n_train == 0:
            raise RnnlmError("the training split is empty: the inputs hold no text")
        tok: Tokenizer = SentencePieceTokenizer.fit(
            text_file, work, vocab_size=opts.vocab_size or 8000, model_type=opts.sp_model_type
        )
        text_file.unlink()
        return tok
    counts: Counter[str] = Counter()
    splitter = WordTokenizer(list(SPECIALS), opts.lowercase, opts.pretokenized)
    for split, seq in _labelled(inputs, valid, test, opts, "counting"):
        if split == "train":
            n_train += 1
            counts.update(seq if opts.tokenizer == "char" else splitter.split(seq))
    if n_train == 0:
        raise RnnlmError("the training split is empty: the inputs hold no text")
    if opts.tokenizer == "char":
        min_freq = opts.min_freq or 2
        char_tok = CharTokenizer.fit(counts, opts.vocab_size, min_freq)
        if char_tok.vocab_size <= len(SPECIALS):
            raise RnnlmError(
                f"no character occurs --min-freq {min_freq} times in the training split, so the "
                "vocabulary would hold nothing but <unk>; use more text or --min-freq 1"
            )
        return char_tok
    if opts.pretokenized:
        counts.pop("<unk>", None)  # the literal <unk> maps to the special id
    return WordTokenizer.fit(
        counts,
        opts.vocab_size or 10000,
        opts.min_freq or 1,
        lowercase=opts.lowercase,
        pretokenized=opts.pretokenized,
    )


class _SplitWriter:
    def __init__(self, directory: Path, split: str, dtype: np.dtype[Any]) -> None:
        self.bin = open(directory / f"{split}.bin", "wb")  # noqa: SIM115 (closed in close())
        self.idx = open(directory / f"{split}.idx", "wb")  # noqa: SIM115
        self.dtype = dtype
        self.ids: list[int] = []
        self.offsets: list[int] = [0]
        self.written = 0
        self.sequences = self.tokens = self.unk = self.chars = 0

    def add(self, ids: list[int], text: str) -> None:
        self.ids.extend(ids)
        self.ids.append(EOS)
        self.sequences += 1
        self.tokens += len(ids)
        self.unk += ids.count(UNK)
        self.chars += len(text)
        self.offsets.append(self.written + len(self.ids))
        if len(self.ids) >= _FLUSH:
            self.flush()

    def flush(self) -> None:
        # Offsets are absolute; the last one is the next sequence's start, kept for later.
        np.asarray(self.ids, dtype=self.dtype).tofile(self.bin)
        np.asarray(self.offsets[:-1], dtype=np.int64).tofile(self.idx)
        self.written += len(self.ids)
        self.ids = []
        self.offsets = self.offsets[-1:]

    def close(self) -> dict[str, Any]:
        self.flush()
        np.asarray(self.offsets, dtype=np.int64).tofile(self.idx)
        self.bin.close()
        self.idx.close()
        return {
            "sequences": self.sequences,
            "tokens": self.tokens,
            "tokens_with_eos": self.tokens + self.sequences,
            "characters": self.chars,
            "unk": self.unk,
            "unk_rate": self.unk / self.tokens if self.tokens else 0.0,
        }


def build_corpus(
    inputs: list[Path],
    out: Path,
    opts: CorpusOptions,
    valid: Path | None = None,
    test: Path | None = None,
) -> dict[str, Any]:
    """Build the corpus directory atomically; returns stats.json's content."""
    for p in inputs + [p for p in (valid, test) if p is not None]:
        _check_input(p)
    if opts.tokenizer == "char" and (opts.lowercase or opts.pretokenized):
        raise RnnlmError("--lowercase and --pretokenized apply to --tokenizer word only")
    with atomic_directory(out) as work:
        tok = _fit(inputs, valid, test, opts, work)
        dtype = np.dtype(np.uint16 if tok.vocab_size <= 65536 else np.uint32)
        writers = {s: _SplitWriter(work, s, dtype) for s in SPLITS}
        for split, seq in _labelled(inputs, valid, test, opts, "encoding"):
            writers[split].add(tok.encode(seq), seq)
        stats: dict[str, Any] = {s: w.close() for s, w in writers.items()}
        stats["vocab_size"] = tok.vocab_size
        tok.save(work)
        meta = {
            "format_version": CORPUS_FORMAT,
            "dtype": dtype.name,
            "tokenizer": tok.settings(),
            "unit": opts.unit,
            "seed": opts.seed,
            "inputs": [str(p) for p in inputs],
        }
        (work / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n")
        (work / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


# ---------------------------------------------------------------- reading back


class TokenSplit:
    """One split of a corpus, memory-mapped: nothing is read until it is used."""

    def __init__(self, corpus: Path, split: str) -> None:
        meta = read_corpus_meta(corpus)
        path = corpus / f"{split}.bin"
        # np.memmap refuses an empty file; an empty split is a legal corpus.
        self.tokens: np.ndarray[Any, np.dtype[Any]] = (
            np.memmap(path, dtype=meta["dtype"], mode="r")
            if path.stat().st_size
            else np.zeros(0, dtype=meta["dtype"])
        )
        idx = corpus / f"{split}.idx"
        if idx.stat().st_size < 8 or idx.stat().st_size % 8:
            raise RnnlmError(f"{idx} is damaged: rebuild the corpus")
        # Mapped too: a corpus larger than memory is never read whole.
        self.offsets: np.ndarray[Any, np.dtype[np.int64]] = np.memmap(idx, dtype=np.int64, mode="r")
        if self.offsets[-1] != len(self.tokens):
            raise RnnlmError(f"{corpus / split}.idx does not match {split}.bin: rebuild the corpus")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Tokens per sequence, <eos> included."""
        return np.diff(self.offsets)

    def sequence(self, i: int) -> np.ndarray[Any, np.dtype[Any]]:
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])


def read_corpus_meta(corpus: Path) -> dict[str, Any]:
    path = corpus / "corpus.json"
    if not path.is_file():
        raise RnnlmError(f"{corpus}: not a corpus directory (no corpus.json); run `rnnlm corpus`")
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except ValueError as e:
        raise RnnlmError(f"{path}: not valid JSON ({e})") from e
    if meta.get("format_version") != CORPUS_FORMAT:
        raise RnnlmError(f"{path}: unsupported corpus format {meta.get('format_version')!r}")
    for split in SPLITS:
        for ext in ("bin", "idx"):
            if not (corpus / f"{split}.{ext}").is_file():
                raise RnnlmError(f"{corpus / f'{split}.{ext}'}: missing; rebuild the corpus")
    return meta


def load_corpus_tokenizer(corpus: Path) -> Tokenizer:
    return load_tokenizer(corpus, read_corpus_meta(corpus)["tokenizer"])


def corpus_command(args: argparse.Namespace) -> None:
    opts = CorpusOptions(
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        min_freq=args.min_freq,
        lowercase=args.lowercase,
        pretokenized=args.pretokenized,
        sp_model_type=args.sp_model_type,
        valid_fraction=0.0 if args.valid else args.valid_fraction,
        test_fraction=0.0 if args.test else args.test_fraction,
        unit=args.unit,
        seed=args.seed,
    )
    stats = build_corpus(
        [Path(p) for p in args.inputs],
        Path(args.out),
        opts,
        valid=Path(args.valid) if args.valid else None,
        test=Path(args.test) if args.test else None,
    )
    print(json.dumps(stats, indent=2))

"""Tokenizers: character, word and sentencepiece, all sharing the special ids.

    <pad>=0  <unk>=1  <bos>=2  <eos>=3

Each tokenizer is fitted from counts of the training split (or, for
sentencepiece, a text file of it), saves itself as one file inside a checkpoint
(`vocab.json` or `spm.model`) and describes itself with a small JSON-able
`settings()` dict that goes into `config.json`.

`tokenize(text)` returns ids and, position for position, the piece of text each
id stands for, so a score can be shown token by token.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from rnnlm.models.errors import TokenizerError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
KINDS = ("char", "word", "sentencepiece")


class Tokenizer(Protocol):
    kind: str
    filename: str

    @property
    def vocab_size(self) -> int: ...

    def tokenize(self, text: str) -> tuple[list[int], list[str]]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def piece(self, token_id: int) -> str: ...

    def decoder(self, context: Sequence[int] = ()) -> Decoder: ...

    def settings(self) -> dict[str, Any]: ...

    def save(self, directory: Path) -> None: ...


class Decoder:
    """Text of a growing id sequence, as `decode` would give it after `context`.

    `text(ids)` is decode(context + ids) without the context's own text; called
    again with a longer list (the same ids and more), it decodes only the new
    ones where the tokenizer allows (characters and words: decoding is left to
    right), so following a sampled sequence costs O(1) per token, not O(n).
    This generic one decodes everything each time (subwords: byte-fallback
    pieces may combine across tokens).
    """

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.context = list(context)
        self.prefix = tokenizer.decode(self.context)

    def text(self, ids: Sequence[int]) -> str:
        full = self.tokenizer.decode(self.context + list(ids))
        if full.startswith(self.prefix):
            return full[len(self.prefix) :]
        return self.tokenizer.decode(ids)


class _CharDecoder(Decoder):
    def __init__(self, tokenizer: CharTokenizer, context: Sequence[int] = ()) -> None:
        self.tok = tokenizer
        self.parts: list[str] = []
        self.fed = 0

    def text(self, ids: Sequence[int]) -> str:
        if len(ids) < self.fed:  # a shorter list: start again
            self.parts, self.fed = [], 0
        if len(ids) > self.fed:
            self.parts.append(self.tok.decode(ids[self.fed :]))
            self.fed = len(ids)
            if len(self.parts) > 64:
                self.parts = ["".join(self.parts)]
        return "".join(self.parts) if len(self.parts) != 1 else self.parts[0]


def _vocab_from_counts(counts: Counter[str], vocab_size: int | None, min_freq: int) -> list[str]:
    """The most frequent entries (ties broken alphabetically, so fits are reproducible)."""
    kept = [t for t, c in counts.items() if c >= min_freq and t not in SPECIALS]
    kept.sort(key=lambda t: (-counts[t], t))
    if vocab_size is not None:
        kept = kept[: max(0, vocab_size - len(SPECIALS))]
    return SPECIALS + kept


class _VocabTokenizer:
    """Shared machinery of the char and word tokenizers: a list of strings."""

    kind = ""
    filename = "vocab.json"

    def __init__(self, tokens: list[str]) -> None:
        if tokens[: len(SPECIALS)] != SPECIALS:
            raise TokenizerError(f"vocabulary must start with {SPECIALS}")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def piece(self, token_id: int) -> str:
        return self.tokens[token_id]

    def encode(self, text: str) -> list[int]:
        return self.tokenize(text)[0]

    def tokenize(self, text: str) -> tuple[list[int], list[str]]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def decoder(self, context: Sequence[int] = ()) -> Decoder:
        return Decoder(self, context)

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size}

    def save(self, directory: Path) -> None:
        data = {"kind": self.kind, **self.settings(), "tokens": self.tokens}
        (directory / self.filename).write_text(json.dumps(data, ensure_ascii=False))


class CharTokenizer(_VocabTokenizer):
    """Unicode code points; those not in the vocabulary are <unk>."""

    kind = "char"

    @classmethod
    def fit(
        cls, counts: Counter[str], vocab_size: int | None = None, min_freq: int = 1
    ) -> CharTokenizer:
        return cls(_vocab_from_counts(counts, vocab_size, min_freq))

    @staticmethod
    def count(text: str) -> Iterable[str]:
        return text

    def tokenize(self, text: str) -> tuple[list[int], list[str]]:
        get = self.index.get
        return [get(ch, UNK) for ch in text], list(text)

    def decoder(self, context: Sequence[int] = ()) -> Decoder:
        return _CharDecoder(self, context)  # a character's text never depends on its neighbours

    def decode(self, ids: Sequence[int]) -> str:
        # <unk> decodes to U+FFFD, the replacement character; other specials vanish.
        out = []
        for i in ids:
            if i == UNK:
                out.append("\ufffd")
            elif i >= len(SPECIALS):
                out.append(self.tokens[i])
        return "".join(out)


_WORD_RE = re.compile(r"\w+|[^\w\s]")
# Detokenizer: where people write no space. Every punctuation mark is its own
# token, so any choice of spaces around punctuation re-tokenizes to the same ids.
_NO_SPACE_BEFORE = set(".,;:!?)]}%…")
_NO_SPACE_AFTER = set("([{$")
_JOINERS = set("-/'’@")  # hyphenated words, a/b, contractions: no space either side


class WordTokenizer(_VocabTokenizer):
    """Words and punctuation marks as separate tokens.

    `pretokenized=True` splits on whitespace only and reads a literal `<unk>` as
    the unknown token (Penn Treebank style files); `lowercase=True` folds case.
    """

    kind = "word"

    def __init__(self, tokens: list[str], lowercase: bool = False, pretokenized: bool = False):
        super().__init__(tokens)
        self.lowercase = lowercase
        self.pretokenized = pretokenized

    def split(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        if self.pretokenized:
            return text.split()
        return _WORD_RE.findall(unicodedata.normalize("NFC", text))

    @classmethod
    def fit(
        cls,
        counts: Counter[str],
        vocab_size: int | None = 10000,
        min_freq: int = 1,
        lowercase: bool = False,
        pretokenized: bool = False,
    ) -> WordTokenizer:
        return cls(_vocab_from_counts(counts, vocab_size, min_freq), lowercase, pretokenized)

    def tokenize(self, text: str) -> tuple[list[int], list[str]]:
        words = self.split(text)
        get = self.index.get
        return [get(w, UNK) for w in words], words

    def decode(self, ids: Sequence[int]) -> str:
        return _WordDecoder(self).text(ids)

    def decoder(self, context: Sequence[int] = ()) -> Decoder:
        return _WordDecoder(self, context)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "lowercase": self.lowercase,
            "pretokenized": self.pretokenized,
        }


class _WordDecoder(Decoder):
    """The detokenizer, left to right: where a space goes depends only on the words
    before (the last word, whether a quote is open), so each new word is decoded once."""

    def __init__(self, tokenizer: WordTokenizer, context: Sequence[int] = ()) -> None:
        self.tok = tokenizer
        self.glue_next = True  # no space before the first word
        self.quote_open = False
        self.parts: list[str] = []
        self.fed = 0
        self._feed(context)
        self.parts, self.fed = [], 0
        self.start = (self.glue_next, self.quote_open)

    def _feed(self, ids: Sequence[int]) -> None:
        tokens, pretokenized = self.tok.tokens, self.tok.pretokenized
        for i in ids:
            if i != UNK and i < len(SPECIALS):
                continue
            w = tokens[i]
            if pretokenized:
                if not self.glue_next:
                    self.parts.append(" ")
                self.glue_next = False
                self.parts.append(w)
                continue
            space = not self.glue_next
            self.glue_next = False
            if w in _NO_SPACE_BEFORE:
                space = False
            elif w in _NO_SPACE_AFTER:
                self.glue_next = True
            elif w in _JOINERS:
                space, self.glue_next = False, True
            elif w == '"':
                if self.quote_open:
                    space = False
                else:
                    self.glue_next = True
                self.quote_open = not self.quote_open
            if space:
                self.parts.append(" ")
            self.parts.append(w)

    def text(self, ids: Sequence[int]) -> str:
        if len(ids) < self.fed:  # a shorter list: start again from the context
            self.parts, self.fed = [], 0
            self.glue_next, self.quote_open = self.start
        if len(ids) > self.fed:
            self._feed(ids[self.fed :])
            self.fed = len(ids)
            if len(self.parts) > 64:
                self.parts = ["".join(self.parts)]
        return "".join(self.parts)


class SentencePieceTokenizer:
    """Unigram or BPE subwords from the sentencepiece library, with byte fallback."""

    kind = "sentencepiece"
    filename = "spm.model"

    def __init__(self, model_file: Path, settings: dict[str, Any] | None = None) -> None:
        import sentencepiece as spm

        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{model_file}: not a sentencepiece model ({e})") from e
        ids = [self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()]
        if ids != [PAD, UNK, BOS, EOS]:
            raise TokenizerError(f"{model_file}: special ids are {ids}, expected [0, 1, 2, 3]")
        self.model_bytes = Path(model_file).read_bytes()
        self.model_type = (settings or {}).get("model_type", "unigram")

    @classmethod
    def fit(
        cls, text_file: Path, out_dir: Path, vocab_size: int = 8000, model_type: str = "unigram"
    ) -> SentencePieceTokenizer:
        import sentencepiece as spm

        prefix = out_dir / "spm"
        try:
            spm.SentencePieceTrainer.train(
                input=str(text_file),
                model_prefix=str(prefix),
                vocab_size=vocab_size,
                model_type=model_type,
                pad_id=PAD,
                unk_id=UNK,
                bos_id=BOS,
                eos_id=EOS,
                byte_fallback=True,
                character_coverage=0.9995,
                # Exact round trips: no normalisation, whitespace kept as written.
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                hard_vocab_limit=False,
                input_sentence_size=2_000_000,
                shuffle_input_sentence=True,
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise TokenizerError(f"sentencepiece could not be trained: {e}") from e
        prefix.with_suffix(".vocab").unlink(missing_ok=True)
        return cls(prefix.with_suffix(".model"), {"model_type": model_type})

    @property
    def vocab_size(self) -> int:
        return int(self.sp.get_piece_size())

    def tokenize(self, text: str) -> tuple[list[int], list[str]]:
        ids: list[int] = self.sp.encode(text)
        return ids, [self.piece(i) for i in ids]

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.sp.decode([i for i in ids if i >= len(SPECIALS) or i == UNK]))

    def piece(self, token_id: int) -> str:
        return str(self.sp.id_to_piece(token_id)).replace("\u2581", " ")

    def decoder(self, context: Sequence[int] = ()) -> Decoder:
        return Decoder(self, context)

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "model_type": self.model_type}

    def save(self, directory: Path) -> None:
        (directory / self.filename).write_bytes(self.model_bytes)


def tokenizer_file(settings: dict[str, Any]) -> str:
    return "spm.model" if settings.get("kind") == "sentencepiece" else "vocab.json"


def load_tokenizer(directory: Path, settings: dict[str, Any]) -> Tokenizer:
    """Load the tokenizer saved in `directory`, described by `settings` from config.json."""
    kind = settings.get("kind")
    path = directory / tokenizer_file(settings)
    if kind not in KINDS:
        raise TokenizerError(f"{directory / 'config.json'}: unknown tokenizer kind {kind!r}")
    if not path.is_file():
        raise TokenizerError(f"{path}: missing tokenizer file")
    if kind == "sentencepiece":
        return SentencePieceTokenizer(path, settings)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        tokens = data["tokens"]
    except (ValueError, KeyError, TypeError) as e:
        raise TokenizerError(f"{path}: not a valid vocabulary file ({e})") from e
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise TokenizerError(f"{path}: 'tokens' must be a list of strings")
    if kind == "char":
        return CharTokenizer(tokens)
    return WordTokenizer(
        tokens, bool(data.get("lowercase", False)), bool(data.get("pretokenized", False))
    )

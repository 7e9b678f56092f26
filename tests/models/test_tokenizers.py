from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlm.models.errors import TokenizerError
from rnnlm.models.tokenizers import (
    BOS,
    EOS,
    PAD,
    SPECIALS,
    UNK,
    CharTokenizer,
    SentencePieceTokenizer,
    WordTokenizer,
    load_tokenizer,
)

LINES = ["The cat sat on the mat.", "Don't panic: it's (only) a test!", 'She said "hi" to me.']


def _word(**kw: bool) -> WordTokenizer:
    probe = WordTokenizer(list(SPECIALS), **kw)
    return WordTokenizer.fit(Counter(w for line in LINES for w in probe.split(line)), **kw)


def test_special_ids_are_shared():
    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    for tok in (CharTokenizer.fit(Counter("abc")), _word()):
        assert tok.tokens[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]


def test_char_unknown_is_unk_and_counted():
    tok = CharTokenizer.fit(Counter("aab"), min_freq=2)
    ids, pieces = tok.tokenize("abz")
    assert ids == [tok.index["a"], UNK, UNK]
    assert pieces == ["a", "b", "z"]
    assert tok.decode(ids) == "a\ufffd\ufffd"


@settings(deadline=None)  # no per-example time limit: a busy machine is not a failure
@given(st.text(alphabet="abc xyz.,!", max_size=50))
def test_char_round_trip(text: str):
    tok = CharTokenizer.fit(Counter("abc xyz.,!"))
    assert tok.decode(tok.encode(text)) == text


def test_word_splits_punctuation_and_detokenizes_like_people_write():
    tok = _word()
    assert tok.split("Don't panic!") == ["Don", "'", "t", "panic", "!"]
    for line in LINES:
        assert tok.decode(tok.encode(line)) == line


def test_word_vocab_cap_and_min_freq():
    counts = Counter({"a": 5, "b": 3, "c": 1, "d": 1})
    assert WordTokenizer.fit(counts, vocab_size=6).tokens[4:] == ["a", "b"]
    assert WordTokenizer.fit(counts, min_freq=2).tokens[4:] == ["a", "b"]
    assert WordTokenizer.fit(counts, vocab_size=None).tokens[4:] == ["a", "b", "c", "d"]


def test_word_lowercase_and_unknown_words():
    tok = _word(lowercase=True)
    ids = tok.encode("THE zebra")
    assert ids[0] == tok.index["the"] and ids[1] == UNK


def test_pretokenized_reads_literal_unk():
    tok = WordTokenizer.fit(Counter(["a", "b"]), pretokenized=True)
    assert tok.encode("a <unk> b c") == [tok.index["a"], UNK, tok.index["b"], UNK]
    assert tok.decode(tok.encode("a , b")) == "a <unk> b"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_word_detokenized_text_tokenizes_back_to_the_same_ids(ids: list[int]):
    # What makes a sample's text score back to its own tokens.
    tok = _word()
    ids = [i % tok.vocab_size for i in ids]
    ids = [i for i in ids if i == UNK or i >= len(SPECIALS)]
    ids = [i for i in ids if i != UNK]  # <unk> is never sampled
    assert tok.encode(tok.decode(ids)) == ids


def test_save_and_load_round_trip(tmp_path: Path):
    for tok in (CharTokenizer.fit(Counter("hello")), _word(lowercase=True)):
        tok.save(tmp_path)
        back = load_tokenizer(tmp_path, tok.settings())
        assert back.encode("Hello, the cat") == tok.encode("Hello, the cat")
        assert back.settings() == tok.settings()


def test_load_refuses_broken_vocab(tmp_path: Path):
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="vocab.json"):
        load_tokenizer(tmp_path, {"kind": "char"})
    with pytest.raises(TokenizerError, match="unknown tokenizer kind"):
        load_tokenizer(tmp_path, {"kind": "bytes"})
    (tmp_path / "vocab.json").unlink()
    with pytest.raises(TokenizerError, match="missing"):
        load_tokenizer(tmp_path, {"kind": "word"})


@pytest.fixture(scope="module")
def sp(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> SentencePieceTokenizer:
    work = tmp_path_factory.mktemp("sp")
    return SentencePieceTokenizer.fit(text_file, work, vocab_size=400)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40))
def test_sentencepiece_round_trips_any_text(sp: SentencePieceTokenizer, text: str):
    # Byte fallback: nothing is unknown, and decoding gives the text back exactly.
    ids = sp.encode(text)
    assert UNK not in ids
    assert sp.decode(ids) == text


def test_sentencepiece_saves_and_loads(sp: SentencePieceTokenizer, tmp_path: Path):
    sp.save(tmp_path)
    back = load_tokenizer(tmp_path, sp.settings())
    assert back.encode("the module") == sp.encode("the module")
    (tmp_path / "spm.model").write_bytes(b"garbage")
    with pytest.raises(TokenizerError, match="spm.model"):
        load_tokenizer(tmp_path, sp.settings())


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["char", "word", "word-pretokenized"]),
    ids=st.lists(st.integers(min_value=0, max_value=40), max_size=30),
    context=st.lists(st.integers(min_value=0, max_value=40), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=4),
)
def test_incremental_decoding_is_decoding(
    kind: str, ids: list[int], context: list[int], cuts: list[int]
) -> None:
    """A decoder fed a growing sequence gives, at every length, what decoding the whole
    (after the context) gives: the sampler follows text token by token this way."""
    words = ["the", "cat", ",", ".", "(", ")", '"', "-", "'", "s", "$", "a", "b", "c", "sat"]
    if kind == "char":
        tok: CharTokenizer | WordTokenizer = CharTokenizer(SPECIALS + list('ab c.,"()-'))
    else:
        tok = WordTokenizer(SPECIALS + words, pretokenized=kind == "word-pretokenized")
    ids = [i % tok.vocab_size for i in ids]
    context = [i % tok.vocab_size for i in context]
    dec = tok.decoder(context)
    prefix = tok.decode(context)
    for n in sorted({*(min(c, len(ids)) for c in cuts), len(ids)}):
        whole = tok.decode(context + ids[:n])
        assert whole.startswith(prefix)
        assert dec.text(ids[:n]) == whole[len(prefix) :]
    assert tok.decoder(context).text(ids) == tok.decode(context + ids)[len(prefix) :]

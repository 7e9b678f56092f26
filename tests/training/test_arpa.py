"""ARPA files: out to KenLM and back, in from lmplz, and hostile ones refused by line."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import kenlm
import numpy as np
import pytest

from rnnlm.models.ngram_next import layout_of
from rnnlm.models.tokenizers import BOS, EOS, SPECIALS, CharTokenizer, WordTokenizer
from rnnlm.training.arpa import (
    ArpaError,
    arpa_word,
    import_arpa,
    read_arpa,
    token_words,
    write_arpa,
)
from rnnlm.training.ngram import estimate

DATA = Path(__file__).resolve().parent.parent / "data" / "ngram"
LN10 = math.log(10)


def _word_model(name: str, order: int = 3):  # type: ignore[no-untyped-def]
    lines = [line.split() for line in (DATA / f"{name}.txt").read_text().splitlines()]
    tok = WordTokenizer(SPECIALS + sorted({w for line in lines for w in line}), pretokenized=True)
    seqs = [tok.encode(" ".join(line)) + [EOS] for line in lines]
    ids, offsets = np.concatenate(seqs), np.cumsum([0] + [len(s) for s in seqs])
    model, _ = estimate(ids, offsets, order, tok.vocab_size)
    return model, tok, lines


def _ours_log10(model, ids: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Per-token log10 P of `<s> ids </s>` (the </s> included), as KenLM's full_scores."""
    s = [BOS, *ids, EOS]
    width = model.order - 1
    hist = [([-1] * width + s[:p])[-width:] for p in range(1, len(s))]
    return model.logprob_of(np.array(hist), np.array(s[1:])) / LN10


@pytest.mark.parametrize("suffix", [".arpa", ".arpa.gz"])
def test_export_gives_kenlm_the_same_probabilities(tmp_path: Path, suffix: str) -> None:
    model, tok, lines = _word_model("zipf", order=4)
    out = tmp_path / f"m{suffix}"
    counts = write_arpa(model, token_words(tok), out)["counts"]
    assert counts[0] == tok.vocab_size - 1  # every token but <pad>
    lm = kenlm.Model(str(out))
    assert lm.order == 4
    held_out = lines[::7] + [["w1", "w299", "w5"], ["w0"] * 12]
    for line in held_out:
        theirs = [p for p, _, _ in lm.full_scores(" ".join(line))]
        np.testing.assert_allclose(_ours_log10(model, tok.encode(" ".join(line))), theirs,
                                   atol=1e-4)  # fmt: skip


def test_characters_export_with_whitespace_escaped(tmp_path: Path) -> None:
    text = ["the cat sat", "a\tcat", "<s> is not a tag here"]
    tok = CharTokenizer.fit(__import__("collections").Counter("".join(text)))
    seqs = [tok.encode(t) + [EOS] for t in text]
    model, _ = estimate(np.concatenate(seqs), np.cumsum([0] + [len(s) for s in seqs]), 4,
                        tok.vocab_size)  # fmt: skip
    words = token_words(tok)
    assert "<U+0020>" in words and "<U+0009>" in words
    assert arpa_word("<s>") == "<U+003C>s>" and arpa_word("<U+0020>") == "<U+003C>U+0020>"
    write_arpa(model, words, tmp_path / "c.arpa")
    lm = kenlm.Model(str(tmp_path / "c.arpa"))
    sentence = "the cat"
    theirs = [p for p, _, _ in lm.full_scores(" ".join(words[i] for i in tok.encode(sentence)))]
    np.testing.assert_allclose(_ours_log10(model, tok.encode(sentence)), theirs, atol=1e-4)


@pytest.mark.parametrize("name", ["tiny", "zipf"])
def test_import_of_lmplz_scores_as_kenlm_does(name: str) -> None:
    _, tok, lines = _word_model(name)
    arpa = DATA / f"{name}.3.arpa"
    model, report = import_arpa(arpa, tok)
    assert report["unknown_words"] == 0 and report["tokens_scored_as_unk"] == 0
    assert report["max_abs_log10_renormalisation"] < 1e-5  # lmplz's model sums to 1 already
    lm = kenlm.Model(str(arpa))
    for line in lines[:100]:
        theirs = [p for p, _, _ in lm.full_scores(" ".join(line))]
        np.testing.assert_allclose(_ours_log10(model, tok.encode(" ".join(line))), theirs,
                                   atol=1e-4)  # fmt: skip


def test_import_maps_onto_another_vocabulary_and_stays_a_distribution(tmp_path: Path) -> None:
    # The model lacks w1..w9 (their n-grams go) and has a word the file lacks (scored as
    # <unk> before renormalising).
    _, full_tok, lines = _word_model("zipf")
    vocab = [t for t in full_tok.tokens if t not in {f"w{i}" for i in range(1, 10)}]
    tok = WordTokenizer([*vocab, "zebra"], pretokenized=True)
    model, report = import_arpa(DATA / "zipf.3.arpa", tok)
    assert report["unknown_words"] == 9 and report["tokens_scored_as_unk"] == 1
    assert report["dropped_ngrams"][0] == 9 and all(n > 0 for n in report["dropped_ngrams"])
    rng = np.random.default_rng(0)
    hist = rng.integers(3, tok.vocab_size, size=(200, 2))
    hist[:20, 0] = -1
    hist[:10] = [-1, BOS]
    np.testing.assert_allclose(layout_of(model).probabilities(hist).sum(axis=1), 1.0, atol=1e-6)
    unk, zebra = tok.index["<unk>"], tok.index["zebra"]
    dist = layout_of(model).probabilities(np.array([[-1, BOS]]))[0]
    assert dist[zebra] == pytest.approx(dist[unk])  # both the file's <unk>


def _pruned(tmp_path: Path) -> Path:
    """zipf.3.arpa with some bigrams gone that trigrams need as context or suffix."""
    text = (DATA / "zipf.3.arpa").read_text().splitlines()
    start = text.index("\\2-grams:")
    end = text.index("\\3-grams:")
    trigram_words = [ln.split("\t")[1].split() for ln in text[end + 1 :] if "\t" in ln]
    needed = {" ".join(t[:2]) for t in trigram_words[:40]} | {
        " ".join(t[1:]) for t in trigram_words[:40]
    }
    kept = [ln for ln in text[start + 1 : end] if not ("\t" in ln and ln.split("\t")[1] in needed)]
    removed = (end - start - 1) - len(kept)
    n2 = int(next(ln for ln in text if ln.startswith("ngram 2=")).split("=")[1])
    out = [*text[:start], "\\2-grams:", *kept, *text[end:]]
    out = [f"ngram 2={n2 - removed}" if ln.startswith("ngram 2=") else ln for ln in out]
    path = tmp_path / "pruned.arpa"
    path.write_text("\n".join(out) + "\n")
    return path


def test_holes_of_a_pruned_file_are_filled(tmp_path: Path) -> None:
    _, tok, lines = _word_model("zipf")
    model, report = import_arpa(_pruned(tmp_path), tok)
    assert report["filled_ngrams"][1] > 0
    hist = np.array([[-1, BOS]] + [[tok.index[a], tok.index[b]] for a, b, *_ in
                                    (ln for ln in lines if len(ln) >= 2)][:100])  # fmt: skip
    np.testing.assert_allclose(layout_of(model).probabilities(hist).sum(axis=1), 1.0, atol=1e-6)


# ------------------------------------------------------------ hostile files

GOOD = (DATA / "tiny.3.arpa").read_text()


def _variant(tmp_path: Path, text: str | bytes, name: str = "bad.arpa") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no \\\\data\\\\ header"),
        ("hello\nworld\n", "no \\\\data\\\\ header"),
        (
            "\n".join(GOOD.splitlines()[:20]),
            "truncated: the file ends inside .2-grams: after 5 of 14",
        ),
        (GOOD[: len(GOOD) // 2], ":25: expected a log10 probability, 2 word.s. and an optional"),
        (GOOD.replace("\\end\\", ""), "truncated: no \\\\end\\\\"),
        (GOOD.replace("ngram 2=14", "ngram 2=15"), "has 14 entries, the header says 15"),
        (GOOD.replace("ngram 2=14", "ngram 2=13"), "has 14 entries, the header says 13"),
        (GOOD.replace("ngram 2=14\n", ""), ":3: expected the count of order 2"),
        (GOOD.replace("-0.60206\ta\t", "minus\ta\t"), ":\\d+: probability 'minus' is not a number"),
        (GOOD.replace("\ta\t-0.30103", "\ta\tnan"), "backoff 'nan' is not a log10 value"),
        (GOOD.replace("-0.60206\ta\t", "0.5\ta\t"), "positive log10 probability"),
        (GOOD.replace("-0.60206\ta\t", "-0.60206\ta b\t"), "expected a log10 probability, 1 word"),
        (GOOD.replace("ngram 1=7", "ngram 1=seven"), "expected 'ngram N=count'"),
        (GOOD.replace("ngram 2=14", "ngram 3=14"), "expected the count of order 2"),
        (GOOD.replace("ngram 3=14", "ngram 3=14\nngram 999=1"), "expected the count of order 4"),
        ("\\data\\\n" + "".join(f"ngram {k}=1\n" for k in range(1, 80)), "order 65 is above"),
        (GOOD.replace("ngram 1=7", "ngram 1=99999999999999999999999"), "has 7 entries"),
        ("\\data\\\nngram 1=1\n\n\\1-grams:\n-1\t" + "x" * (2 << 20) + "\n", "longer than"),
    ],
)
def test_hostile_files_are_refused_with_a_line_that_names_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    _, tok, _ = _word_model("tiny")
    with pytest.raises(ArpaError, match=message):
        import_arpa(_variant(tmp_path, text), tok)


def test_binary_gzip_and_encoding_problems(tmp_path: Path) -> None:
    _, tok, _ = _word_model("tiny")
    with pytest.raises(ArpaError, match="NUL"):
        import_arpa(_variant(tmp_path, b"\\data\\\n\x00\x01"), tok)
    with pytest.raises(ArpaError, match="not UTF-8"):
        import_arpa(_variant(tmp_path, b"\\data\\\nngram 1=1\n\n\\1-grams:\n-1\t\xff\xfe\n"), tok)
    with pytest.raises(ArpaError, match="cannot be read"):
        import_arpa(_variant(tmp_path, b"not gzip at all", "x.arpa.gz"), tok)
    with pytest.raises(ArpaError, match="no such file"):
        import_arpa(tmp_path / "absent.arpa", tok)
    gz = tmp_path / "good.arpa.gz"
    gz.write_bytes(gzip.compress(GOOD.encode()))
    assert import_arpa(gz, tok)[0].order == 3


def test_a_duplicate_ngram_is_refused(tmp_path: Path) -> None:
    _, tok, _ = _word_model("tiny")
    text = GOOD.replace("ngram 2=14", "ngram 2=15").replace(
        "-0.6478175\ta a\t-0.30103", "-0.6478175\ta a\t-0.30103\n-0.6\ta a\t-0.3"
    )
    with pytest.raises(ArpaError, match="the 2-gram a a is listed twice"):
        import_arpa(_variant(tmp_path, text), tok)


def test_read_arpa_reports_words_it_cannot_map(tmp_path: Path) -> None:
    arpa = read_arpa(DATA / "tiny.3.arpa", lambda w: -2 if w == "d" else 5)
    assert arpa.unknown_words == {"d"} and arpa.order == 3 and arpa.counts == [7, 14, 14]

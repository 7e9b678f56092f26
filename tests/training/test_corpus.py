import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from rnnlm.models.errors import RnnlmError
from rnnlm.models.tokenizers import EOS, UNK
from rnnlm.training.corpus import CorpusOptions, TokenSplit, build_corpus, load_corpus_tokenizer


def test_char_corpus_files_and_stats(tmp_path: Path, text_file: Path):
    stats = build_corpus([text_file], tmp_path / "c", CorpusOptions(seed=1))
    c = tmp_path / "c"
    assert json.loads((c / "stats.json").read_text()) == stats
    lines = [ln for ln in text_file.read_text().splitlines() if ln.strip()]
    assert sum(stats[s]["sequences"] for s in ("train", "valid", "test")) == len(lines)
    assert 0 < stats["valid"]["sequences"] < stats["train"]["sequences"]
    train = TokenSplit(c, "train")
    assert len(train) == stats["train"]["sequences"]
    tok = load_corpus_tokenizer(c)
    first = train.sequence(0)
    assert first[-1] == EOS
    assert tok.decode(first[:-1].tolist()) in lines
    assert isinstance(train.tokens, np.memmap)  # memory-mapped, not read into RAM


def test_split_is_deterministic_and_seeded(tmp_path: Path, text_file: Path):
    a = build_corpus([text_file], tmp_path / "a", CorpusOptions(seed=5))
    b = build_corpus([text_file], tmp_path / "b", CorpusOptions(seed=5))
    c = build_corpus([text_file], tmp_path / "c", CorpusOptions(seed=6))
    assert (tmp_path / "a/valid.bin").read_bytes() == (tmp_path / "b/valid.bin").read_bytes()
    assert a == b
    assert (tmp_path / "a/valid.bin").read_bytes() != (tmp_path / "c/valid.bin").read_bytes()
    assert c["vocab_size"] > 0


def test_vocabulary_is_fitted_on_training_split_only(tmp_path: Path):
    train = tmp_path / "train.txt"
    valid = tmp_path / "valid.txt"
    train.write_text("the cat sat\nthe dog sat\n")
    valid.write_text("the zebra sat\n")
    stats = build_corpus(
        [train],
        tmp_path / "c",
        CorpusOptions(tokenizer="word", valid_fraction=0, test_fraction=0),
        valid=valid,
    )
    tok = load_corpus_tokenizer(tmp_path / "c")
    assert "zebra" not in tok.index
    assert stats["valid"]["unk"] == 1 and stats["train"]["unk"] == 0
    assert stats["test"]["sequences"] == 0
    assert TokenSplit(tmp_path / "c", "valid").sequence(0).tolist()[1] == UNK


def test_paragraph_unit(tmp_path: Path):
    f = tmp_path / "p.txt"
    f.write_text("one\ntwo\n\nthree\n\n\nfour\nfive\n")
    stats = build_corpus(
        [f],
        tmp_path / "c",
        CorpusOptions(unit="paragraph", min_freq=1, valid_fraction=0, test_fraction=0),
    )
    assert stats["train"]["sequences"] == 3
    tok = load_corpus_tokenizer(tmp_path / "c")
    assert tok.decode(TokenSplit(tmp_path / "c", "train").sequence(0)[:-1].tolist()) == "one\ntwo"


def test_word_and_sentencepiece_corpora(tmp_path: Path, text_file: Path):
    w = build_corpus(
        [text_file], tmp_path / "w", CorpusOptions(tokenizer="word", vocab_size=500, lowercase=True)
    )
    assert w["vocab_size"] == 500 and w["train"]["unk_rate"] > 0
    s = build_corpus(
        [text_file], tmp_path / "s", CorpusOptions(tokenizer="sentencepiece", vocab_size=500)
    )
    assert s["train"]["unk"] == 0 and (tmp_path / "s/spm.model").is_file()


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "training split is empty"),
        (b"\n\n   \n", "training split is empty"),
        (b"caf\xe9 au lait\n", "not UTF-8"),
        (b"\x7fELF\x00\x00\x01binary", "binary"),
    ],
)
def test_bad_inputs_get_clear_errors(tmp_path: Path, content: bytes, message: str):
    f = tmp_path / "in.txt"
    f.write_bytes(content)
    with pytest.raises(RnnlmError, match=message):
        build_corpus([f], tmp_path / "c", CorpusOptions())
    assert not (tmp_path / "c").exists()  # nothing half-written


def test_missing_path_and_directory(tmp_path: Path):
    with pytest.raises(RnnlmError, match="no such file"):
        build_corpus([tmp_path / "nope.txt"], tmp_path / "c", CorpusOptions())
    with pytest.raises(RnnlmError, match="is a directory"):
        build_corpus([tmp_path], tmp_path / "c", CorpusOptions())


def test_one_character_vocabulary_and_one_huge_line(tmp_path: Path):
    f = tmp_path / "a.txt"
    f.write_text("a" * 200_000 + "\n" + "aaa\n" * 50)
    stats = build_corpus([f], tmp_path / "c", CorpusOptions(valid_fraction=0.1, seed=3))
    assert stats["vocab_size"] == 5
    assert (
        max(
            TokenSplit(tmp_path / "c", s).lengths.max(initial=0) for s in ("train", "valid", "test")
        )
        == 200_001
    )


def test_cli_namespace_maps_to_options(tmp_path: Path, text_file: Path):
    from rnnlm.training.corpus import corpus_command

    args = Namespace(
        inputs=[str(text_file)],
        out=str(tmp_path / "c"),
        tokenizer="word",
        vocab_size=300,
        min_freq=None,
        lowercase=True,
        pretokenized=False,
        sp_model_type="unigram",
        valid_fraction=0.1,
        test_fraction=0.1,
        valid=None,
        test=None,
        unit="line",
        seed=1,
    )
    corpus_command(args)
    meta = json.loads((tmp_path / "c/corpus.json").read_text())
    assert meta["tokenizer"]["lowercase"] is True and meta["tokenizer"]["vocab_size"] == 300

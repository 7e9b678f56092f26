"""Bad corpora through the `rnnlm` command: a clear one-line error or a correct result,
never a hang or a traceback. (In-process `main()`: an uncaught exception fails the test.)"""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rnnlm.cli import main

TINY = ["--hidden", "16", "--embedding", "8", "--layers", "1", "--eval-every", "1000",
        "--threads", "1", "--no-progress"]  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """`--threads 1` (two threads on two busy cores are ten times slower) sets it for the
    whole process: put it back for the other tests."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnlm "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], err


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", ["training split is empty"]),
        (b"\n   \n\t\n", ["training split is empty"]),
        # Mixed encodings: UTF-8, then a Latin-1 line, then UTF-8 again.
        (
            "na\u00efve caf\u00e9\n".encode() + b"caf\xe9 cr\xe8me\n" + "\u00fcber\n".encode(),
            ["in.txt:2: not UTF-8", "iconv"],
        ),  # fmt: skip
        ("\ufeffa BOM, then UTF-16\n".encode("utf-16"), ["binary"]),
        (b"x", ["no character occurs --min-freq 2 times"]),
    ],
)
def test_corpora_that_cannot_be_used_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, words: list[str]
) -> None:
    (tmp_path / "in.txt").write_bytes(content)
    code, _, err = _run(capsys, "corpus", str(tmp_path / "in.txt"), "--out", str(tmp_path / "c"))
    assert code == 1
    _one_line_error(err, *words)
    assert not (tmp_path / "c").exists()


def test_a_vocabulary_of_one_character_trains_and_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.txt").write_text("".join("a" * n + "\n" for n in range(1, 60)))
    code, out, _ = _run(capsys, "corpus", str(tmp_path / "a.txt"), "--out", str(tmp_path / "c"))
    assert code == 0 and json.loads(out)["vocab_size"] == 5  # the 4 specials and "a"
    code, out, err = _run(capsys, "train", "--corpus", str(tmp_path / "c"), "--out",
                          str(tmp_path / "run"), "--max-steps", "20", *TINY)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["steps"] == 20
    model = str(tmp_path / "run/best")
    code, out, err = _run(capsys, "sample", "--model", model, "-n", "3", "--seed", "1", "--json")
    assert code == 0, err
    assert all(set(json.loads(line)["text"]) <= {"a"} for line in out.splitlines())
    code, out, _ = _run(capsys, "score", "--model", model, "aaa", "b")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and rows[0]["oov_count"] == 0 and rows[1]["oov_count"] == 1


def test_one_huge_line_without_a_newline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(1)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "log", "and"]
    lines = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(100)]
    huge = " ".join(rng.choice(words) for _ in range(1_500_000))[: 5 * 1024 * 1024]
    (tmp_path / "huge.txt").write_text("\n".join(lines) + "\n" + huge)  # no final newline
    (tmp_path / "small.txt").write_text("the cat sat\na dog on a log\n")
    small = str(tmp_path / "small.txt")
    code, out, err = _run(capsys, "corpus", str(tmp_path / "huge.txt"), "--out",
                          str(tmp_path / "c"), "--valid", small, "--test", small)  # fmt: skip
    assert code == 0, err
    stats = json.loads(out)
    assert stats["train"]["sequences"] == 101
    assert stats["train"]["characters"] >= 5 * 1024 * 1024
    # Training: the batch holding the 5M-character line is 26,000 windows of bptt 200.
    # The step limit holds inside it (it used to train the whole batch: minutes),
    # and the batch is built a window at a time (it used to pad 64 rows to 5M: GBs).
    # A warm-up run on the small corpus first, so that what training imports lazily
    # is not counted; then the huge one's peak of numpy and Python allocations
    # (tracemalloc: counts bytes asked for, the same on any CPU) stays under the
    # size of the split itself (measured 2.3 MB against 10.5 MB; the old padding: 2.6 GB).
    _run(capsys, "corpus", small, "--out", str(tmp_path / "w"))
    code, _, err = _run(capsys, "train", "--corpus", str(tmp_path / "w"), "--out",
                        str(tmp_path / "warm"), "--max-steps", "2", *TINY)  # fmt: skip
    assert code == 0, err
    tracemalloc.start()
    try:
        code, out, err = _run(capsys, "train", "--corpus", str(tmp_path / "c"), "--out",
                              str(tmp_path / "run"), "--max-steps", "6", "--ngram-order", "0",
                              *TINY)  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["steps"] == 6 and summary["stopped"] == "max_steps"
    split_bytes = (tmp_path / "c" / "train.bin").stat().st_size
    assert peak < split_bytes, (peak, split_bytes)

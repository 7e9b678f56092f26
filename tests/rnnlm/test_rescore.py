"""`rnnlm rescore`, the real command: n-best lists in Kaldi's, NeMo's and JSON lines'
shapes, weights given or tuned against references, and malformed input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import rnnlm
from rnnlm.nbest import NbestError, read_nbest
from tests.conftest import make_checkpoint

# Per utterance: hypotheses (text, acoustic cost = -ln p); the reference is the first text.
NBEST = {
    "u1": [("the cat sat on the mat.", 3.0), ("the cat sat on the hat.", 2.0),
           ("the cat sat on mat the.", 2.5)],
    "u2": [("the dog sat on the log.", 1.6), ("the dog sat on a log.", 1.5)],
    "u3": [("hello world!", 1.0), ("hello word!", 1.2)],
}  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word model whose mixture is a 3-gram of the tests' TEXT (λ 0)."""
    return make_checkpoint(tmp_path_factory.mktemp("rescore") / "m", "word", "lstm",
                           ngram_order=3, mix_weight=0.0)  # fmt: skip


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    kaldi = "".join(f"{u}-{i + 1} {t}\n" for u, hs in NBEST.items() for i, (t, _) in enumerate(hs))
    costs = "".join(f"{u}-{i + 1} {c}\n" for u, hs in NBEST.items() for i, (_, c) in enumerate(hs))
    refs = "".join(f"{u} {hs[0][0]}\n" for u, hs in NBEST.items())
    jsonl = "".join(json.dumps({"id": u, "text": t, "acoustic_logprob": -c}) + "\n"
                    for u, hs in NBEST.items() for t, c in hs)  # fmt: skip
    # NeMo: a fixed number of lines per utterance (3): u2 and u3 padded with a bad guess.
    nemo_rows = [hs + [("x", 9.0)] * (3 - len(hs)) for hs in NBEST.values()]
    nemo = "".join(f"{t}\t{-c}\n" for hs in nemo_rows for t, c in hs)
    out = {}
    for name, text in [("nbest", kaldi), ("costs", costs), ("refs", refs), ("jsonl", jsonl),
                       ("nemo", nemo), ("nemo_refs", "".join(f"{hs[0][0]}\n" for hs in
                                                             NBEST.values()))]:  # fmt: skip
        out[name] = tmp_path / name
        out[name].write_text(text, encoding="utf-8")
    return out


def rescore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rnnlm.cli", "rescore", "--no-progress", *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_given_weights_choose_and_every_score_is_written(
    model: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    scores = tmp_path / "scores.tsv"
    r = rescore(str(files["nbest"]), "--model", str(model), "--acoustic-costs",
                str(files["costs"]), "--lm-weight", "1", "--scores", str(scores))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{u} {hs[0][0]}" for u, hs in NBEST.items()]
    rows = [line.split("\t") for line in scores.read_text().splitlines()]
    assert rows[0] == ["id", "lm_log10prob", "lm_logprob", "acoustic_logprob", "words"]
    lm = rnnlm.load(model)
    texts = [t for hs in NBEST.values() for t, _ in hs]
    assert [row[0] for row in rows[1:]] == [f"{u}-{i + 1}" for u, hs in NBEST.items()
                                            for i in range(len(hs))]  # fmt: skip
    for row, text, want in zip(rows[1:], texts, lm.score_batch(texts), strict=True):
        assert float(row[1]) == pytest.approx(want, abs=1e-5)
        assert float(row[2]) == pytest.approx(want * math.log(10), abs=1e-5)
        assert int(row[4]) == len(text.split())
    # Acoustics alone (weight 0): the lowest cost wins, which is wrong twice.
    r0 = rescore(str(files["nbest"]), "--model", str(model), "--acoustic-costs",
                 str(files["costs"]), "--lm-weight", "0")  # fmt: skip
    assert r0.stdout.splitlines() == ["u1 the cat sat on the hat.", "u2 the dog sat on a log.",
                                      "u3 hello world!"]  # fmt: skip


def test_tuning_against_references(model: Path, files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "chosen"
    r = rescore(str(files["nbest"]), "--model", str(model), "--acoustic-costs",
                str(files["costs"]), "--lm-weight", "0", "--tune", str(files["refs"]),
                "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    words = sum(len(hs[0][0].split()) for hs in NBEST.values())
    assert report["reference_words"] == words and report["utterances"] == 3
    assert report["wer_before"] == pytest.approx(2 / words)  # hat, a
    assert report["wer_oracle"] == 0.0 and report["wer_after"] == 0.0
    assert report["wer_given_weights"] == report["wer_before"]
    assert report["lm_weight"] > 0
    assert out.read_text().splitlines() == [f"{u} {hs[0][0]}" for u, hs in NBEST.items()]


@pytest.mark.parametrize("fmt", ["jsonl", "nemo"])
def test_the_other_formats(model: Path, files: dict[str, Path], fmt: str) -> None:
    args = ["--format", fmt, "--tune", str(files["refs" if fmt == "jsonl" else "nemo_refs"])]
    if fmt == "nemo":
        args += ["--beam-size", "3"]
    r = rescore(str(files[fmt]), "--model", str(model), *args)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stderr[r.stderr.index("{") :])  # choices on stdout, report on stderr
    assert report["wer_after"] == 0.0 and report["wer_before"] > 0
    ids = ["u1", "u2", "u3"] if fmt == "jsonl" else ["0", "1", "2"]
    assert r.stdout.splitlines() == [f"{i} {hs[0][0]}" for i, hs in zip(ids, NBEST.values(),
                                                                      strict=True)]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "text", "fmt", "message"),
    [
        ("k", "u1-1 the cat\nnot-an-id the dog\n", "kaldi", "k:2: expected '<utt>-<n> words"),
        ("k", "u1-1 the cat\nu2-1 a\nu1-2 the\n", "kaldi", "k:3: utterance 'u1' again"),
        ("j", '{"id": "u1", "text": "a"}\n{"id": "u1"}\n', "jsonl", "j:2: 'text' must be"),
        ("j", '{"id": "u1", "text": "a"}\nnot json\n', "jsonl", "j:2: not JSON"),
        ("j", '{"id": "u", "text": "a", "acoustic_logprob": "x"}\n', "jsonl", "j:1: 'acoustic"),
        ("n", "a\t-1\nb\n", "nemo", "n:2: expected 'text<TAB>score'"),
        ("n", "a\t-1\nb\tnan\n", "nemo", "n:2: the score must be finite"),
        ("n", "a\t-1\nb\t-2\nc\t-3\n", "nemo", "3 lines are not a whole number"),
    ],
)
def test_a_malformed_line_is_named(
    tmp_path: Path, name: str, text: str, fmt: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(NbestError, match=message.replace("(", r"\(")):
        list(read_nbest(path, fmt, beam_size=2))


def test_errors_from_the_command_are_one_line(model: Path, files: dict[str, Path]) -> None:
    bad = files["costs"].parent / "bad"
    bad.write_text("u1-1 the cat\nu9-1 oops\n")
    r = rescore(str(bad), "--model", str(model), "--acoustic-costs", str(files["costs"]))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"rnnlm rescore: error: {bad}:2: no acoustic cost for 'u9-1'"
    ]
    missing = rescore(str(files["nbest"]), "--model", str(model), "--tune", str(bad))
    assert missing.returncode == 1 and "no reference for utterance 'u1'" in missing.stderr
    nemo = rescore(str(files["nemo"]), "--model", str(model), "--format", "nemo")
    assert nemo.returncode == 1 and "beam size" in nemo.stderr
    costs = rescore(str(files["jsonl"]), "--model", str(model), "--format", "jsonl",
                    "--acoustic-costs", str(files["costs"]))  # fmt: skip
    assert costs.returncode == 1 and "--acoustic-costs goes with --format kaldi" in costs.stderr
    gone = rescore(str(files["nbest"]) + ".missing", "--model", str(model))
    assert gone.returncode == 1 and "cannot be read" in gone.stderr

"""`rnnlm eval`: teacher-forced perplexity of a file, and free-running samples beside it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.tokenizers import EOS
from rnnlm.training.evaluate import evaluate_file, free_running_stats, repeated_ngrams
from tests.conftest import make_checkpoint


def test_repeated_ngrams_count_repeats_within_each_sequence() -> None:
    assert repeated_ngrams([[1, 2, 3, 4, 1, 2, 3, 4]]) == pytest.approx(1 / 5)
    assert repeated_ngrams([[1, 2, 3, 4], [1, 2, 3, 4]]) == 0  # across sequences: not a loop
    assert repeated_ngrams([[7] * 10]) == pytest.approx(6 / 7)
    assert repeated_ngrams([[1, 2, 3]]) is None  # no 4-gram at all


def test_free_running_statistics(char_checkpoint: Path) -> None:
    engine = Engine(load_checkpoint(char_checkpoint))
    lines = ["the cat sat.", "a dog"]
    stats = free_running_stats(engine, lines, n=8, max_tokens=40, seed=5)
    assert stats["samples"] == 8 and stats["max_tokens"] == 40
    assert 0 <= stats["ended_with_eos"] <= 1
    assert 0 <= stats["mean_tokens"] <= 40 and stats["input_mean_tokens"] == 8.5
    assert stats["input_repeated_4grams"] == 0
    assert stats["perplexity"] > 1
    # Reproducible: the same seed gives the same samples.
    assert free_running_stats(engine, lines, n=8, max_tokens=40, seed=5) == stats
    # The default cap is twice the longest line (+1 for <eos>).
    assert free_running_stats(engine, lines, n=2)["max_tokens"] == 25


def test_a_model_that_never_ends_runs_to_the_cap(char_checkpoint: Path) -> None:
    engine = Engine(load_checkpoint(char_checkpoint))
    assert engine.model.decoder is not None
    engine.model.decoder.bias.data[EOS] = -60.0  # (practically) never <eos>
    stats = free_running_stats(engine, ["abc"], n=4, max_tokens=30, seed=1)
    assert stats["ended_with_eos"] == 0 and stats["mean_tokens"] == 30


def test_eval_reports_the_backward_perplexity_of_bidirectional_models(tmp_path: Path) -> None:
    f = tmp_path / "in.txt"
    f.write_text("the cat sat.\n\na dog\n", encoding="utf-8")
    uni = evaluate_file(make_checkpoint(tmp_path / "uni"), f)
    assert "perplexity_backward" not in uni and "free_running" not in uni
    bi = evaluate_file(make_checkpoint(tmp_path / "bi", bidirectional=True), f, free_running=3)
    assert bi["sequences"] == 2 and bi["tokens"] == 19  # <eos> included
    engine = Engine(load_checkpoint(tmp_path / "bi"))
    back = sum(r.backward_logprob or 0 for r in engine.score_batch(["the cat sat.", "a dog"]))
    assert bi["perplexity_backward"] == pytest.approx(math.exp(-back / 19))
    assert bi["free_running"]["samples"] == 3


def test_eval_adapting_is_a_row_of_its_own(tmp_path: Path) -> None:
    from rnnlm.models.adapt import Adaptation

    f = tmp_path / "doc.txt"
    f.write_text("the cat sat on the mat.\n" * 4)
    model = make_checkpoint(tmp_path / "m", ngram_order=3)
    static = evaluate_file(model, f)
    both = evaluate_file(model, f, adapt=Adaptation(lr=0.5))
    assert "adapted" not in static
    assert {k: v for k, v in both.items() if k != "adapted"} == static  # the static figures
    row = both["adapted"]
    assert row["lr"] == 0.5 and row["decay"] == 0.0 and row["cache"] == 8192
    assert row["perplexity"] < static["perplexity"]  # the same line, read four times
    assert row["bits_per_character"] < static["bits_per_character"]
    assert row["perplexity_rnn"] < static["perplexity_rnn"]

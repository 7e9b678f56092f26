"""Fixtures the training tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnlm.training.corpus import CorpusOptions, build_corpus


@pytest.fixture(scope="module")
def char_corpus(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> Path:
    """A character corpus of the shared text file (`rnnlm corpus`, seed 1), one per module."""
    out = tmp_path_factory.mktemp("corpus") / "char"
    build_corpus([text_file], out, CorpusOptions(seed=1))
    return out

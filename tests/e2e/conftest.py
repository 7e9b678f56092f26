from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.app.conftest import make_endless


@pytest.fixture(scope="session")
def served_models(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """char (LSTM), word (GRU), endless (char, no <eos>): what the live servers serve."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(models_dir / "char", root / "char")
    shutil.copytree(models_dir / "word", root / "word")
    make_endless(root / "endless")
    return root

"""Fixtures for the service: a models directory with good, broken and never-ending models."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rnnlm.app.config import Settings
from rnnlm.app.main import create_app
from rnnlm.models.checkpoint import load_checkpoint, save_checkpoint
from rnnlm.models.tokenizers import EOS
from tests.conftest import make_checkpoint


def make_endless(directory: Path) -> Path:
    """A char model that (practically) never emits <eos>: generations run to max_tokens."""
    make_checkpoint(directory, "char", "lstm", seed=2)
    ck = load_checkpoint(directory)
    assert ck.model.decoder is not None
    ck.model.decoder.bias.data[EOS] = -60.0
    save_checkpoint(directory, ck.model, ck.tokenizer, training=ck.config["training"])
    return directory


@pytest.fixture(scope="session")
def app_models_dir(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """char (LSTM), word (GRU), endless (char, no <eos>), broken (bad config.json)."""
    root = tmp_path_factory.mktemp("app_models")
    shutil.copytree(models_dir / "char", root / "char")
    shutil.copytree(models_dir / "word", root / "word")
    make_endless(root / "endless")
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{not json", encoding="utf-8")
    (root / "notes").mkdir()  # no config.json: not a model, not listed
    return root


@pytest.fixture(scope="session")
def endless_checkpoint(app_models_dir: Path) -> Path:
    return app_models_dir / "endless"


def make_client(models: Path, **overrides: object) -> TestClient:
    settings = Settings(**{"models_dir": models, "default_model": "char", **overrides})  # type: ignore[arg-type]
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def client(app_models_dir: Path) -> Iterator[TestClient]:
    with make_client(app_models_dir) as c:
        yield c

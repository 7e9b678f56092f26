"""The service loads only sound checkpoints: altered, pickled, truncated or misshapen weights
are refused at load, named in /models and /ready, and the others are served all the same."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from rnnlm.models.checkpoint import CONFIG, WEIGHTS
from tests.app.conftest import make_client


class _Payload:
    """Unpickling this runs a shell command: it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _drop_hash(ckpt: Path) -> None:
    config = json.loads((ckpt / CONFIG).read_text())
    del config["weights_sha256"]  # past the hash check, to the parser itself
    (ckpt / CONFIG).write_text(json.dumps(config))


@pytest.fixture()
def broken_models(tmp_path: Path, char_checkpoint: Path) -> tuple[Path, Path]:
    root, marker = tmp_path / "models", tmp_path / "pwned"
    for name in ("good", "altered", "pickled", "torch_pickled", "truncated", "misshapen"):
        shutil.copytree(char_checkpoint, root / name)
    weights = root / "altered" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit of one weight
    weights.write_bytes(bytes(data))
    (root / "pickled" / WEIGHTS).write_bytes(pickle.dumps({"w": _Payload(marker)}))
    _drop_hash(root / "pickled")
    torch.save({"w": torch.zeros(2)}, root / "torch_pickled" / WEIGHTS)
    _drop_hash(root / "torch_pickled")
    w = root / "truncated" / WEIGHTS
    w.write_bytes(w.read_bytes()[:1000])
    _drop_hash(root / "truncated")
    config = json.loads((root / "misshapen" / CONFIG).read_text())
    config["model"]["hidden"] *= 2  # the weights (and their hash) are the original ones
    (root / "misshapen" / CONFIG).write_text(json.dumps(config))
    return root, marker


def test_unsound_checkpoints_are_refused_at_load(broken_models: tuple[Path, Path]) -> None:
    root, marker = broken_models
    with make_client(root, default_model="good") as c:
        listing = {m["name"]: m for m in c.get("/models").json()["models"]}
        assert listing["good"]["status"] == "ready"
        why = {
            "altered": "sha256 does not match config.json",
            "pickled": "not a valid safetensors file",
            "torch_pickled": "not a valid safetensors file",
            "truncated": "not a valid safetensors file",
            "misshapen": "weights do not fit the config",
        }
        for name, words in why.items():
            entry = listing[name]
            assert entry["status"] == "failed"
            assert entry["error"].startswith(f"{name}/{WEIGHTS}: ") and words in entry["error"]
            assert str(root) not in entry["error"]  # no server paths
            err = c.post("/score", json={"model": name, "texts": ["a"]}).json()["error"]
            assert err["code"] == "model_not_found" and words in err["message"]
        assert sorted(c.get("/ready").json()["failed"]) == sorted(why)
        assert c.post("/score", json={"model": "good", "texts": ["a"]}).status_code == 200
    assert not marker.exists(), "a pickle in the weights file was run"

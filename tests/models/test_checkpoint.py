import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from rnnlm.models.checkpoint import (
    CONFIG,
    WEIGHTS,
    atomic_directory,
    load_checkpoint,
    save_checkpoint,
)
from rnnlm.models.engine import Engine
from rnnlm.models.errors import CheckpointError
from tests.conftest import make_checkpoint


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "m", "word", "lstm")


def test_round_trip_gives_identical_scores(tmp_path: Path, ckpt: Path):
    a = load_checkpoint(ckpt)
    save_checkpoint(tmp_path / "copy", a.model, a.tokenizer, training=a.config["training"])
    b = load_checkpoint(tmp_path / "copy")
    texts = ["the cat sat.", "a zebra!"]
    assert [r.logprob for r in Engine(a).score_batch(texts)] == [
        r.logprob for r in Engine(b).score_batch(texts)
    ]
    assert b.config["model"] == a.config["model"]
    assert {p.name for p in (tmp_path / "copy").iterdir()} == {CONFIG, WEIGHTS, "vocab.json"}


def test_missing_directory_and_files_are_named(tmp_path: Path, ckpt: Path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "nope")
    (ckpt / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=f"{WEIGHTS}: missing"):
        load_checkpoint(ckpt)
    (ckpt / CONFIG).unlink()
    with pytest.raises(CheckpointError, match=f"{CONFIG}: missing"):
        load_checkpoint(ckpt)


def test_truncated_weights_are_refused(ckpt: Path):
    data = (ckpt / WEIGHTS).read_bytes()
    (ckpt / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=WEIGHTS):
        load_checkpoint(ckpt)  # the hash catches it
    with pytest.raises(CheckpointError, match=WEIGHTS):
        load_checkpoint(ckpt, verify=False)  # and so does safetensors


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/rnnlm-pwned-by-pickle",))


def test_pickled_weights_are_never_unpickled(ckpt: Path):
    marker = Path("/tmp/rnnlm-pwned-by-pickle")
    marker.unlink(missing_ok=True)
    (ckpt / WEIGHTS).write_bytes(pickle.dumps({"weight": _Payload()}))
    config = json.loads((ckpt / CONFIG).read_text())
    del config["weights_sha256"]  # get past the hash to the parser itself
    (ckpt / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    torch_pickle = ckpt / "torch.pt"
    torch.save({"w": torch.zeros(2)}, torch_pickle)
    shutil.copy(torch_pickle, ckpt / WEIGHTS)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(ckpt)


def test_weights_that_do_not_fit_the_config(tmp_path: Path, ckpt: Path):
    config = json.loads((ckpt / CONFIG).read_text())
    config["model"]["hidden"] = 64
    (ckpt / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not fit the config"):
        load_checkpoint(ckpt)


def test_hash_mismatch_and_bad_config(ckpt: Path):
    config = json.loads((ckpt / CONFIG).read_text())
    (ckpt / CONFIG).write_text(json.dumps({**config, "weights_sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        load_checkpoint(ckpt)
    (ckpt / CONFIG).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(ckpt)
    (ckpt / CONFIG).write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(ckpt)
    (ckpt / CONFIG).write_text(json.dumps({**config, "model": {**config["model"], "cell": "x"}}))
    with pytest.raises(CheckpointError, match="cell must be one of"):
        load_checkpoint(ckpt)


def test_vocabulary_mismatch(ckpt: Path):
    vocab = json.loads((ckpt / "vocab.json").read_text())
    vocab["tokens"] = vocab["tokens"][:-1]
    (ckpt / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match="vocab.json"):
        load_checkpoint(ckpt)


def test_failed_write_leaves_the_old_checkpoint(tmp_path: Path, ckpt: Path):
    before = (ckpt / WEIGHTS).read_bytes()
    with pytest.raises(RuntimeError), atomic_directory(ckpt) as tmp:
        (tmp / "partial").write_text("half")
        raise RuntimeError("crash in the middle of a save")
    assert (ckpt / WEIGHTS).read_bytes() == before
    assert [p.name for p in ckpt.parent.iterdir()] == ["m"]  # no temporary left behind
    load_checkpoint(ckpt)


def test_a_write_cut_short_by_a_crash_is_cleaned_up_by_the_next(tmp_path: Path, ckpt: Path):
    stale = tmp_path / ".m.tmp-killed"  # what SIGKILL in the middle of a save leaves
    stale.mkdir()
    (stale / WEIGHTS).write_bytes(b"half a file")
    other = tmp_path / ".other.tmp-x"  # another checkpoint's temporary: not ours to touch
    other.mkdir()
    a = load_checkpoint(ckpt)
    save_checkpoint(ckpt, a.model, a.tokenizer, training=a.config["training"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-x", "m"]


def test_crash_between_renames_is_recovered(tmp_path: Path, ckpt: Path):
    # The moment between moving the old directory aside and the new one in.
    os.rename(ckpt, ckpt.with_name(".m.old"))
    assert load_checkpoint(ckpt).tokenizer.kind == "word"
    assert ckpt.is_dir()
    # After the second rename, before the old one was removed: the new one stays.
    shutil.copytree(ckpt, ckpt.with_name(".m.old"))
    (ckpt.with_name(".m.old") / "marker").write_text("old")
    assert load_checkpoint(ckpt).tokenizer.kind == "word"
    assert not (ckpt / "marker").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m"]

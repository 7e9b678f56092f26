"""The n-gram inside a checkpoint: its file, refused when damaged, and the mixture's maths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rnnlm.models.checkpoint import CONFIG, load_checkpoint
from rnnlm.models.errors import CheckpointError
from rnnlm.models.ngram import NGRAM_FILE, NgramModel, mix_, mix_logprobs
from tests.conftest import make_checkpoint


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "m", "char", "lstm", ngram_order=4, mix_weight=0.7)


def test_a_checkpoint_carries_its_ngram_and_lambda(ckpt: Path) -> None:
    ck = load_checkpoint(ckpt)
    assert ck.ngram is not None and ck.ngram.order == 4 and ck.mix_weight == 0.7
    config = json.loads((ckpt / CONFIG).read_text())
    assert config["ngram"]["file"] == NGRAM_FILE and config["ngram"]["order"] == 4
    assert (ckpt / NGRAM_FILE).is_file()
    again = NgramModel.load(ckpt / NGRAM_FILE)
    for a, b in zip(again.logprob, ck.ngram.logprob, strict=True):
        np.testing.assert_array_equal(a, b)


def test_without_an_ngram_nothing_changes(tmp_path: Path) -> None:
    ck = load_checkpoint(make_checkpoint(tmp_path / "plain"))
    assert ck.ngram is None and ck.mix_weight == 1.0
    assert not (tmp_path / "plain" / NGRAM_FILE).exists()
    assert "ngram" not in json.loads((tmp_path / "plain" / CONFIG).read_text())


def _edit_config(ckpt: Path, **changes: object) -> None:
    config = json.loads((ckpt / CONFIG).read_text())
    config["ngram"].update(changes)
    (ckpt / CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lambda": 1.5}, "mixing weight must be a number in \\[0, 1\\], not 1.5"),
        ({"lambda": "half"}, "mixing weight"),
        ({"lambda": None}, "mixing weight"),
        ({"order": 3}, "order 4, but config.json says 3"),
        ({"file": "../elsewhere.safetensors"}, "ngram.file must be"),
        ({"sha256": "0" * 64}, "sha256 does not match"),
        ({"lambda_buckets": [0.5] * 3}, "lambda_buckets: must be a list of 48 mixing weights"),
        ({"lambda_buckets": [0.5] * 47 + [2]}, "lambda_buckets: the mixing weight must be"),
        ({"lambda_buckets": "0.5"}, "must be a list of 48"),
    ],
)
def test_inconsistent_settings_are_refused_by_name(
    ckpt: Path, change: dict[str, object], message: str
) -> None:
    _edit_config(ckpt, **change)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt)


def test_a_missing_or_truncated_file_is_refused(ckpt: Path) -> None:
    data = (ckpt / NGRAM_FILE).read_bytes()
    (ckpt / NGRAM_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(ckpt, verify=False)
    (ckpt / NGRAM_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing .config.json says the model has an n-gram"):
        load_checkpoint(ckpt)


def _forge(ckpt: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the n-gram file with `edit(arrays, metadata)` applied; fix the hash."""
    from safetensors import safe_open

    path = ckpt / NGRAM_FILE
    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    arrays = load_file(str(path))
    edit(arrays, meta)
    save_file(arrays, str(path), metadata=meta)
    _edit_config(ckpt, sha256=None)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a, m: a.update({"order2.keys": a["order2.keys"][::-1].copy()}), "not strictly"),
        (lambda a, m: a.update({"order3.keys": a["order3.keys"] * 1000}), "suffix is not stored"),
        (lambda a, m: a.pop("order2.backoff"), "arrays missing: \\['order2.backoff'\\]"),
        (lambda a, m: a.update({"order2.logprob": a["order2.logprob"][:-1]}), "differ in length"),
        (lambda a, m: a.update({"order1.logprob": a["order1.logprob"][:-1]}), "cover the"),
        (lambda a, m: a["order2.logprob"].__setitem__(0, np.nan), "must be <= 0"),
        (lambda a, m: a["order3.logprob"].__setitem__(0, 0.5), "must be <= 0"),
        (lambda a, m: a["order2.backoff"].__setitem__(0, np.inf), "must be finite"),
        (lambda a, m: a.update({"order2.keys": a["order2.keys"].astype(np.int32)}), "int32"),
        (lambda a, m: m.update({"format": "kenlm"}), "format 'kenlm'"),
        (lambda a, m: m.update({"order": "nine"}), "not an rnnlm n-gram file"),
        (lambda a, m: m.update({"vocab_size": "7"}), "order 1 must cover the 7 token ids"),
        (lambda a, m: m.update({"start_id": "3"}), "starts texts after token 3"),
    ],
)
def test_damaged_arrays_are_refused_with_what_is_wrong(ckpt: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    _forge(ckpt, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt)


def test_a_context_that_is_not_stored_is_refused(ckpt: Path) -> None:
    # Keep a trigram whose context bigram is gone: the model would have a hole.
    def edit(a, m):  # type: ignore[no-untyped-def]
        model = NgramModel.load(ckpt / NGRAM_FILE)
        V = model.vocab_size
        ctx = model.context_index(3)[0]  # the bigram that is trigram 0's context
        keep = np.ones(len(a["order2.keys"]), bool)
        keep[ctx] = False
        # Dropping a bigram renumbers those after it: renumber the trigrams' parents.
        new_index = np.cumsum(keep) - 1
        parent, oldest = a["order3.keys"] // V, a["order3.keys"] % V
        ok = keep[parent]
        a["order3.keys"] = (new_index[parent[ok]] * V + oldest[ok]).astype(np.int64)
        a["order3.logprob"] = a["order3.logprob"][ok]
        a["order3.backoff"] = a["order3.backoff"][ok]
        order4 = a["order4.keys"] // V
        a["order4.keys"] = a["order4.keys"][order4 < len(a["order3.keys"])]
        a["order4.logprob"] = a["order4.logprob"][: len(a["order4.keys"])]
        for name in ("keys", "logprob", "backoff"):
            a[f"order2.{name}"] = a[f"order2.{name}"][keep]

    _forge(ckpt, edit)
    with pytest.raises(CheckpointError, match="is not stored"):
        load_checkpoint(ckpt)


def test_mixing_is_a_mixture_of_probabilities() -> None:
    rng = np.random.default_rng(1)
    p, q = rng.dirichlet(np.ones(50), size=8), rng.dirichlet(np.ones(50), size=8)
    for lam in (0.0, 0.3, 1.0):
        mixed = mix_logprobs(np.log(p), np.log(q), lam)
        np.testing.assert_allclose(np.exp(mixed), lam * p + (1 - lam) * q, rtol=1e-12)
        np.testing.assert_allclose(np.exp(mixed).sum(axis=1), 1.0)
    assert mix_logprobs(np.array([-math.inf]), np.array([-2.0]), 0.5)[0] == pytest.approx(
        -2.0 + math.log(0.5)
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_one_mixture_takes_log_probs_or_logits_in_place(dtype: type) -> None:
    """`mix_`: from the RNN's log-probs or its logits (the softmax folded in), one λ per
    row; every mixed row sums to 1, in the array given."""
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((6, 40)) * 3).astype(dtype)
    p_rnn = np.exp(logits - logits.max(1, keepdims=True))
    p_rnn /= p_rnn.sum(1, keepdims=True)
    q = rng.dirichlet(np.ones(40), size=6).astype(dtype)
    lam = rng.uniform(0, 1, size=6)
    part = ((1 - lam)[:, None] * q).astype(dtype)
    want = np.log(lam[:, None] * p_rnn + part)
    x = logits.copy()
    out = mix_(x, lam, part, logits=True)
    assert out is x and out.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    y = np.log(p_rnn)
    np.testing.assert_allclose(mix_(y, lam, part), want, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.exp(out).sum(1), 1.0, rtol=tol)
    # Where neither model goes: ln 0 = -inf, quietly.
    z = np.array([[-np.inf, 0.0]], dtype)
    with np.errstate(all="raise"):
        got = mix_(z, np.array([0.5]), np.array([[0.0, 0.5]], dtype))
    assert got[0, 0] == -np.inf and got[0, 1] == pytest.approx(0.0)

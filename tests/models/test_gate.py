"""The mixing gate (models/gate.py): its features, its λ, what a checkpoint may hold."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlm.models.adapt import Adaptation, score_adapting
from rnnlm.models.batch import sample
from rnnlm.models.checkpoint import load_checkpoint, save_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.errors import CheckpointError
from rnnlm.models.gate import FEATURES, MixingGate, log_features
from rnnlm.models.ngram import histories_of
from rnnlm.models.ngram_next import layout_of
from rnnlm.models.sampling import SampleParams
from rnnlm.models.tokenizers import EOS
from tests.conftest import make_checkpoint

TEXTS = ["the cat sat on the mat.", "a dog", "", "zzq!"]


def prob_features(probs: np.ndarray) -> np.ndarray:
    """`log_features` of each row of P (N, V) (0 where a token is never predicted): the
    same φ from probabilities, which is how these tests state what they expect."""
    p = np.asarray(probs, np.float64)
    lp = np.log(p, out=np.full_like(p, -np.inf), where=p > 0)
    return log_features(lp)


def test_features_are_each_rows_entropy_and_peak() -> None:
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    phi = prob_features(probs)
    np.testing.assert_allclose(phi[:, 0], [math.log(4), math.log(2), 0.0], atol=1e-12)
    np.testing.assert_allclose(phi[:, 1], [math.log(0.25), math.log(0.5), 0.0], atol=1e-12)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(log_features(np.log(probs)), phi, atol=1e-12)
    assert np.isfinite(phi).all()  # tokens never predicted count as 0·ln 0 = 0


def test_a_gate_without_slopes_is_its_table(tmp_path: Path) -> None:
    table = make_checkpoint(tmp_path / "t", "char", ngram_order=4, bucket_weights=True)
    gated = make_checkpoint(tmp_path / "g", "char", ngram_order=4, bucket_weights=True, gate=True)
    config = json.loads((gated / "config.json").read_text())
    config["ngram"]["lambda_gate"]["slopes"] = [0.0] * len(FEATURES)
    (gated / "config.json").write_text(json.dumps(config))
    a, b = Engine(load_checkpoint(table)), Engine(load_checkpoint(gated))
    assert b.mix_gate is not None and a.mix_gate is None
    for x, y in zip(a.score_batch(TEXTS), b.score_batch(TEXTS), strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-6)
    x, y = a.score_batch(["the cat"], top=3)[0], b.score_batch(["the cat"], top=3)[0]
    assert x.logprob == pytest.approx(y.logprob, abs=1e-5)


def test_the_gate_reads_each_parts_whole_distribution(tmp_path: Path) -> None:
    """φ as scoring computes it (`score_components`) is each part's entropy and peak of
    its own distribution after the history, computed here from the layers and the n-gram;
    and the gate's λ moves with it (the score is not the table's)."""
    path = make_checkpoint(tmp_path / "g", "char", ngram_order=4, gate=True)
    engine = Engine(load_checkpoint(path))
    assert engine.ngram is not None and engine.model.decoder is not None
    text = "the cat sat"
    ids = [engine.start_id, *engine.tokenizer.encode(text), EOS]
    inputs = np.array([ids[:-1]], dtype=np.int64)
    with torch.no_grad():
        feats, _ = engine.model.features(torch.from_numpy(inputs))
        rnn = torch.log_softmax(engine.model.decoder(feats[0]).double(), dim=-1).numpy()
    ngram = layout_of(engine.ngram).probabilities(histories_of(inputs, engine.ngram.order)[0])
    want = np.concatenate([log_features(rnn), prob_features(ngram)], axis=1)
    ((_, _, bucket, phi),) = engine.score_components([ids[1:-1]], features=True)
    assert phi is not None
    np.testing.assert_allclose(np.array(phi), want, atol=1e-5)
    assert engine.mix_gate is not None
    lam = engine.mix_gate.weights(np.array(bucket), want[:, :2], want[:, 2:])
    table = engine.mix_table
    assert table is not None and np.abs(lam - table[bucket]).max() > 1e-3


def test_a_gate_is_refused_where_it_is_malformed(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "g", "char", ngram_order=3, gate=True)
    good = json.loads((path / "config.json").read_text())
    n = len(good["ngram"]["lambda_gate"]["bias"])
    bad_gates = [
        "not an object",
        {**good["ngram"]["lambda_gate"], "features": ["rnn_entropy"]},
        {**good["ngram"]["lambda_gate"], "bias": [0.0] * (n - 1)},
        {**good["ngram"]["lambda_gate"], "slopes": [0.0, 0.0, 0.0]},
        {**good["ngram"]["lambda_gate"], "slopes": [0.0, 0.0, 0.0, float("nan")]},
        {**good["ngram"]["lambda_gate"], "slopes": [0.0, 0.0, 0.0, True]},
        {**good["ngram"]["lambda_gate"], "bias": ["0"] * n},
    ]
    for gate in bad_gates:
        config = json.loads(json.dumps(good))
        config["ngram"]["lambda_gate"] = gate
        (path / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match="lambda_gate"):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="slopes"):
        MixingGate.from_dict({"features": list(FEATURES), "bias": [0.0], "slopes": []}, 1, "x")


def test_a_residual_model_takes_no_gate(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "r", "char", ngram_order=3, residual=True)
    gated = make_checkpoint(tmp_path / "g", "char", ngram_order=3, gate=True)
    config = json.loads((path / "config.json").read_text())
    config["ngram"]["lambda_gate"] = json.loads((gated / "config.json").read_text())["ngram"][
        "lambda_gate"
    ]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="residual"):
        load_checkpoint(path)
    residual = Engine(load_checkpoint(make_checkpoint(tmp_path / "r2", "char", ngram_order=3,
                                                      residual=True)))  # fmt: skip
    with pytest.raises(ValueError, match="residual"):
        residual.score_components([[5, 6]], features=True)


def test_every_path_mixes_with_the_gate_alike(tmp_path: Path) -> None:
    """Scoring with and without alternatives, sampling on the host and in torch, and
    scoring while adapting (its RNN a copy) all read the same gate."""
    path = make_checkpoint(tmp_path / "g", "char", ngram_order=4, bucket_weights=True, gate=True)
    engine, torch_path = Engine(load_checkpoint(path)), Engine(load_checkpoint(path), host=False)
    for text in ("the cat sat", "zzq!"):
        whole = engine.score_batch([text])[0].logprob
        assert engine.score_batch([text], top=3)[0].logprob == pytest.approx(whole, abs=1e-5)
        assert torch_path.score_batch([text])[0].logprob == pytest.approx(whole, abs=1e-5)
    p = SampleParams(max_tokens=30, seed=9, logprobs=True)
    a, b = sample(engine, "the ", p, 2), sample(torch_path, "the ", p, 2)
    assert [s.text for s in a] == [s.text for s in b]
    for x, y in zip(a, b, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
    # Adapting at a rate too small to move the RNN: the gated scores, not the table's.
    (adapted,) = score_adapting(engine, ["the cat sat"], adapt=Adaptation(lr=1e-12, cache=0))
    assert adapted.logprob == pytest.approx(engine.score_batch(["the cat sat"])[0].logprob,
                                            abs=1e-5)  # fmt: skip
    assert engine.mix_table is not None
    table = Engine(replace(load_checkpoint(path), mix_gate=None))
    assert abs(table.score_batch(["the cat sat"])[0].logprob - adapted.logprob) > 1e-3


def test_a_residual_model_with_a_gate_is_not_written(tmp_path: Path) -> None:
    gated = make_checkpoint(tmp_path / "g", "char", ngram_order=3, gate=True)
    residual = load_checkpoint(make_checkpoint(tmp_path / "r", "char", ngram_order=3,
                                               residual=True))  # fmt: skip
    info = json.loads((gated / "config.json").read_text())["ngram"]
    with pytest.raises(CheckpointError, match="residual"):
        save_checkpoint(tmp_path / "out", residual.model, residual.tokenizer, residual.ngram,
                        {"lambda": 0.5, "lambda_gate": info["lambda_gate"]})  # fmt: skip
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="gate"):
        Engine(replace(residual, mix_gate=load_checkpoint(gated).mix_gate))

"""Bidirectional models (ELMo's biLM): the backward direction, its scores and its checkpoint."""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import product
from pathlib import Path

import pytest
import torch

from rnnlm.models.batch import sample
from rnnlm.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.errors import CheckpointError
from rnnlm.models.model import RNNLM, ModelConfig
from rnnlm.models.sampling import SampleParams
from rnnlm.models.tokenizers import BOS, EOS, PAD, CharTokenizer
from rnnlm.training.data import windows, with_backward_rows
from rnnlm.training.train import LossModule
from tests.conftest import TEXT, make_checkpoint

TOK = CharTokenizer.fit(Counter("".join(TEXT)))
# Lengths 0 to 40 in one batch, so most rows are padded.
TEXTS = ["the cat sat on the mat.", "", "a", "dog", "a bird sang in the tree, and the cat sat."]


def _bidirectional(cell: str = "lstm", dropout: float = 0.2, weight_drop: float = 0.0) -> RNNLM:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=TOK.vocab_size, cell=cell, embedding=16, hidden=24, layers=2,
        dropout=dropout, weight_drop=weight_drop, tied=True, bidirectional=True,
    )  # fmt: skip
    return RNNLM(cfg).eval()


def _engine(model: RNNLM, max_batch: int = 3) -> Engine:
    return Engine(Checkpoint(Path("."), model, TOK, {"training": {"mode": "sentence"}}), max_batch)


def _backward_as_forward(bi: RNNLM) -> RNNLM:
    """A forward-only model whose forward stack (and projection) are `bi`'s backward ones."""
    fwd = RNNLM(ModelConfig(**{**bi.config.to_dict(), "bidirectional": False}))
    weights = {}
    for name, value in bi.state_dict().items():
        if name.startswith(("rnn.", "proj.")):
            continue
        weights[name.replace("rnn_backward.", "rnn.").replace("proj_backward.", "proj.")] = value
    fwd.load_state_dict(weights)
    return fwd.eval()


@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm-peephole"])
def test_backward_scores_are_the_forward_scores_of_the_reversed_text(cell: str) -> None:
    bi = _bidirectional(cell)
    assert bi.proj_backward is not None  # hidden != embedding: the projection is per direction
    back, ref = _engine(bi), _engine(_backward_as_forward(bi))
    seqs = [TOK.encode(t) for t in TEXTS]
    for bos, eos in product([True, False], repeat=2):
        got = back.score_token_ids_backward(seqs, bos=bos, eos=eos)
        # The backward model's <bos> stands for the text's end, its <eos> for its start.
        want = ref.score_token_ids([s[::-1] for s in seqs], bos=eos, eos=bos)
        fwd = back.score_token_ids(seqs, bos=bos, eos=eos)
        for (g_ids, g_lps), (w_ids, w_lps, _), (f_ids, _, _) in zip(got, want, fwd, strict=True):
            assert g_ids == w_ids
            assert g_lps == pytest.approx(w_lps, abs=1e-5)
            assert len(g_ids) == len(f_ids)  # as many predictions as the forward direction


def test_backward_scores_do_not_depend_on_the_batch() -> None:
    engine = _engine(_bidirectional())
    seqs = [TOK.encode(t) for t in TEXTS]
    together = engine.score_token_ids_backward(seqs)
    for s, (ids, lps) in zip(seqs, together, strict=True):
        alone_ids, alone_lps = engine.score_token_ids_backward([s])[0]
        assert ids == alone_ids and lps == pytest.approx(alone_lps, abs=1e-5)


def test_training_batches_reverse_each_row_within_its_own_length() -> None:
    # The loss the trainer minimises, on padded batches cut into BPTT windows that
    # carry both directions' state, is exactly what the engine scores.
    bi = _bidirectional()
    engine = _engine(bi)
    seqs = [TOK.encode(t) for t in TEXTS]
    T = max(len(s) for s in seqs) + 1
    inp = torch.full((len(seqs), T), PAD)
    tgt = torch.full((len(seqs), T), PAD)
    for row, s in enumerate(seqs):  # as training/data.py's sentence_tensors
        full = [BOS, *s, EOS]
        inp[row, : len(full) - 1] = torch.tensor(full[:-1])
        tgt[row, : len(full) - 1] = torch.tensor(full[1:])
    inp2, tgt2 = with_backward_rows(inp, tgt)  # (2B, T)
    assert inp2.shape == (2 * len(seqs), T)
    loss, nll, count, state = LossModule(bi), torch.zeros(2), 0, None
    with torch.no_grad():
        for i, t in windows(inp2, tgt2, bptt=7):
            n_w, c_w, state = loss(i, t, state)
            nll, count = nll + n_w, count + int(c_w)
    assert [s.shape[1] for s in state] == [2 * len(seqs)] * 2  # (h, c), both directions
    fwd = engine.score_token_ids(seqs)
    back = engine.score_token_ids_backward(seqs)
    assert count == sum(len(lps) for _, lps, _ in fwd) == sum(len(lps) for _, lps in back)
    assert -nll[0].item() == pytest.approx(sum(sum(lps) for _, lps, _ in fwd), abs=1e-3)
    assert -nll[1].item() == pytest.approx(sum(sum(lps) for _, lps in back), abs=1e-3)


def test_score_results_gain_backward_and_average_logprobs(tmp_path: Path) -> None:
    bi = Engine(load_checkpoint(make_checkpoint(tmp_path / "bi", bidirectional=True)))
    uni = Engine(load_checkpoint(make_checkpoint(tmp_path / "uni")))
    for r in bi.score_batch(TEXTS, per_token=True):
        (ids, lps), (f_ids, f_lps, _) = (
            bi.score_token_ids_backward([TOK.encode(r.text)])[0],
            bi.score_token_ids([TOK.encode(r.text)])[0],
        )
        assert r.backward_logprob == pytest.approx(sum(lps), abs=1e-4)
        assert r.logprob == pytest.approx(sum(f_lps), abs=1e-4)
        assert r.average_logprob == pytest.approx((r.logprob + r.backward_logprob) / 2)
        assert r.backward_logprob != pytest.approx(r.logprob)  # a model of its own
        assert r.tokens is not None and [t.logprob for t in r.tokens] == pytest.approx(f_lps)
        assert r.num_tokens == len(ids) == len(f_ids)
    empty = bi.score_batch([""], eos=False)[0]
    assert empty.backward_logprob == 0 and empty.average_logprob == 0
    r = uni.score_batch(["the cat"])[0]
    assert r.backward_logprob is None and r.average_logprob is None
    with pytest.raises(ValueError, match="no backward direction"):
        uni.score_token_ids_backward([[5, 6]])


def test_sampling_uses_the_forward_model(tmp_path: Path) -> None:
    engine = Engine(load_checkpoint(make_checkpoint(tmp_path / "bi", bidirectional=True)))
    samples = sample(engine, "the ", SampleParams(max_tokens=25, seed=3), n=4)
    prompt = engine.score_batch(["the "], eos=False)[0].logprob
    for s in samples:
        scored = engine.score_batch(["the " + s.text], eos=s.finish_reason == "eos")[0]
        assert s.logprob == pytest.approx(scored.logprob - prompt, abs=1e-3)


def test_checkpoint_round_trip_and_old_configs(tmp_path: Path) -> None:
    bi = _bidirectional(dropout=0.0)
    save_checkpoint(tmp_path / "bi", bi, TOK, training={"mode": "sentence"})
    ck = load_checkpoint(tmp_path / "bi")
    assert ck.config["model"]["bidirectional"] is True and ck.model.config.bidirectional
    for name, value in bi.state_dict().items():
        assert torch.equal(ck.model.state_dict()[name], value), name
    before = _engine(bi).score_batch(TEXTS)
    after = Engine(ck).score_batch(TEXTS)
    for a, b in zip(before, after, strict=True):
        assert b.backward_logprob == pytest.approx(a.backward_logprob, abs=1e-5)
    # A forward-only checkpoint's weights under a config that asks for a backward model.
    uni = RNNLM(ModelConfig(**{**bi.config.to_dict(), "bidirectional": False}))
    save_checkpoint(tmp_path / "uni", uni, TOK, training={"mode": "sentence"})
    config = ck.config | {"model": bi.config.to_dict()}
    config.pop("weights_sha256")
    (tmp_path / "uni" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing: .*rnn_backward"):
        load_checkpoint(tmp_path / "uni")
    old = {k: v for k, v in uni.config.to_dict().items() if k != "bidirectional"}
    assert ModelConfig.from_dict(old).bidirectional is False


def test_a_stream_mode_bidirectional_checkpoint_is_refused(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "bi", mode="stream", bidirectional=True)
    with pytest.raises(CheckpointError, match="sentence mode"):
        Engine(load_checkpoint(path))


def test_weight_drop_and_dropout_reach_the_backward_stack() -> None:
    bi = _bidirectional(dropout=0.3, weight_drop=0.5).train()
    ids = torch.randint(4, TOK.vocab_size, (3, 9))
    lp, _ = bi(ids, backward=True)
    lp[..., 5].sum().backward()
    assert bi.rnn_backward is not None
    grad = bi.rnn_backward.weight_hh_l1.grad
    assert grad is not None and 0.35 < (grad == 0).float().mean().item() < 0.65
    assert bi.rnn.weight_hh_l1.grad is None  # the forward stack took no part
    assert math.isfinite(lp.sum().item())

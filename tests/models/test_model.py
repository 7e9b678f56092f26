"""The model's regularisation: locked dropout and DropConnect on the recurrent weights."""

from __future__ import annotations

import pytest
import torch

from rnnlm.models.model import RNNLM, ModelConfig


def _model(cell: str = "lstm", dropout: float = 0.0, weight_drop: float = 0.0) -> RNNLM:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=30, cell=cell, embedding=8, hidden=16, layers=2,
        dropout=dropout, weight_drop=weight_drop, tied=False,
    )  # fmt: skip
    return RNNLM(cfg)


def test_locked_dropout_uses_one_mask_per_sequence() -> None:
    m = _model(dropout=0.5).train()
    x = torch.ones(4, 50, 16)
    y = m.locked_dropout(x)
    # Every (sequence, unit) is either dropped at all time steps or kept at all of them.
    assert torch.equal(y, y[:, :1, :].expand_as(y))
    kept = (y[:, 0, :] != 0).float().mean().item()
    assert 0.2 < kept < 0.8
    assert set(y.unique().tolist()) <= {0.0, 2.0}  # kept units are scaled by 1/(1-p)
    assert torch.equal(m.eval().locked_dropout(x), x)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "gru-simple", "lstm-peephole"])
def test_weight_drop_masks_recurrent_weights_in_training_only(cell: str) -> None:
    m = _model(cell, weight_drop=0.5)
    w_hh = dict(m.rnn.named_parameters())[m.recurrent_weight_names()[1]]
    before = w_hh.detach().clone()
    ids = torch.randint(0, 30, (3, 12))
    m.train()
    lp, state = m(ids)
    lp[..., 5].sum().backward()
    grad = w_hh.grad
    assert grad is not None
    # DropConnect: the dropped half of the matrix gets no gradient at all.
    zero = (grad == 0).float().mean().item()
    assert 0.35 < zero < 0.65
    assert torch.equal(w_hh.detach(), before)  # the stored weights are untouched
    assert [s.shape for s in state] == [(2, 3, 16)] * (2 if "lstm" in cell else 1)
    m.eval()
    a, _ = m(ids)
    b, _ = m(ids)
    assert torch.equal(a, b)
    assert not torch.allclose(a, lp)


def test_without_weight_drop_every_recurrent_weight_learns() -> None:
    m = _model().train()
    lp, _ = m(torch.randint(0, 30, (3, 12)))
    lp[..., 5].sum().backward()
    assert m.rnn.weight_hh_l1.grad is not None
    assert (m.rnn.weight_hh_l1.grad == 0).float().mean().item() < 0.05


def test_weight_drop_is_validated_and_defaults_for_old_configs() -> None:
    with pytest.raises(ValueError, match="weight_drop must be in"):
        ModelConfig(vocab_size=30, weight_drop=1.0)
    old = {"vocab_size": 30, "cell": "gru", "embedding": 8, "hidden": 16, "layers": 1,
           "dropout": 0.1, "tied": False, "adaptive_cutoffs": []}  # fmt: skip
    assert ModelConfig.from_dict(old).weight_drop == 0.0


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "gru-simple"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("rows", [1, 5])
def test_one_step_is_the_layer_on_one_token(cell: str, layers: int, rows: int) -> None:
    """`step` (the decoding path: each layer's products and gates) computes what
    `features` does."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, cell=cell, embedding=8, hidden=12, layers=layers, tied=True)
    m = RNNLM(cfg).eval()
    ids = torch.randint(4, 30, (rows, 7))
    with torch.inference_mode():
        feats, state = m.features(ids[:, :4])
        for t in range(4, 7):
            want, want_state = m.features(ids[:, t : t + 1], state)
            # The weights as stored, or transposed copies; the input table or not.
            for table, weights in [(None, None), (m.input_gate_table(), None),
                                   (None, m.decode_weights()),
                                   (m.input_gate_table(), m.decode_weights())]:  # fmt: skip
                got, got_state = m.step(ids[:, t], state, table, weights)
                torch.testing.assert_close(got, want[:, 0], atol=1e-5, rtol=1e-5)
                for a, b in zip(got_state, want_state, strict=True):
                    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            state = want_state
    if cell != "gru-simple":
        assert m.input_gate_table() is not None  # small: used
        assert m.input_gate_table(max_bytes=100) is None  # too big: not


@pytest.mark.parametrize("tied", [True, False])
def test_decoding_with_the_transposed_output_layer_gives_the_same_log_probs(tied: bool) -> None:
    torch.manual_seed(0)
    m = RNNLM(ModelConfig(vocab_size=50, embedding=12, hidden=12, tied=tied)).eval()
    out_t = m.decode_output()
    assert out_t is not None and out_t.shape == (12, 50) and out_t.is_contiguous()
    assert m.decode_output(max_bytes=100) is None  # too big to copy: not made
    feats = torch.randn(7, 12)
    with torch.inference_mode():
        torch.testing.assert_close(m.log_probs(feats, out_t), m.log_probs(feats))
    adaptive = RNNLM(ModelConfig(vocab_size=50, embedding=12, hidden=12, tied=False,
                                 adaptive_cutoffs=[10]))  # fmt: skip
    assert adaptive.decode_output() is None

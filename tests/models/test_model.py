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

"""The reference cells compute what torch's fused modules compute, and their gradients are right."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnlm.models.cells import CELLS, Cell, GRUCell, LSTMCell, PeepholeLSTMCell, RecurrentStack

FUSED = [nn.RNN, nn.GRU, nn.LSTM]


def _as_tuple(h: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return h if isinstance(h, tuple) else (h,)


@pytest.mark.parametrize("fused_cls", FUSED, ids=lambda c: c.__name__)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_stack_matches_torch(fused_cls: Any, seed: int):
    torch.manual_seed(seed)
    fused = fused_cls(5, 8, num_layers=3, batch_first=True)
    ref = RecurrentStack.from_fused(fused)
    x = torch.randn(4, 13, 5)  # (B, T, I)
    h0 = torch.randn(3, 4, 8)  # (layers, B, H)
    hx = (h0, torch.randn(3, 4, 8)) if fused_cls is nn.LSTM else h0
    out_f, h_f = fused(x, hx)
    out_r, h_r = ref(x, hx)
    assert isinstance(out_r, Tensor) and out_r.shape == (4, 13, 8)
    torch.testing.assert_close(out_r, out_f, atol=1e-5, rtol=0)
    for a, b in zip(_as_tuple(h_r), _as_tuple(h_f), strict=True):
        assert a.shape == (3, 4, 8)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # No state given: zeros, as torch.
    torch.testing.assert_close(ref(x)[0], fused(x)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fused_cls", FUSED, ids=lambda c: c.__name__)
def test_packed_sequences_end_at_each_rows_own_length(fused_cls: Any):
    torch.manual_seed(3)
    fused = fused_cls(4, 6, num_layers=2, batch_first=True)
    ref = RecurrentStack.from_fused(fused)
    x, lengths = torch.randn(5, 9, 4), torch.tensor([3, 9, 1, 6, 9])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out_f, h_f = fused(packed)
    out_r, h_r = ref(packed)
    pad_f, _ = pad_packed_sequence(out_f, batch_first=True)
    assert isinstance(out_r, PackedSequence)
    pad_r, _ = pad_packed_sequence(out_r, batch_first=True)
    torch.testing.assert_close(pad_r, pad_f, atol=1e-5, rtol=0)
    for a, b in zip(_as_tuple(h_r), _as_tuple(h_f), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def _gradcheck_cell(cell: Cell, B: int = 2) -> bool:
    """gradcheck one step with respect to the input, the state and every parameter."""
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x = torch.randn(B, cell.input_size, dtype=torch.float64, requires_grad=True)
    state = [
        torch.randn(B, cell.hidden, dtype=torch.float64, requires_grad=True)
        for _ in range(cell.state_size)
    ]

    def f(x: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        st, ps = rest[: cell.state_size], rest[cell.state_size :]
        out: tuple[Tensor, ...] = functional_call(cell, dict(zip(names, ps, strict=True)), (x, st))
        return out

    return bool(torch.autograd.gradcheck(f, (x, *state, *params)))


@pytest.mark.parametrize("name", list(CELLS))
def test_gradcheck_every_cell(name: str):
    torch.manual_seed(4)
    cell = CELLS[name](3, 4).double()
    assert _gradcheck_cell(cell)


@pytest.mark.parametrize("name", list(CELLS))
def test_gradcheck_two_layer_stack_over_time(name: str):
    torch.manual_seed(5)
    stack = RecurrentStack(name, 3, 4, num_layers=2).double()
    names = [n for n, _ in stack.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in stack.parameters()]
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)  # (B, T, I)

    def f(x: Tensor, *ps: Tensor) -> tuple[Tensor, ...]:
        out, h = functional_call(stack, dict(zip(names, ps, strict=True)), (x,))
        return (out, *_as_tuple(h))

    assert torch.autograd.gradcheck(f, (x, *params))


def test_peephole_lstm_with_zero_peepholes_is_the_lstm():
    torch.manual_seed(6)
    lstm, peep = LSTMCell(3, 5), PeepholeLSTMCell(3, 5)
    peep.load_state_dict(
        {**lstm.state_dict(), **{p: torch.zeros(5) for p in ("p_u", "p_f", "p_o")}}
    )
    x, state = torch.randn(2, 3), (torch.randn(2, 5), torch.randn(2, 5))
    for a, b in zip(peep(x, state), lstm(x, state), strict=True):
        torch.testing.assert_close(a, b)
    # The peepholes are used: the output gate sees the new cell c_t.
    with torch.no_grad():
        peep.p_o.fill_(1.0)
    a, c = peep(x, state)
    torch.testing.assert_close(c, lstm(x, state)[1])
    assert not torch.allclose(a, lstm(x, state)[0])


def test_gru_with_relevance_gate_open_is_the_simple_gru():
    torch.manual_seed(7)
    simple, full = CELLS["gru-simple"](3, 5), GRUCell(3, 5)
    H = 5
    with torch.no_grad():
        # Γr ≡ 1 (a large bias) and no extra bias: c̃ = tanh(W_c[c, x] + b_c).
        full.W_x.weight.copy_(torch.cat([torch.zeros(H, 3), simple.W_x.weight]))
        full.W_x.bias.copy_(torch.cat([torch.full((H,), 60.0), simple.W_x.bias]))
        full.W_h.weight.copy_(torch.cat([torch.zeros(H, H), simple.W_h.weight]))
        full.b_cc.zero_()
    x, state = torch.randn(2, 3), (torch.randn(2, 5),)
    torch.testing.assert_close(full(x, state)[0], simple(x, state)[0])


def test_dropout_only_between_layers():
    torch.manual_seed(8)
    x = torch.randn(2, 4, 3)
    one = RecurrentStack("lstm", 3, 4, num_layers=1, dropout=0.9).train()
    torch.testing.assert_close(one(x)[0], one.eval()(x)[0])
    two = RecurrentStack("lstm", 3, 4, num_layers=2, dropout=0.9).train()
    assert not torch.allclose(two(x)[0], two.eval()(x)[0])


def test_only_matching_fused_modules_convert():
    with pytest.raises(ValueError, match="unidirectional"):
        RecurrentStack.from_fused(nn.LSTM(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="unidirectional"):
        RecurrentStack.from_fused(nn.RNN(3, 4, nonlinearity="relu"))
    with pytest.raises(ValueError, match="cell must be one of"):
        RecurrentStack("elman", 3, 4)

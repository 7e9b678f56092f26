"""Reference recurrent cells, written from the textbook equations.

Notation (Andrew Ng's sequence-models course): x_t the input, c_t the memory
cell, a_t the output (for the RNN and GRUs a_t = c_t = h_t), σ the logistic
sigmoid, * the element-wise product, Γ a gate. A weight applied to a
concatenation splits into two blocks, W[a, x] = W_a a + W_x x, and that is how
every cell computes it:

    W_x : Linear(input, G·H)           input weights of all G gates, and their biases
    W_h : Linear(H, G·H, bias=False)   recurrent weights of all G gates

The input part W_x x_t + b does not depend on the state, so `RecurrentStack`
computes it for every time step in one matrix product; each step then adds only
the recurrent part. Gate blocks are stacked in the order each docstring names.

These cells are slower than torch's fused nn.RNN/nn.GRU/nn.LSTM (a Python loop
over time). They exist to read, to check the fused modules against
(`RecurrentStack.from_fused` copies their weights over, and the tests show both
compute the same function), and to train the two variants torch lacks:
`gru-simple` and `lstm-peephole`.
"""

from __future__ import annotations

from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

CellState = tuple[Tensor, ...]  # each (B, H); [0] is the output a_t: (h,) or (a, c)


class Cell(nn.Module):
    """One time step of a recurrent cell; subclasses write `step` from their equations."""

    gates: ClassVar[int]  # blocks of H rows in W_x and W_h
    state_size: ClassVar[int] = 1  # tensors in the state: (h,) or (a, c)

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.input_size, self.hidden = input_size, hidden
        self.W_x = nn.Linear(input_size, self.gates * hidden)
        self.W_h = nn.Linear(hidden, self.gates * hidden, bias=False)

    def reset_parameters(self) -> None:
        """U(-1/√H, 1/√H) for every weight, as torch initialises its fused cells."""
        bound = self.hidden**-0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor, state: CellState) -> CellState:
        """One step from the input: x (B, I), state -> new state."""
        return self.step(self.W_x(x), state)

    def step(self, wx: Tensor, state: CellState) -> CellState:
        """One step given the input part of every gate, wx = W_x x_t + b (B, G·H)."""
        raise NotImplementedError(f"{type(self).__name__} must define step()")


class ElmanCell(Cell):
    """Elman RNN.

        h_t = tanh(W_hh h_{t-1} + W_xh x_t + b)

    torch's nn.RNN with tanh; one gate block.
    """

    gates = 1

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__(input_size, hidden)
        self.reset_parameters()

    def step(self, wx: Tensor, state: CellState) -> CellState:
        (h,) = state
        return (torch.tanh(self.W_h(h) + wx),)


class SimpleGRUCell(Cell):
    """Simplified GRU: an update gate only, no relevance (reset) gate.

        c̃_t = tanh(W_c[c_{t-1}, x_t] + b_c)
        Γu  = σ(W_u[c_{t-1}, x_t] + b_u)
        c_t = Γu * c̃_t + (1 - Γu) * c_{t-1}

    Gate blocks: (u, c).
    """

    gates = 2

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__(input_size, hidden)
        self.reset_parameters()

    def step(self, wx: Tensor, state: CellState) -> CellState:
        (c,) = state
        u, cand = (wx + self.W_h(c)).chunk(2, dim=-1)  # each (B, H)
        gate_u, c_tilde = torch.sigmoid(u), torch.tanh(cand)
        return (gate_u * c_tilde + (1 - gate_u) * c,)


class GRUCell(Cell):
    """Full GRU, with a relevance (reset) gate Γr, in torch's formulation.

        Γr  = σ(W_r[c_{t-1}, x_t] + b_r)
        Γu  = σ(W_u[c_{t-1}, x_t] + b_u)
        c̃_t = tanh(W_cx x_t + b_c + Γr * (W_cc c_{t-1} + b_cc))
        c_t = Γu * c̃_t + (1 - Γu) * c_{t-1}

    The textbook (Cho et al. 2014, Ng) puts Γr on the state before the weight,
    c̃_t = tanh(W_c[Γr * c_{t-1}, x_t] + b_c). torch's nn.GRU (like cuDNN)
    puts it on the weighted state and its own bias b_cc, n = tanh(W_in x + b_in
    + r * (W_hn h + b_hn)): a different function, and this cell computes that
    one, so torch's weights transfer exactly. torch's update gate z keeps the
    old state, h_t = (1 - z) * n + z * h_{t-1}, so Γu = 1 - z = σ(-z_pre):
    `RecurrentStack.from_fused` negates those rows. Gate blocks: (r, u, c).
    """

    gates = 3

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__(input_size, hidden)
        self.b_cc = nn.Parameter(torch.empty(hidden))
        self.reset_parameters()

    def step(self, wx: Tensor, state: CellState) -> CellState:
        (c,) = state
        r_x, u_x, c_x = wx.chunk(3, dim=-1)  # each (B, H)
        r_h, u_h, c_h = self.W_h(c).chunk(3, dim=-1)
        gate_r, gate_u = torch.sigmoid(r_x + r_h), torch.sigmoid(u_x + u_h)
        c_tilde = torch.tanh(c_x + gate_r * (c_h + self.b_cc))
        return (gate_u * c_tilde + (1 - gate_u) * c,)


class LSTMCell(Cell):
    """LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

        Γu  = σ(W_u[a_{t-1}, x_t] + b_u)      update (input) gate
        Γf  = σ(W_f[a_{t-1}, x_t] + b_f)      forget gate
        c̃_t = tanh(W_c[a_{t-1}, x_t] + b_c)
        Γo  = σ(W_o[a_{t-1}, x_t] + b_o)      output gate
        c_t = Γu * c̃_t + Γf * c_{t-1}
        a_t = Γo * tanh(c_t)

    Gate blocks: (u, f, c, o), torch's (i, f, g, o). State (a, c).
    """

    gates = 4
    state_size = 2

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__(input_size, hidden)
        self.reset_parameters()

    def step(self, wx: Tensor, state: CellState) -> CellState:
        a, c = state
        u, f, cand, o = (wx + self.W_h(a)).chunk(4, dim=-1)  # each (B, H)
        gate_u, gate_f, gate_o = torch.sigmoid(u), torch.sigmoid(f), torch.sigmoid(o)
        c = gate_u * torch.tanh(cand) + gate_f * c
        a = gate_o * torch.tanh(c)
        return a, c


class PeepholeLSTMCell(Cell):
    """LSTM with peephole connections (Gers, Schraudolph & Schmidhuber 2002).

        Γu  = σ(W_u[a_{t-1}, x_t] + p_u * c_{t-1} + b_u)
        Γf  = σ(W_f[a_{t-1}, x_t] + p_f * c_{t-1} + b_f)
        c̃_t = tanh(W_c[a_{t-1}, x_t] + b_c)
        c_t = Γu * c̃_t + Γf * c_{t-1}
        Γo  = σ(W_o[a_{t-1}, x_t] + p_o * c_t + b_o)
        a_t = Γo * tanh(c_t)

    p_u, p_f, p_o are one weight per unit (diagonal peephole matrices). The
    update and forget gates look at the old cell c_{t-1}; the output gate looks
    at the new cell c_t, which exists by the time it is computed: the choice of
    Gers et al. and of Graves (2013, eqs. 7-11). Gate blocks: (u, f, c, o).
    """

    gates = 4
    state_size = 2

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__(input_size, hidden)
        self.p_u = nn.Parameter(torch.empty(hidden))
        self.p_f = nn.Parameter(torch.empty(hidden))
        self.p_o = nn.Parameter(torch.empty(hidden))
        self.reset_parameters()

    def step(self, wx: Tensor, state: CellState) -> CellState:
        a, c_prev = state
        u, f, cand, o = (wx + self.W_h(a)).chunk(4, dim=-1)  # each (B, H)
        gate_u = torch.sigmoid(u + self.p_u * c_prev)
        gate_f = torch.sigmoid(f + self.p_f * c_prev)
        c = gate_u * torch.tanh(cand) + gate_f * c_prev
        gate_o = torch.sigmoid(o + self.p_o * c)
        a = gate_o * torch.tanh(c)
        return a, c


CELLS: dict[str, type[Cell]] = {
    "rnn": ElmanCell,
    "gru-simple": SimpleGRUCell,
    "gru": GRUCell,
    "lstm": LSTMCell,
    "lstm-peephole": PeepholeLSTMCell,
}
_FUSED_MODES = {"RNN_TANH": "rnn", "GRU": "gru", "LSTM": "lstm"}


class RecurrentStack(nn.Module):
    """Layers of one reference cell, called like torch's fused modules with batch_first.

        output, h_n = stack(x, h_0)                  (h,) cells: rnn, gru, gru-simple
        output, (h_n, c_n) = stack(x, (h_0, c_0))    (a, c) cells: lstm, lstm-peephole

    x (B, T, I) or a PackedSequence; output (B, T, H) (packed if x was);
    states (layers, B, H), zeros when not given. With packed input each row's
    final state is the one after its own last step. Dropout between layers,
    not after the last, as in torch.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, not {cell!r}")
        if not batch_first:
            raise ValueError("RecurrentStack takes batch_first input only")
        cls = CELLS[cell]
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.state_size = cls.state_size
        self.dropout = dropout
        self.layers = nn.ModuleList(
            cls(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )

    def forward(
        self, x: Tensor | PackedSequence, hx: Tensor | CellState | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor | CellState]:
        lengths: Tensor | None = None
        packed = isinstance(x, PackedSequence)
        if isinstance(x, PackedSequence):
            x, lengths = pad_packed_sequence(x, batch_first=True)  # original row order
        B = x.shape[0]
        if hx is None:
            zeros = x.new_zeros(self.num_layers, B, self.hidden_size)
            hx = tuple(zeros for _ in range(self.state_size))
        states = (hx,) if isinstance(hx, Tensor) else hx  # each (layers, B, H)
        finals: list[CellState] = []
        out = x  # (B, T, I)
        for i, cell in enumerate(self.layers):
            if i > 0:
                out = F.dropout(out, self.dropout, self.training)
            out, final = _run_layer(cast(Cell, cell), out, tuple(s[i] for s in states), lengths)
            finals.append(final)  # out (B, T, H)
        h_n = tuple(torch.stack(parts) for parts in zip(*finals, strict=True))  # (layers, B, H)
        result: Tensor | PackedSequence = out
        if packed:
            assert lengths is not None
            result = pack_padded_sequence(out, lengths, batch_first=True, enforce_sorted=False)
        return result, (h_n[0] if self.state_size == 1 else h_n)

    @classmethod
    def from_fused(cls, fused: nn.RNNBase) -> RecurrentStack:
        """A stack computing exactly what torch's nn.RNN (tanh), nn.GRU or nn.LSTM computes.

        torch keeps two biases per gate, b_ih + b_hh; the reference cells keep
        their sum, except the GRU candidate's b_hn, which sits inside Γr * (...).
        """
        cell = _FUSED_MODES.get(fused.mode)
        if cell is None or fused.bidirectional or fused.proj_size or not fused.bias:
            raise ValueError(
                f"only unidirectional {', '.join(_FUSED_MODES)} modules with biases and no "
                f"projection have a reference stack, not {fused}"
            )
        stack = cls(cell, fused.input_size, fused.hidden_size, fused.num_layers, fused.dropout)
        w0 = fused.all_weights[0][0]  # weight_ih_l0
        stack.to(device=w0.device, dtype=w0.dtype)
        H = fused.hidden_size
        with torch.no_grad():
            for k, layer in enumerate(stack.layers):
                ref = cast(Cell, layer)
                w_ih, w_hh = getattr(fused, f"weight_ih_l{k}"), getattr(fused, f"weight_hh_l{k}")
                b_ih, b_hh = getattr(fused, f"bias_ih_l{k}"), getattr(fused, f"bias_hh_l{k}")
                if isinstance(ref, GRUCell):
                    sign = torch.ones(3 * H, dtype=w_ih.dtype, device=w_ih.device)
                    sign[H : 2 * H] = -1.0  # Γu = 1 - z = σ(-z_pre)
                    bias = torch.cat([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :]])
                    ref.W_x.weight.copy_(sign[:, None] * w_ih)
                    ref.W_x.bias.copy_(sign * bias)
                    ref.W_h.weight.copy_(sign[:, None] * w_hh)
                    ref.b_cc.copy_(b_hh[2 * H :])
                else:
                    ref.W_x.weight.copy_(w_ih)
                    ref.W_x.bias.copy_(b_ih + b_hh)
                    ref.W_h.weight.copy_(w_hh)
        return stack


def _run_layer(
    cell: Cell, x: Tensor, state: CellState, lengths: Tensor | None
) -> tuple[Tensor, CellState]:
    """x (B, T, I), state each (B, H) -> outputs (B, T, H), final state.

    With `lengths` (B,), a row's state stops changing after its last step.
    """
    wx = cell.W_x(x)  # (B, T, G·H): the input part of every gate, all steps at once
    alive = None
    if lengths is not None:
        steps = torch.arange(x.shape[1], device=x.device)
        alive = (steps.unsqueeze(0) < lengths.to(x.device).unsqueeze(1)).unsqueeze(-1)  # (B, T, 1)
    outs = [state[0].new_zeros(x.shape[0], 0, cell.hidden)]  # T may be 0
    # unbind, not wx[:, t]: its backward is one stack, not T zero-filled (B, T, G·H) tensors.
    for t, wx_t in enumerate(wx.unbind(dim=1)):
        new = cell.step(wx_t, state)
        if alive is not None:
            new = tuple(torch.where(alive[:, t], n, s) for n, s in zip(new, state, strict=True))
        state = new
        outs.append(state[0].unsqueeze(1))  # (B, 1, H)
    return torch.cat(outs, dim=1), state

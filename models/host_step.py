"""A decoding step of the fused recurrent cells on the CPU, with as few torch calls as it takes.

The one CPU implementation of a recurrent layer's step (`_layer_step`): sampling
steps every layer with it (`step`), and scoring and prefill run the first layer
of a window with it (`run`). Training, and every other device, use torch's fused
modules (models/model.py); models/cells.py has the reference equations that the
tests hold both to.

On the CPU a decoding step is, per layer, one or two small matrix products and a
dozen elementwise operations on (B, H) blocks. For a few rows the products are
the only real work, and torch's per-call cost (dispatch, a fresh tensor, the GIL
let go and taken back) was most of the rest. So here each layer is its products
(torch's BLAS or numpy's, whichever ran that weight faster on this CPU:
models/blas.py), one sigmoid over all its sigmoid gates (torch's kernel, in place
on the same memory), and numpy for the rest, in place where it can be: its calls
cost a fraction of torch's. The output layer's product is chosen the same way.
docs/measured.md ("Why the CPU path is shaped as it is") has the timings behind
each of these choices.

The weights are prepared once per loaded checkpoint: transposed contiguous copies
(torch's product is 20–30% faster on a contiguous right operand), an LSTM's gates
reordered (input, forget, output, cell) so its three sigmoids are one call, the
two bias vectors added into one where the cell allows it (not a GRU's candidate
gate, whose hidden bias is scaled by the reset gate), and the first layer's input
projection of every token looked up from a table where it fits.

The arithmetic is `RNNLM.features`'s to within rounding (the products' order and
the folded biases: about 1e-7); a row's numbers never depend on the other rows,
only the products' rounding on the batch's shape, as everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnlm.models.blas import Choice, Product
from rnnlm.models.model import RNNLM, State

_TABLE_MAX_BYTES = 8 << 20  # the first layer's input table: small vocabularies only
_OUTPUT_MAX_BYTES = 64 << 20  # the output layer's transposed copy: not for huge vocabularies


@dataclass
class _Layer:
    # x @ W_ih + b_in: W_ih (I, G·H) transposed, gates reordered for an LSTM; b_in is
    # b_ih, plus b_hh where it is added to the input's part.
    ih: Product
    # h @ W_hh (H, G·H), added to the input's part; a GRU's keeps its own bias b_hh.
    hh: Product


class HostStep:
    """The CPU's step of a fused RNN, GRU or LSTM, and its pass over a window (see the
    module's docstring), from a model's weights prepared once."""

    def __init__(self, model: RNNLM, blas: Choice = "auto") -> None:
        """`blas`: which library multiplies (models/blas.py): timed per weight ("auto"),
        or always torch's or numpy's."""
        rnn = model.rnn
        assert isinstance(rnn, nn.RNN | nn.GRU | nn.LSTM)
        c = model.config
        self.kind = c.cell  # "rnn", "gru" or "lstm"
        self.hidden = H = c.hidden
        gates = {"rnn": 1, "gru": 3, "lstm": 4}[self.kind]
        # Torch's LSTM gates are (i, f, g, o); here (i, f, o, g): one sigmoid over 3H.
        order = torch.arange(gates * H)
        if self.kind == "lstm":
            order = torch.cat([order[: 2 * H], order[3 * H :], order[2 * H : 3 * H]])
        self.layers: list[_Layer] = []
        with torch.no_grad():
            for k in range(c.layers):
                w_ih = getattr(rnn, f"weight_ih_l{k}")[order]
                w_hh = getattr(rnn, f"weight_hh_l{k}")[order]
                b_ih = getattr(rnn, f"bias_ih_l{k}")[order]
                b_hh = getattr(rnn, f"bias_hh_l{k}")[order]
                gru = self.kind == "gru"
                self.layers.append(
                    _Layer(
                        Product(w_ih.t().contiguous(), b_ih if gru else b_ih + b_hh, blas),
                        Product(w_hh.t().contiguous(), b_hh if gru else None, blas),
                    )
                )
            first = self.layers[0].ih
            emb = model.embed.weight
            # (V, G·H): every token's share of the first layer's gates, its bias included.
            fits = c.vocab_size * first.weight.shape[1] * emb.element_size() <= _TABLE_MAX_BYTES
            assert first.bias is not None
            self.table: np.ndarray[Any, Any] | None = (
                torch.addmm(first.bias, emb, first.weight).numpy() if fits else None
            )
            self.embed = emb.detach().numpy()  # (V, E), a view, for vocabularies past the table
            proj = model.proj
            self.proj = (
                None if proj is None else Product(proj.weight.t().contiguous(), proj.bias, blas)
            )
            # The output layer (F, V), transposed: None with the adaptive softmax, or for a
            # vocabulary too large to copy (the engine then uses `RNNLM.log_probs`).
            dec = model.decoder
            big = dec is None or dec.weight.numel() * dec.weight.element_size() > _OUTPUT_MAX_BYTES
            self.output = (
                None if dec is None or big else Product(dec.weight.t().contiguous(), dec.bias, blas)
            )
        # Scoring's upper layers (`run`): each a one-layer fused module over the stored
        # weights themselves (no copy), which multiplies a window's inputs in one product
        # and loops in C++ (layer 1 of the demo's two: about as fast as the stack's own call).
        self.upper: list[nn.Module] = []
        for k in range(1, c.layers):
            one = type(rnn)(H, H, 1, batch_first=False)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                setattr(one, f"{name}_l0", getattr(rnn, f"{name}_l{k}"))
            self.upper.append(one.eval())

    @property
    def scores(self) -> bool:
        """Whether scoring's windows of many rows are faster through `run` than through
        torch's fused layer: where the table replaces an input product at least as large
        as the hidden one (embedding >= hidden). With a narrower embedding the two were
        even, and the fused layer is kept (docs/measured.md)."""
        return self.table is not None and self.embed.shape[1] >= self.hidden

    @classmethod
    def of(cls, model: RNNLM, blas: Choice = "auto") -> HostStep | None:
        """The host step for `model`, or None where it does not apply (not a fused cell, or
        not on the CPU): the engine then runs the model's own modules."""
        if not isinstance(model.rnn, nn.RNN | nn.GRU | nn.LSTM):
            return None
        if next(model.parameters()).device.type != "cpu":
            return None
        return cls(model, blas)

    def step(self, ids: np.ndarray[Any, Any], state: State) -> tuple[Tensor, State]:
        """ids (B,) -> features (B, out_features), the new state (each (layers, B, H))."""
        h_prev = state[0].numpy()  # (L, B, H), shared with the tensor
        c_prev = state[1].numpy() if self.kind == "lstm" else None
        new_h = np.empty_like(h_prev)
        new_c = np.empty_like(h_prev) if c_prev is not None else None
        x: np.ndarray[Any, Any] | None = None
        for k, layer in enumerate(self.layers):
            if k == 0 and self.table is not None:
                gi = self.table[ids]  # (B, G·H), a copy: the products add into it
            else:
                inp = self.embed[ids] if x is None else x  # the layer below's output after 0
                gi = layer.ih(inp)
            c_k, new_c_k = (
                (None, None) if c_prev is None or new_c is None else (c_prev[k], new_c[k])
            )
            x = self._layer_step(layer, gi, h_prev[k], c_k, new_h[k], new_c_k)
        assert x is not None
        feats = torch.from_numpy(x)  # (B, H): the last layer's, a view of the new state
        if self.proj is not None:
            feats = torch.from_numpy(self.proj(x))  # (B, E)
        if new_c is None:
            return feats, (torch.from_numpy(new_h),)
        return feats, (torch.from_numpy(new_h), torch.from_numpy(new_c))

    def _layer_step(
        self,
        layer: _Layer,
        gi: np.ndarray[Any, Any],
        h_prev: np.ndarray[Any, Any],
        c_prev: np.ndarray[Any, Any] | None,
        h: np.ndarray[Any, Any],
        c: np.ndarray[Any, Any] | None,
    ) -> np.ndarray[Any, Any]:
        """One layer, one time step: the input's part of the gates gi (B, G·H)
        (overwritten), the previous h (and an LSTM's c) (B, H) -> the new h (and c),
        written in place; returns h. The one CPU step, for `step` and `run` alike."""
        if self.kind == "lstm":
            assert c_prev is not None and c is not None
            layer.hh.add_to(gi, h_prev)
            return _lstm_gates(gi, c_prev, h, c, self.hidden)
        if self.kind == "gru":
            return _gru_gates(gi, layer.hh(h_prev), h_prev, h, self.hidden)
        layer.hh.add_to(gi, h_prev)
        return _tanh(gi, h)

    def log_probs(self, feats: Tensor) -> Tensor:
        """features (B, F) -> the next token's log-probabilities (B, V): the output layer's
        product here, torch's log-softmax on it. Only with `output` (not None)."""
        assert self.output is not None
        logits = self.output(np.ascontiguousarray(feats.numpy()))
        return torch.log_softmax(torch.from_numpy(logits), dim=-1)

    def run(self, ids: np.ndarray[Any, Any], state: State) -> tuple[Tensor, State]:
        """ids (B, T) -> features (B, T, out_features), the state after the last step.

        A pass over a window of time steps, for scoring and prefill: the first layer
        step by step (`_layer_step`), its input part every step's table row (torch's
        fused layer would multiply the embeddings by W_ih: as much work again as the
        hidden products) or, without the table, one product over the window; the upper
        layers by torch's fused modules on the window at once (their input products are
        one product over the window there, and the loop is in C++).
        """
        B, T = ids.shape
        H, lstm = self.hidden, self.kind == "lstm"
        layer = self.layers[0]
        time_major = np.ascontiguousarray(ids.T)  # (T, B)
        if self.table is not None:
            gi = self.table[time_major]  # (T, B, G·H), a copy
        else:
            gi = layer.ih(self.embed[time_major.reshape(-1)]).reshape(T, B, -1)
        out = np.empty((T, B, H), np.float32)  # the first layer's outputs
        h_prev = state[0][0].numpy()  # (B, H)
        c_prev = state[1][0].numpy() if lstm else None
        # A step reads the last cell while it writes this one: two buffers, in turn.
        cells = (np.empty((B, H), np.float32), np.empty((B, H), np.float32)) if lstm else None
        for t in range(T):
            c = None if cells is None else cells[t % 2]
            self._layer_step(layer, gi[t], h_prev, c_prev, out[t], c)
            h_prev, c_prev = out[t], c
        x = torch.from_numpy(out)  # (T, B, H)
        hs = [torch.from_numpy(h_prev.copy())]
        cs = [torch.from_numpy(c_prev.copy())] if c_prev is not None else []
        for k, one in enumerate(self.upper, start=1):
            if lstm:
                x, (hk, ck) = one(x, (state[0][k : k + 1], state[1][k : k + 1]))
                cs.append(ck[0])
            else:
                x, hk = one(x, state[0][k : k + 1])
            hs.append(hk[0])
        if self.proj is not None:
            flat = x.reshape(T * B, H).numpy()
            x = torch.from_numpy(self.proj(flat)).reshape(T, B, -1)
        if not lstm:
            return x.transpose(0, 1), (torch.stack(hs),)
        return x.transpose(0, 1), (torch.stack(hs), torch.stack(cs))


def _sigmoid_(a: np.ndarray[Any, Any]) -> None:
    """a <- sigmoid(a), in place, with torch's kernel on the same memory: numpy's
    1/(1 + exp(-x)) is four calls, and its exp has no wide SIMD path without AVX-512."""
    torch.from_numpy(a).sigmoid_()


def _tanh(a: np.ndarray[Any, Any], out: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """out <- tanh(a), numpy's: the cheaper of the two on every CPU measured."""
    np.tanh(a, out=out)
    return out


def _lstm_gates(
    gates: np.ndarray[Any, Any],
    c_prev: np.ndarray[Any, Any],
    h: np.ndarray[Any, Any],
    c: np.ndarray[Any, Any],
    H: int,
) -> np.ndarray[Any, Any]:
    """gates (B, 4H) as (i, f, o, g), pre-activation -> h, c (B, H) written in place."""
    sig = gates[:, : 3 * H]
    _sigmoid_(sig)
    _tanh(gates[:, 3 * H :], c)  # g
    c *= sig[:, :H]  # i·g
    c += sig[:, H : 2 * H] * c_prev  # + f·c
    _tanh(c, h)
    h *= sig[:, 2 * H :]  # o·tanh(c)
    return h


def _gru_gates(
    gi: np.ndarray[Any, Any],
    gh: np.ndarray[Any, Any],
    h_prev: np.ndarray[Any, Any],
    h: np.ndarray[Any, Any],
    H: int,
) -> np.ndarray[Any, Any]:
    """The input's and the hidden state's parts (B, 3H) as (r, z, n) -> h (B, H) in place."""
    rz = gi[:, : 2 * H]
    rz += gh[:, : 2 * H]
    _sigmoid_(rz)
    n = gh[:, 2 * H :]
    n *= rz[:, :H]  # r·(W_hn h + b_hn)
    n += gi[:, 2 * H :]
    _tanh(n, n)
    np.subtract(h_prev, n, out=h)  # (1 - z)·n + z·h = n + z·(h - n)
    h *= rz[:, H:]
    h += n
    return h

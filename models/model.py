"""The recurrent language model.

    ids (B, T) ─ embedding ─ dropout ─ RNN/GRU/LSTM × layers ─ dropout ─ [proj]
               ─ output layer ─ log-probs (B, T, V)

Regularisation follows AWD-LSTM (Merity et al., 2017), because a small corpus
is overfitted within minutes: the dropout on the embeddings and on the
recurrent output is *locked* (variational: one mask per sequence, the same at
every time step), and `weight_drop` applies DropConnect to the hidden-to-hidden
matrices, which regularises the recurrence itself without touching the fused
kernel. Both act in training only.

The recurrent layers are torch's fused `nn.RNN`/`nn.GRU`/`nn.LSTM`. The output
layer is either a full softmax whose weight may be tied to the embedding (a
projection makes tying possible when `hidden != embedding`), or torch's
`AdaptiveLogSoftmaxWithLoss`, which gives exact probabilities while spending
most of its work on the frequent words: the right choice for large vocabularies
on a CPU.

The recurrent state is a tuple of tensors, each (layers, B, hidden): `(h, c)`
for an LSTM, `(h,)` otherwise, so code that batches sequences can treat every
cell alike along dimension 1.

`gru-simple` and `lstm-peephole`, which torch lacks, run the reference cells of
`models/cells.py` instead: slower, called the same way, same state layout.

`bidirectional` adds a backward language model, as ELMo's biLM (Peters et al.,
2018) does: a second recurrent stack (and projection) of its own, the same
embedding and output layer. The backward model is a forward model of reversed
text: it scores `<bos> tn … t1 <eos>` exactly as the forward one scores
`<bos> t1 … tn <eos>`, so `features(ids, backward=True)` takes ids already
reversed (each row within its own length), and both directions make the same
number of predictions per sequence.

    ids <bos> t1 … tn           ─ embedding ─ forward stack  ─ [proj]  ─ output ─ t1 … tn <eos>
    reversed ids <bos> tn … t1  ─ embedding ─ backward stack ─ [proj'] ─ output ─ tn … t1 <eos>
                                  (shared)                              (shared)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlm.models.cells import RecurrentStack
from rnnlm.models.errors import CheckpointError

State = tuple[Tensor, ...]
CELLS = ("rnn", "gru", "lstm", "gru-simple", "lstm-peephole")  # the last two: models/cells.py


@dataclass
class ModelConfig:
    vocab_size: int
    cell: str = "lstm"
    embedding: int = 256
    hidden: int = 512
    layers: int = 2
    dropout: float = 0.2
    # DropConnect on the hidden-to-hidden weights (training only).
    weight_drop: float = 0.0
    tied: bool = True
    # Adaptive softmax cluster boundaries (ascending, < vocab_size); empty = full softmax.
    adaptive_cutoffs: list[int] = field(default_factory=list)
    # A backward model beside the forward one (ELMo's biLM); False in older checkpoints.
    bidirectional: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.cell not in CELLS:
            problems.append(f"cell must be one of {', '.join(CELLS)}, not {self.cell!r}")
        if self.vocab_size < 5:
            problems.append(f"vocab_size must be at least 5, not {self.vocab_size}")
        for name in ("embedding", "hidden", "layers"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("dropout", "weight_drop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), not {getattr(self, name)}")
        cutoffs = self.adaptive_cutoffs
        if cutoffs:
            if self.tied:
                problems.append("tied embeddings and an adaptive softmax cannot be combined")
            if cutoffs != sorted(set(cutoffs)) or cutoffs[0] <= 0 or cutoffs[-1] >= self.vocab_size:
                problems.append(
                    f"adaptive_cutoffs must be increasing and inside (0, {self.vocab_size}), "
                    f"not {cutoffs}"
                )
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"unknown model settings: {', '.join(sorted(unknown))}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"bad model settings: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def out_features(self) -> int:
        """Width of the vector the output layer reads."""
        return self.embedding if self.tied else self.hidden


class RNNLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.embedding)
        self.rnn = self._recurrent_stack()
        self.proj = self._projection()
        self.adaptive: nn.AdaptiveLogSoftmaxWithLoss | None = None
        self.decoder: nn.Linear | None = None
        if c.adaptive_cutoffs:
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(
                c.out_features, c.vocab_size, c.adaptive_cutoffs, div_value=4.0
            )
        else:
            self.decoder = nn.Linear(c.out_features, c.vocab_size)
            if c.tied:
                self.decoder.weight = self.embed.weight
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        if self.decoder is not None:
            nn.init.zeros_(self.decoder.bias)
        # Built last, so a forward-only model draws the same initial weights as before.
        self.rnn_backward = self._recurrent_stack() if c.bidirectional else None
        self.proj_backward = self._projection() if c.bidirectional else None

    def _recurrent_stack(self) -> nn.Module:
        c = self.config
        fused = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
        rnn_cls = fused.get(c.cell) or partial(RecurrentStack, c.cell)  # models/cells.py
        stack: nn.Module = rnn_cls(
            c.embedding,
            c.hidden,
            num_layers=c.layers,
            dropout=c.dropout if c.layers > 1 else 0.0,
            batch_first=True,
        )
        return stack

    def _projection(self) -> nn.Linear | None:
        """hidden -> embedding, so the decoder can be tied to the embedding."""
        c = self.config
        return nn.Linear(c.hidden, c.embedding) if c.tied and c.hidden != c.embedding else None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        c = self.config
        zeros = torch.zeros(c.layers, batch_size, c.hidden, device=device)
        return (zeros, zeros.clone()) if c.cell in ("lstm", "lstm-peephole") else (zeros,)

    def features(
        self, ids: Tensor, state: State | None = None, backward: bool = False
    ) -> tuple[Tensor, State]:
        """Run a recurrent stack: ids (B, T) -> features (B, T, out_features), new state.

        `backward`: the backward stack, on ids already reversed (`<bos> tn … t1`).
        """
        rnn, proj = self.rnn, self.proj
        if backward:
            if self.rnn_backward is None:
                raise ValueError("this model has no backward direction (bidirectional is off)")
            rnn, proj = self.rnn_backward, self.proj_backward
        x = self.locked_dropout(self.embed(ids))  # (B, T, E)
        if state is None:
            state = self.init_state(ids.shape[0], ids.device)
        hx = (state[0], state[1]) if len(state) == 2 else state[0]  # (h, c) or h
        if self.training and self.config.weight_drop > 0:
            # A fresh DropConnect mask per forward pass, swapped in for the stored
            # weights only for this call, so the fused kernel still runs.
            params = dict(rnn.named_parameters())
            dropped = {
                name: F.dropout(params[name], self.config.weight_drop)
                for name in self.recurrent_weight_names()
            }
            out, hn = torch.func.functional_call(rnn, dropped, (x, hx))  # out (B, T, H)
        else:
            out, hn = rnn(x, hx)
        new_state: State = tuple(hn) if len(state) == 2 else (hn,)
        out = self.locked_dropout(out)
        if proj is not None:
            out = proj(out)  # (B, T, E)
        return out, new_state

    def input_gate_table(self, max_bytes: int = 8 << 20) -> Tensor | None:
        """The first layer's input projection of every token, embedding @ W_ih^T + b_ih:
        (V, gates·H), or None where it would take more than `max_bytes` (large
        vocabularies) or the cell is not a fused one. With it a decoding step looks up
        a row instead of multiplying by W_ih: half the weights read per step (a
        1×256 LSTM on one row: 73 µs a step against 32 µs, measured here)."""
        rnn = self.rnn
        if not isinstance(rnn, nn.RNN | nn.GRU | nn.LSTM):
            return None
        w_ih, b_ih = getattr(rnn, "weight_ih_l0"), getattr(rnn, "bias_ih_l0")  # noqa: B009
        if self.config.vocab_size * w_ih.shape[0] * w_ih.element_size() > max_bytes:
            return None
        with torch.no_grad():
            return torch.addmm(b_ih, self.embed.weight, w_ih.t())  # (V, G·H)

    def decode_weights(self) -> list[tuple[Tensor, Tensor]] | None:
        """Per layer of a fused stack, (W_ihᵀ, W_hhᵀ) as contiguous copies, for `step`:
        torch's addmm runs 20-30% faster on a contiguous right operand than on the
        transposed view of the stored weight (a 1×256 LSTM's hidden-to-hidden product:
        27 against 18 µs on one row, 187 against 151 µs on 32, one thread, measured
        here). None for the reference cells. Copies: they do not follow later
        changes to the weights (the engine makes them once per loaded checkpoint)."""
        rnn = self.rnn
        if not isinstance(rnn, nn.RNN | nn.GRU | nn.LSTM):
            return None
        with torch.no_grad():
            return [
                (
                    getattr(rnn, f"weight_ih_l{k}").t().contiguous(),
                    getattr(rnn, f"weight_hh_l{k}").t().contiguous(),
                )
                for k in range(self.config.layers)
            ]

    def step(
        self,
        ids: Tensor,
        state: State,
        input_gates: Tensor | None = None,
        weights: list[tuple[Tensor, Tensor]] | None = None,
    ) -> tuple[Tensor, State]:
        """One token for every row, for decoding: ids (B,) -> features (B, out_features), state.

        The same maths as `features` on a (B, 1) input, at inference, but for the fused
        cells written out layer by layer, two matrix products and the gates' arithmetic
        each: a fused multi-step layer pays a set-up cost per call that dwarfs one
        step's work (measured here: 400 µs against 66 µs for a 1×256 LSTM on one row,
        811 against 314 µs on 32 rows), and torch's single-step `lstm_cell` was slower
        still than the products and gates written out (540 against ~240 µs on 32 rows).
        `input_gates` (from `input_gate_table`) replaces the first layer's input
        projection; `weights` (from `decode_weights`) are its transposed weights.
        The engine takes this path off the CPU; on the CPU, models/host_step.py's.
        """
        rnn = self.rnn
        if self.training or not isinstance(rnn, nn.RNN | nn.GRU | nn.LSTM):
            feats, new_state = self.features(ids.unsqueeze(1), state)
            return feats[:, -1], new_state
        lstm, gru = isinstance(rnn, nn.LSTM), isinstance(rnn, nn.GRU)
        x = self.embed(ids) if input_gates is None else ids  # (B, E)
        hs, cs = [], []
        for k in range(self.config.layers):
            b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
            if weights is not None:
                w_ih_t, w_hh_t = weights[k]
            else:
                w_ih_t = getattr(rnn, f"weight_ih_l{k}").t()
                w_hh_t = getattr(rnn, f"weight_hh_l{k}").t()
            h_prev = state[0][k]  # (B, H)
            if k == 0 and input_gates is not None:
                # (B, G·H): the input's share of every gate, b_ih included (index_select:
                # a third of the time of input_gates[ids] on 32 rows).
                gi = torch.index_select(input_gates, 0, ids)
            else:
                gi = torch.addmm(b_ih, x, w_ih_t)  # (B, G·H)
            gh = torch.addmm(b_hh, h_prev, w_hh_t)  # (B, G·H)
            if lstm:
                i, f, g, o = gi.add_(gh).chunk(4, 1)
                c = torch.addcmul(torch.sigmoid(f) * state[1][k], torch.sigmoid(i), torch.tanh(g))
                h = torch.sigmoid(o) * torch.tanh(c)
                cs.append(c)
            elif gru:
                i_r, i_z, i_n = gi.chunk(3, 1)
                h_r, h_z, h_n = gh.chunk(3, 1)
                r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
                n = torch.tanh(i_n + r * h_n)
                h = n + z * (h_prev - n)  # (1 - z)·n + z·h
            else:
                h = torch.tanh(gi.add_(gh))
            hs.append(h)
            x = h  # (B, H); no dropout between layers at inference
        if self.config.layers == 1:  # (1, B, H) views, no copy
            next_state: State = (
                (hs[0].unsqueeze(0), cs[0].unsqueeze(0)) if cs else (hs[0].unsqueeze(0),)
            )
        else:
            next_state = (torch.stack(hs), torch.stack(cs)) if cs else (torch.stack(hs),)
        if self.proj is not None:
            x = self.proj(x)  # (B, E)
        return x, next_state

    def recurrent_weight_names(self) -> list[str]:
        """The hidden-to-hidden matrices of a recurrent stack, one per layer (both
        stacks of a bidirectional model have the same names)."""
        if isinstance(self.rnn, RecurrentStack):
            return [f"layers.{k}.W_h.weight" for k in range(self.config.layers)]
        return [f"weight_hh_l{k}" for k in range(self.config.layers)]

    def locked_dropout(self, x: Tensor) -> Tensor:
        """Dropout with one mask per sequence, shared by all time steps: x (B, T, D)."""
        p = self.config.dropout
        if not self.training or p == 0:
            return x
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p) / (1 - p)
        return x * mask

    def log_probs(self, feats: Tensor, output_t: Tensor | None = None) -> Tensor:
        """features (..., F) -> normalised log-probabilities (..., V). `output_t` (from
        `decode_output`): the output layer's transposed weight, for decoding's (B, F)."""
        if self.adaptive is not None:
            flat = feats.reshape(-1, feats.shape[-1])
            return self.adaptive.log_prob(flat).reshape(*feats.shape[:-1], -1)
        assert self.decoder is not None
        if output_t is not None and feats.dim() == 2:
            return F.log_softmax(torch.addmm(self.decoder.bias, feats, output_t), dim=-1)
        # F.linear rather than the module's call: a decoding step of one row pays the
        # module machinery's few microseconds on every token.
        return F.log_softmax(F.linear(feats, self.decoder.weight, self.decoder.bias), dim=-1)

    def decode_output(self, max_bytes: int = 64 << 20) -> Tensor | None:
        """The output layer's weight transposed, (F, V), as a contiguous copy for decoding
        (see `decode_weights`: the same 20-40% on the product): for a 10,004-word
        vocabulary at 256 features, 275 against 169 µs on one row, 2.56 against 2.24 ms
        on 32 (one thread, measured here). None with the adaptive softmax, or where the
        copy would take more than `max_bytes`. A copy: it does not follow later changes."""
        if self.decoder is None:
            return None
        w = self.decoder.weight
        if w.numel() * w.element_size() > max_bytes:
            return None
        with torch.no_grad():
            return w.t().contiguous()

    def token_log_probs(self, feats: Tensor, targets: Tensor) -> Tensor:
        """log P(target) at each position: feats (N, F), targets (N,) -> (N,).

        Cheaper than `log_probs` with an adaptive softmax, which then only
        evaluates the clusters the targets fall in.
        """
        if self.adaptive is not None:
            out: Tensor = self.adaptive(feats, targets).output
            return out
        return self.log_probs(feats).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def forward(
        self, ids: Tensor, state: State | None = None, backward: bool = False
    ) -> tuple[Tensor, State]:
        """ids (B, T) -> log-probabilities (B, T, V) of the next token, new state.

        `backward`: of the previous token, on reversed ids (see `features`).
        """
        feats, state = self.features(ids, state, backward)
        return self.log_probs(feats), state

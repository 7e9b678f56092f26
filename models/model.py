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

Training and every device but the CPU run these modules; on the CPU the engine
decodes and scores with models/host_step.py, written from the same weights.

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
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

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
    # Residual over an n-gram: the output layer's logits are added to the n-gram's
    # ln P(· | history) before the softmax (`log_probs` with a prior; training/prior.py).
    # The model then needs its n-gram to predict anything. False in older checkpoints.
    residual: bool = False

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
        if self.residual and (cutoffs or self.bidirectional):
            problems.append("a residual model has a full softmax and one direction")
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
        # The output layer (features -> logits): `decoder` as in PyTorch's word language
        # model example, and the name its weights have in every checkpoint's file.
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
        self,
        ids: Tensor,
        state: State | None = None,
        backward: bool = False,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, State]:
        """Run a recurrent stack: ids (B, T) -> features (B, T, out_features), new state.

        `backward`: the backward stack, on ids already reversed (`<bos> tn … t1`).
        `lengths` (B,), on the CPU: each row's own length in right-padded `ids`; the rows
        are then packed for the recurrent layers, so the state returned is each row's
        after its own last token (the features past a row's end are zeros).
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
        inp: Tensor | PackedSequence = x
        if lengths is not None:
            inp = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        if self.training and self.config.weight_drop > 0:
            # A fresh DropConnect mask per forward pass, swapped in for the stored
            # weights only for this call, so the fused kernel still runs.
            params = dict(rnn.named_parameters())
            dropped = {
                name: F.dropout(params[name], self.config.weight_drop)
                for name in self.recurrent_weight_names()
            }
            out, hn = torch.func.functional_call(rnn, dropped, (inp, hx))  # out (B, T, H)
        else:
            out, hn = rnn(inp, hx)
        if isinstance(out, PackedSequence):
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        new_state: State = tuple(hn) if len(state) == 2 else (hn,)
        out = self.locked_dropout(out)
        if proj is not None:
            out = proj(out)  # (B, T, E)
        return out, new_state

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

    def log_probs(self, feats: Tensor, prior: Tensor | None = None) -> Tensor:
        """features (..., F) -> normalised log-probabilities (..., V); a residual model's
        with its `prior` (..., V), the n-gram's ln P (models/ngram.py), added to the logits."""
        if self.config.residual:
            if prior is None:
                raise ValueError("a residual model predicts only with its n-gram's prior")
            assert self.decoder is not None
            logits = F.linear(feats, self.decoder.weight, self.decoder.bias) + prior
            return F.log_softmax(logits, dim=-1)
        if self.adaptive is not None:
            flat = feats.reshape(-1, feats.shape[-1])
            return self.adaptive.log_prob(flat).reshape(*feats.shape[:-1], -1)
        assert self.decoder is not None
        # F.linear rather than the module's call: a decoding step of one row pays the
        # module machinery's few microseconds on every token.
        return F.log_softmax(F.linear(feats, self.decoder.weight, self.decoder.bias), dim=-1)

    def token_log_probs(
        self, feats: Tensor, targets: Tensor, prior: Tensor | None = None
    ) -> Tensor:
        """log P(target) at each position: feats (N, F), targets (N,) -> (N,); `prior`
        (N, V) of a residual model (see `log_probs`).

        Cheaper than `log_probs` with an adaptive softmax, which then only
        evaluates the clusters the targets fall in.
        """
        if self.adaptive is not None:
            out: Tensor = self.adaptive(feats, targets).output
            return out
        return self.log_probs(feats, prior).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def forward(
        self, ids: Tensor, state: State | None = None, backward: bool = False
    ) -> tuple[Tensor, State]:
        """ids (B, T) -> log-probabilities (B, T, V) of the next token, new state.

        `backward`: of the previous token, on reversed ids (see `features`).
        """
        feats, state = self.features(ids, state, backward)
        return self.log_probs(feats), state

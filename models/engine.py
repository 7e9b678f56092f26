"""The synchronous, batched inference engine: scoring and sampling.

No asyncio, no HTTP: the CLI, the evaluator and the service's scheduler all
drive this module.

The engine owns the forward pass: `_forward` runs the recurrent layers over a
window (scoring and prefill), `step` advances every row by one token (sampling and
beam search), `next_logprobs` turns a step's features into the next token's
distribution, the mixture λ·P_rnn + (1−λ)·P_ngram included (models/ngram.py). On
the CPU the first two go through models/host_step.py where it applies, elsewhere
through the model's own modules. Scoring whole texts is models/scoring.py's
(`Scoring`, which `Engine` mixes in); sampling uses the forward direction only.

Sampling starts a `Generation` per sequence (models/sampling.py) and runs them
in a `Batch` (models/batch.py), which keeps each row's bookkeeping and asks this
engine for every step; `models.batch.sample` runs a few to completion.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnlm.models.blas import Choice
from rnnlm.models.checkpoint import Checkpoint, start_token
from rnnlm.models.errors import CheckpointError
from rnnlm.models.gate import mix_gated_
from rnnlm.models.host_step import HostStep
from rnnlm.models.model import State
from rnnlm.models.ngram import NO_TOKEN, mix_
from rnnlm.models.ngram_next import layout_of
from rnnlm.models.results import SampleResult, TokenLogprob
from rnnlm.models.sampling import HOST_SAMPLING_MAX_VOCAB, SEED_SPACE, Generation, SampleParams
from rnnlm.models.scoring import Scoring, windows
from rnnlm.models.tokenizers import EOS, PAD

# A window of at least this many rows runs through the host step's `run` where it
# applies (models/host_step.py): below it torch's fused layer, whose loop is in C++, was
# the faster (docs/measured.md).
_HOST_SCORE_MIN_ROWS = 16


class Engine(Scoring):
    """Scores and samples with one loaded checkpoint."""

    def __init__(
        self, checkpoint: Checkpoint, max_batch: int = 64, host: bool = True, blas: Choice = "auto"
    ) -> None:
        """`host`: on the CPU, step with numpy between the products and sample small
        vocabularies in numpy (models/host_step.py); False: torch's modules and ops
        throughout, the path a GPU takes. `blas`: the host step's library for its
        products (models/blas.py: the faster for each weight, or always torch's or numpy's)."""
        self.checkpoint = checkpoint
        self.model = checkpoint.model.eval()
        self.tokenizer = checkpoint.tokenizer
        self.device = next(self.model.parameters()).device
        self.max_batch = max_batch
        # Sentence-mode models condition every text on <bos>; a stream-mode
        # model saw each line after the previous line's <eos>.
        self.start_id = start_token(checkpoint.mode)
        self.bidirectional = self.model.config.bidirectional
        self.ngram = checkpoint.ngram
        self.mix_weight = checkpoint.mix_weight
        self.mix_table = checkpoint.mixing_table()  # λ per mixing bucket (N·KID_BINS,)
        # λ from each part's distribution too (models/gate.py), in place of the table.
        self.mix_gate = checkpoint.mix_gate
        # λ = 1 everywhere: the n-gram takes no part in the mixture.
        self.rnn_only = self.mix_gate is None and (
            self.mix_table is None or bool((self.mix_table == 1.0).all())
        )
        # A residual model's logits are added to its n-gram's ln P before the softmax
        # (models/model.py): it needs the n-gram's whole distribution at every step,
        # whatever λ is.
        self.residual = self.model.config.residual
        if self.residual and self.ngram is None:
            raise CheckpointError(
                f"{checkpoint.path}: a residual model predicts over its n-gram, and has none"
            )
        if self.residual and self.mix_gate is not None:
            raise CheckpointError(f"{checkpoint.path}: a residual model takes no mixing gate")
        self.uses_ngram = self.ngram is not None and (self.residual or not self.rnn_only)
        # The match model over the training text, mixed in over the rest (models/match.py).
        self.match = checkpoint.match
        # What each sequence carries from token to token (`contexts`): the n-gram's
        # contexts (B, N-1) where it takes part, then the match's state (B, 3) where there
        # is one; None where neither.
        self.ngram_width = self.ngram.order - 1 if self.ngram is not None and self.uses_ngram else 0
        self.carries = self.uses_ngram or self.match is not None
        # A step: on the CPU, products by torch's or numpy's BLAS and the gates in numpy
        # (models/host_step.py); elsewhere the model's fused modules.
        self.host_step = HostStep.of(self.model, blas) if host else None
        # Small vocabularies on the CPU choose their tokens in numpy (models/sampling.py).
        self.host_sampling = (
            host
            and self.device.type == "cpu"
            and self.model.config.vocab_size <= HOST_SAMPLING_MAX_VOCAB
        )
        # What every sequence without a prompt starts from (`start_point`): None until
        # the first one asks.
        self.start: tuple[State, Tensor, np.ndarray[Any, np.dtype[np.int64]] | None] | None = None
        if self.bidirectional and checkpoint.mode == "stream":
            raise CheckpointError(
                f"{checkpoint.path}: a bidirectional model must be trained in sentence mode, "
                "but config.json says stream"
            )

    # --------------------------------------------------------------- sampling

    def generation(
        self, prompt: str, params: SampleParams, index: int = 0, key: object = None
    ) -> Generation:
        """A new sequence to `add()` to a batch: the `index`-th sample of `params`.

        Sample i uses seed `(params.seed + i) mod 2**63`, so every seed in range is
        valid for any n; without a seed, each sequence draws its own.
        """
        given = params.seed
        seed = secrets.randbits(63) if given is None else (given + index) % SEED_SPACE
        ids = self.tokenizer.encode(prompt) if prompt else []
        decoder = self.tokenizer.decoder(ids)  # spacing after the prompt decided in context
        return Generation(params, seed, ids, self.tokenizer.decode(ids), key=key, decoder=decoder)

    # The forward pass: the recurrent layers over a window, and a step of one token.

    def _forward(
        self, ids: np.ndarray[Any, np.dtype[np.int64]], state: State | None, backward: bool = False
    ) -> tuple[Tensor, State]:
        """ids (B, T) on the host -> features (B, T, F), the state after the window (a zero
        state where `state` is None): through the host step's `run` for windows of many
        rows where it is the faster (models/host_step.py `scores`), else torch's modules."""
        if state is None:
            state = self.model.init_state(ids.shape[0], self.device)
        host = self.host_step
        if (
            host is not None
            and not backward
            and host.scores
            and ids.shape[0] >= _HOST_SCORE_MIN_ROWS
        ):
            return host.run(ids, state)
        return self.model.features(torch.from_numpy(ids).to(self.device), state, backward=backward)

    def step(self, ids: np.ndarray[Any, np.dtype[np.int64]], state: State) -> tuple[Tensor, State]:
        """One token for every row: ids (B,) on the host -> features (B, F), the new state."""
        if self.host_step is not None:
            return self.host_step.step(ids, state)
        feats, new_state = self.model.features(
            torch.from_numpy(ids).to(self.device)[:, None], state
        )
        return feats[:, 0], new_state

    def prefill(self, inputs: list[list[int]]) -> tuple[State, Tensor]:
        """Each sequence's ids (start token and prompt, at least one) through the recurrent
        layers at once: each row's state after its own last token, and its features there
        (B, F). Where the host step's `run` is the faster (many rows: `_forward`), in
        windows that end where a row ends, each finished row's state taken as it leaves;
        elsewhere one call of torch's fused layer on the rows packed (a window per prompt
        length would pay the fused layer's set-up cost once per window)."""
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))  # longest first
        lens = [len(inputs[i]) for i in order]
        ids = np.full((len(order), lens[0]), PAD, dtype=np.int64)
        for row, i in enumerate(order):
            ids[row, : lens[row]] = inputs[i]
        host = self.host_step
        if host is None or not host.scores or len(inputs) < _HOST_SCORE_MIN_ROWS:
            lengths = torch.tensor(lens)
            out, state = self.model.features(torch.from_numpy(ids).to(self.device), lengths=lengths)
            rows = torch.arange(len(order), device=self.device)
            last = out[rows, lengths.to(self.device) - 1]  # (B, F)
        else:
            state_now: State | None = None
            ended: list[tuple[State, Tensor]] = []  # finished rows' states, features; last first
            for t0, t1, n in windows(lens, lens[0], min_window=1):
                if state_now is not None and n < state_now[0].shape[1]:  # ended rows drop out
                    state_now = tuple(z[:, :n].contiguous() for z in state_now)
                out, state_now = self._forward(ids[:n, t0:t1], state_now)
                m = sum(1 for x in lens[:n] if x > t1)  # rows m..n-1 end here
                if m < n:
                    ended.append((tuple(z[:, m:n] for z in state_now), out[m:n, -1]))
            ended.reverse()  # sorted order: the longest row first
            state = tuple(
                torch.cat([st[k] for st, _ in ended], dim=1) for k in range(len(ended[0][0]))
            )
            last = torch.cat([f for _, f in ended])
        back = torch.from_numpy(np.argsort(order)).to(self.device)  # sorted -> given order
        return tuple(z.index_select(1, back) for z in state), last.index_select(0, back)

    def start_point(self) -> tuple[State, Tensor, np.ndarray[Any, np.dtype[np.int64]] | None]:
        """What every sequence without a prompt starts from, the same for all of them: the
        state after the start token, its next-token log-probs (1, V) and the n-gram's
        contexts. Worked out once, as a step of one row; callers copy, never change it."""
        if self.start is None:
            first = np.full(1, self.start_id, dtype=np.int64)
            feats, state = self.step(first, self.model.init_state(1, self.device))
            ctx = self.contexts_after([[self.start_id]])
            self.start = (state, self.next_logprobs(feats, ctx), ctx)
        return self.start

    # The distribution after a step: one implementation, for sampling (models/batch.py)
    # and for beam-search states (models/states.py).

    def contexts_after(
        self, inputs: Sequence[Sequence[int]]
    ) -> np.ndarray[Any, np.dtype[np.int64]] | None:
        """What each sequence carries after its ids (start token included): the n-gram's
        contexts (B, N-1) and the match's state (B, 3), side by side (B, W), or None where
        neither takes part."""
        if not self.carries:
            return None
        parts = []
        if self.uses_ngram:
            width = self.ngram_width
            rows = [([NO_TOKEN] * width + list(x))[len(x) :] for x in inputs]
            ctx = self.ngram_contexts(np.array(rows, dtype=np.int64).reshape(len(inputs), width))
            assert ctx is not None
            parts.append(ctx)
        if self.match is not None:
            parts.append(self.match.after(inputs))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def ngram_contexts(
        self, histories: np.ndarray[Any, np.dtype[np.int64]]
    ) -> np.ndarray[Any, np.dtype[np.int64]] | None:
        """Where each history (B, N-1) stands in the n-gram (models/ngram_next.py), or
        None where the n-gram takes no part (none, or λ = 1 everywhere but in a residual
        model)."""
        if self.ngram is None or not self.uses_ngram:
            return None
        return layout_of(self.ngram).contexts(histories)

    def advance_contexts(
        self, contexts: np.ndarray[Any, np.dtype[np.int64]], tokens: np.ndarray[Any, Any]
    ) -> np.ndarray[Any, np.dtype[np.int64]]:
        """`contexts_after` (B, W) after each row's next token (B,)."""
        w = self.ngram_width
        parts = []
        if self.uses_ngram:
            assert self.ngram is not None
            parts.append(layout_of(self.ngram).advance(contexts[:, :w], tokens))
        if self.match is not None:
            parts.append(self.match.advance(contexts[:, w:], tokens))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def next_logprobs(
        self, feats: Tensor, contexts: np.ndarray[Any, np.dtype[np.int64]] | None
    ) -> Tensor:
        """The model's next-token log-probs (B, V) after a step's features (B, F): the
        RNN's, or (with each row's n-gram contexts) the mixture λ·P_rnn + (1−λ)·P_ngram,
        each row's λ its history's bucket's, or its gate's (models/gate.py; models/ngram.py
        `mix_` mixes); a residual model's
        P_rnn is over the n-gram's ln P (models/model.py); then, with a match model, its
        guess mixed in by μ (models/match.py). `contexts`: `contexts_after`'s, or
        `advance_contexts`'. A new tensor each call (callers keep it)."""
        w = self.ngram_width
        ngram = None if contexts is None or not self.uses_ngram else contexts[:, :w]
        lp = self._mixture_logprobs(feats, ngram)
        if self.match is None or contexts is None:
            return lp
        host = lp.cpu().numpy()  # the tensor's own memory on the CPU: mixed in place
        self.match.mix_(host, contexts[:, w:])
        return lp if lp.device.type == "cpu" else torch.from_numpy(host).to(lp.device)

    def _mixture_logprobs(
        self, feats: Tensor, contexts: np.ndarray[Any, np.dtype[np.int64]] | None
    ) -> Tensor:
        """`next_logprobs` without the match model, from the n-gram's `contexts`."""
        ngram, table, host = self.ngram, self.mix_table, self.host_step
        mixing = not (ngram is None or contexts is None or table is None or self.rnn_only)
        if self.residual:
            return self._residual_logprobs(feats, contexts)
        if host is not None and host.output is not None:
            if not mixing:
                return host.log_probs(feats)
            logits = host.output(np.ascontiguousarray(feats.numpy()))  # (B, V), new
            assert ngram is not None and table is not None and contexts is not None
            if self.mix_gate is not None:
                return torch.from_numpy(
                    mix_gated_(logits, self.mix_gate, layout_of(ngram), contexts, logits=True)
                )
            part, bucket = layout_of(ngram).mixture_part_at(
                contexts, table, logits.dtype
            )  # (1-λ)·P_ngram
            # The softmax folded into the mixture, in place in the product's own array.
            return torch.from_numpy(mix_(logits, table[bucket], part, logits=True))
        rnn = self.model.log_probs(feats)  # (B, V), new
        if not mixing:
            return rnn
        assert ngram is not None and table is not None and contexts is not None
        # On the host, where the n-gram is (a GPU's (B, V) comes over and goes back).
        if self.mix_gate is not None:
            mixed = mix_gated_(rnn.cpu().numpy(), self.mix_gate, layout_of(ngram), contexts)
            return torch.from_numpy(mixed).to(rnn.device)
        dtype = np.float32 if rnn.dtype == torch.float32 else np.float64
        part, bucket = layout_of(ngram).mixture_part_at(contexts, table, dtype)
        mixed = mix_(rnn.cpu().numpy(), table[bucket], part)
        return torch.from_numpy(mixed).to(rnn.device)

    def _residual_logprobs(
        self, feats: Tensor, contexts: np.ndarray[Any, np.dtype[np.int64]] | None
    ) -> Tensor:
        """`next_logprobs` of a residual model: the logits plus the n-gram's ln P, then the
        mixture (with λ = 1, the mixture is the softmax alone: `mix_` of a zero part)."""
        assert self.ngram is not None and self.mix_table is not None and contexts is not None
        host = self.host_step
        on_host = host is not None and host.output is not None
        dtype = np.float32 if on_host or feats.dtype == torch.float32 else np.float64
        prior, part, bucket = layout_of(self.ngram).prior_and_part_at(
            contexts, self.mix_table, dtype
        )
        lam = self.mix_table[bucket]
        if on_host:
            assert host is not None and host.output is not None
            logits = host.output(np.ascontiguousarray(feats.numpy()))  # (B, V), new
            logits += prior
            return torch.from_numpy(mix_(logits, lam, part, logits=True))
        rnn = self.model.log_probs(feats, torch.from_numpy(prior).to(feats.device))
        mixed = mix_(rnn.cpu().numpy(), lam, part)
        return torch.from_numpy(mixed).to(rnn.device)

    def prepare_sampling(self) -> None:
        """Build now what the first sample would otherwise wait for: the n-gram's layout
        for sampling (models/ngram_next.py: 0.6 s and 28 bytes an n-gram for a character
        10-gram of 2.6M n-grams), which scoring needs only with a gate, and the match
        model's index (which scoring needs too). A server calls it on load."""
        if self.ngram is not None and self.uses_ngram:
            layout_of(self.ngram)
        if self.match is not None:
            self.match.index  # noqa: B018 (built on first use: 3-4 s for 2.3M characters)

    def result(self, g: Generation) -> SampleResult:
        r = g.result()
        if g.params.logprobs or g.params.top_logprobs:
            pieces = [self.tokenizer.piece(i) if i != EOS else "<eos>" for i in g.ids]
            r.tokens = [
                TokenLogprob(i, p, lp, g.tops[j] if g.params.top_logprobs else None)
                for j, (i, p, lp) in enumerate(zip(g.ids, pieces, g.logprobs, strict=True))
            ]
        return r

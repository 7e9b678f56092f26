"""The synchronous, batched inference engine: scoring and sampling.

No asyncio, no HTTP: the CLI, the evaluator and the service's scheduler all
drive this module.

Scoring packs texts into right-padded batches sorted by length. A recurrent
model reads left to right, so padding after a text never reaches its scores,
and only real positions are gathered. A bidirectional model's backward
direction scores each text reversed (`<bos> tn … t1 <eos>`, reversed before
padding), the same way; sampling uses the forward direction only.

A checkpoint with an n-gram (models/ngram.py) is scored and sampled under the
mixture λ·P_rnn + (1−λ)·P_ngram, token by token, the n-gram reading the same
history as the RNN (the tokens since the start token, the newest N-1 of them),
λ the weight of the history's mixing bucket (the same for all of them in a
checkpoint that has a single λ).
The backward direction of a bidirectional model is the RNN's alone.

The engine owns the forward pass: `_forward` runs the recurrent layers over a
window (scoring and prefill), `step` advances every row by one token (sampling and
beam search), `next_logprobs` turns a step's features into the next token's
distribution, the mixture included. On the CPU the first two go through
models/host_step.py where it applies, elsewhere through the model's own modules.

Sampling starts a `Generation` per sequence (models/sampling.py) and runs them
in a `Batch` (models/batch.py), which keeps each row's bookkeeping and asks this
engine for every step; `models.batch.sample` runs a few to completion.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnlm.models.blas import Choice
from rnnlm.models.checkpoint import Checkpoint, start_token
from rnnlm.models.errors import CheckpointError
from rnnlm.models.host_step import HostStep
from rnnlm.models.model import State
from rnnlm.models.ngram import NO_TOKEN, histories_of, mix_
from rnnlm.models.ngram_next import layout_of
from rnnlm.models.results import SampleResult, ScoreResult, TokenLogprob
from rnnlm.models.sampling import HOST_SAMPLING_MAX_VOCAB, SEED_SPACE, Generation, SampleParams
from rnnlm.models.tokenizers import BOS, EOS, PAD, UNK

_OUTPUT_CHUNK = 4096  # positions per output-layer call: bounds the (N, V) buffer
# Scoring runs the recurrent layers a window of time steps at a time, over only the
# rows still running (rows are sorted longest first, so those are a prefix): a window
# ends where a row ends, but spans at least _MIN_WINDOW steps (a recurrent call has a
# set-up cost) and at most _MAX_WINDOW (the (B, T, F) buffers of one call). Padding
# is then mostly not computed: +23% tokens/s on 64 sentences of 40 to 80 characters.
_MIN_WINDOW = 8
_MAX_WINDOW = 512
_PADDED_IDS = 1 << 20  # rows x time steps of one scoring batch, padding included
# A window of at least this many rows runs through the host step's `run` where it
# applies (models/host_step.py): below it torch's fused layer, whose loop is in C++, was
# the faster (docs/measured.md).
_HOST_SCORE_MIN_ROWS = 16


def _windows(
    lengths: list[int], T: int, min_window: int = _MIN_WINDOW
) -> list[tuple[int, int, int]]:
    """(start, end, rows running) of each recurrent call over a chunk whose rows have
    `lengths`, longest first (see _MIN_WINDOW; with `min_window` 1, every window ends
    where some row ends, so a row's state after the window it ends in is its own)."""
    out, t0 = [], 0
    while t0 < T:
        n = sum(1 for x in lengths if x > t0)
        next_end = min(x for x in lengths[:n])
        t1 = min(T, t0 + _MAX_WINDOW, max(t0 + min_window, next_end))
        out.append((t0, t1, n))
        t0 = t1
    return out


@dataclass
class _Scored:
    """One sequence's scored ids and log-probs; with an n-gram, each component's too."""

    ids: list[int]
    logprobs: list[float] = field(default_factory=list)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    rnn: list[float] | None = None
    ngram: list[float] | None = None
    bucket: list[int] | None = None  # each position's mixing bucket (models/ngram.py)


class Engine:
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
        # λ = 1 everywhere: the n-gram takes no part in sampling.
        self.rnn_only = self.mix_table is None or bool((self.mix_table == 1.0).all())
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

    # ---------------------------------------------------------------- scoring

    @torch.inference_mode()
    def score_token_ids(
        self, seqs: Sequence[Sequence[int]], bos: bool = True, eos: bool = True, top: int = 0
    ) -> list[tuple[list[int], list[float], list[list[tuple[int, float]]]]]:
        """For each id sequence: (scored ids, their log-probs, top alternatives).

        The scored ids are t1..tn (t2..tn without `bos`), then <eos> with `eos`.
        """
        fulls = [([self.start_id] if bos else []) + list(s) + ([EOS] if eos else []) for s in seqs]
        return [(r.ids, r.logprobs, r.tops) for r in self._score(fulls, top, backward=False)]

    @torch.inference_mode()
    def score_token_ids_backward(
        self, seqs: Sequence[Sequence[int]], bos: bool = True, eos: bool = True
    ) -> list[tuple[list[int], list[float]]]:
        """The backward direction's (scored ids, log-probs) of each sequence, in reading order.

        It reads the text reversed: <bos> tn … t1 <eos>. Its <bos> stands for the
        end of the text, so it is there when `eos` is (the text ends a sequence),
        and its <eos> for the start, there when `bos` is. Both directions then
        make the same number of predictions.
        """
        if not self.bidirectional:
            raise ValueError("this model has no backward direction (bidirectional is off)")
        fulls = [([BOS] if eos else []) + list(s)[::-1] + ([EOS] if bos else []) for s in seqs]
        return [(r.ids, r.logprobs) for r in self._score(fulls, 0, backward=True)]

    @torch.inference_mode()
    def score_components(
        self, seqs: Sequence[Sequence[int]], bos: bool = True, eos: bool = True
    ) -> list[tuple[list[float], list[float], list[int]]]:
        """A model with an n-gram: each sequence's per-token ln P_rnn, ln P_ngram and
        mixing bucket (the tokens `score_token_ids` scores), from which any mixture follows."""
        if self.ngram is None:
            raise ValueError("this model has no n-gram")
        fulls = [([self.start_id] if bos else []) + list(s) + ([EOS] if eos else []) for s in seqs]
        return [
            (r.rnn or [], r.ngram or [], r.bucket or [])
            for r in self._score(fulls, 0, backward=False)
        ]

    def _score(self, fulls: list[list[int]], top: int, backward: bool) -> list[_Scored]:
        """Each full sequence's ids after the first, their log-probs and top alternatives
        (and, with an n-gram, each component's log-probs)."""
        out = [_Scored(f[1:]) for f in fulls]
        mixing = self.ngram is not None and not backward
        order = sorted(range(len(fulls)), key=lambda i: -len(fulls[i]))
        order = [i for i in order if len(fulls[i]) >= 2]
        while order:
            # Longest first; as many as fit max_batch and the padded-size budget (a
            # 5 MB line is scored alone, not padded into 63 rows beside it).
            T = len(fulls[order[0]]) - 1
            chunk = order[: max(1, min(self.max_batch, _PADDED_IDS // T))]
            order = order[len(chunk) :]
            # Right-padded inputs and targets, filled in one numpy assignment each.
            lens = np.array([len(fulls[i]) - 1 for i in chunk])
            rows_of = np.repeat(np.arange(len(chunk)), lens)
            cols_of = np.arange(len(rows_of)) - np.repeat(np.cumsum(lens) - lens, lens)
            inp_np = np.full((len(chunk), T), PAD, dtype=np.int64)
            tgt_np = np.full((len(chunk), T), PAD, dtype=np.int64)
            inp_np[rows_of, cols_of] = [t for i in chunk for t in fulls[i][:-1]]
            tgt_np[rows_of, cols_of] = [t for i in chunk for t in fulls[i][1:]]
            tgt = torch.from_numpy(tgt_np).to(self.device)
            lengths = torch.from_numpy(lens)
            # The n-gram's history of each target (B, T, N-1).
            hist = histories_of(inp_np, self.ngram.order) if mixing and self.ngram else None
            mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
            # float64: a mixture's log-probs are computed in it, and summed later.
            # [mixture, RNN, n-gram, mixing bucket (exact in float64)] with an n-gram.
            lps = torch.zeros(4 if mixing else 1, len(chunk), T, dtype=torch.float64)
            tops: list[tuple[Tensor, Tensor]] = []
            state: State | None = None
            spans = _windows(lengths.tolist(), T)
            # Without alternatives, the n-gram and the mixture are computed once for the
            # whole chunk (one lookup over every position), the RNN's window by window.
            whole = mixing and not top
            for t0, t1, n in spans:
                if state is not None and n < state[0].shape[1]:  # rows that ended drop out
                    state = tuple(z[:, :n].contiguous() for z in state)
                feats, state = self._forward(inp_np[:n, t0:t1], state, backward)
                m = mask[:n, t0:t1]
                h = None if hist is None or whole else hist[:n, t0:t1][m.numpy()]
                parts, top_win = self._gather(feats[m.to(self.device)], tgt[:n, t0:t1][m], top, h)
                for d, part in enumerate(parts):
                    lps[1 if whole else d, :n, t0:t1][m] = part
                if top:
                    tops.append(top_win)
            if whole:
                assert self.ngram is not None and hist is not None
                ngram, bucket = self.ngram.logprob_and_bucket(
                    hist[mask.numpy()], tgt[mask].cpu().numpy()
                )
                lps[2][mask] = torch.from_numpy(ngram)
                lps[3][mask] = torch.from_numpy(bucket).double()
                lam = self._weights(bucket)
                rnn = lps[1][mask].numpy()  # a copy (a masked selection): mixed in place
                lps[0][mask] = torch.from_numpy(mix_(rnn, lam, (1.0 - lam) * np.exp(ngram)))
            per_row_top: dict[int, list[list[tuple[int, float]]]] = {
                r: [] for r in range(len(chunk))
            }
            if top:
                top_vals = torch.cat([v for v, _ in tops]).tolist()
                top_ids = torch.cat([i for _, i in tops]).tolist()
                # The alternatives come window-major (each window's masked rows in
                # order); hand them back to their rows.
                row_len = lens.tolist()
                rows = [
                    r
                    for t0, t1, n in spans
                    for r in range(n)
                    for _ in range(t0, min(t1, row_len[r]))
                ]
                for r, ids_, vals in zip(rows, top_ids, top_vals, strict=True):
                    per_row_top[r].append(list(zip(ids_, vals, strict=True)))
            lp_rows = lps.tolist()
            for row, i in enumerate(chunk):
                n = int(lengths[row])
                res = out[i]
                res.logprobs, res.tops = lp_rows[0][row][:n], per_row_top[row]
                if mixing:
                    res.rnn, res.ngram = lp_rows[1][row][:n], lp_rows[2][row][:n]
                    res.bucket = [int(b) for b in lp_rows[3][row][:n]]
        return out

    def _gather(
        self,
        feats: Tensor,
        targets: Tensor,
        top: int,
        hist: np.ndarray[Any, np.dtype[np.int64]] | None = None,
    ) -> tuple[list[Tensor], tuple[Tensor, Tensor]]:
        """feats (N, F), targets (N,) -> [log P(target)] (N,) (with `hist` (N, order-1):
        [mixture, RNN, n-gram, mixing bucket]), top-k (values, ids) (N, k) of the model's
        distribution."""
        parts: list[list[Tensor]] = [[], [], [], []] if hist is not None else [[]]
        vals, ids = [], []
        for s in range(0, feats.shape[0], _OUTPUT_CHUNK):
            f, t = feats[s : s + _OUTPUT_CHUNK], targets[s : s + _OUTPUT_CHUNK]
            h = None if hist is None else hist[s : s + _OUTPUT_CHUNK]
            if top:
                full = self.model.log_probs(f).double()
                rnn = full.gather(1, t.unsqueeze(1)).squeeze(1)
                if h is not None:
                    assert self.ngram is not None and self.mix_table is not None
                    part, bucket = layout_of(self.ngram).mixture_part(
                        h, self.mix_table
                    )  # (1-λ)·P_ngram
                    # On the host, where the n-gram is; `full` is a new tensor, mixed in place.
                    mixed = mix_(full.cpu().numpy(), self._weights(bucket), part)
                    full = torch.from_numpy(mixed).to(feats.device)
                    parts[1].append(rnn.cpu())
                    parts[2].append(torch.from_numpy(self.ngram.logprob_of(h, t.cpu().numpy())))
                    parts[3].append(torch.from_numpy(bucket).double())
                parts[0].append(full.gather(1, t.unsqueeze(1)).squeeze(1).cpu())
                v, i = full.topk(min(top, full.shape[1]), dim=-1)
                vals.append(v)
                ids.append(i)
            else:
                rnn = self.model.token_log_probs(f, t).double().cpu()
                if h is None:
                    parts[0].append(rnn)
                    continue
                assert self.ngram is not None
                ngram_np, bucket = self.ngram.logprob_and_bucket(h, t.cpu().numpy())
                ngram = torch.from_numpy(ngram_np)
                lam = self._weights(bucket)
                mixed = mix_(rnn.numpy().copy(), lam, (1.0 - lam) * np.exp(ngram_np))
                parts[0].append(torch.from_numpy(mixed))
                parts[1].append(rnn)
                parts[2].append(ngram)
                parts[3].append(torch.from_numpy(bucket).double())
        empty = torch.zeros(0, dtype=torch.float64)
        joined = [torch.cat(p) if p else empty for p in parts]
        if not vals:
            return joined, (torch.zeros(0, top), torch.zeros(0, top, dtype=torch.long))
        return joined, (torch.cat(vals).float().cpu(), torch.cat(ids).cpu())

    def _weights(self, bucket: np.ndarray[Any, np.dtype[np.int64]]) -> np.ndarray[Any, Any]:
        """λ of each position, from its history's mixing bucket."""
        assert self.mix_table is not None
        weights: np.ndarray[Any, Any] = self.mix_table[bucket]
        return weights

    def score_batch(
        self,
        texts: Sequence[str],
        bos: bool = True,
        eos: bool = True,
        per_token: bool = False,
        top: int = 0,
    ) -> list[ScoreResult]:
        """Score texts; the result of a text never depends on the others in the batch."""
        tok = self.tokenizer
        encoded = [tok.tokenize(t) for t in texts]
        seqs = [ids for ids, _ in encoded]
        fulls = [([self.start_id] if bos else []) + s + ([EOS] if eos else []) for s in seqs]
        with torch.inference_mode():
            scored = self._score(fulls, top, backward=False)
        backward: list[float | None] = [None] * len(texts)
        if self.bidirectional:
            backward = [sum(lps) for _, lps in self.score_token_ids_backward(seqs, bos, eos)]
        results = []
        for text, (ids, pieces), sc, back in zip(texts, encoded, scored, backward, strict=True):
            tids, lps, tops = sc.ids, sc.logprobs, sc.tops
            tokens = None
            if per_token or top:
                # Without bos the first token is context only, even when it is <eos>.
                names = (pieces + (["<eos>"] if eos else []))[0 if bos else 1 :]
                tokens = [
                    TokenLogprob(
                        id=tid,
                        token=name,
                        logprob=lp,
                        top=[(tok.piece(a), v) for a, v in tops[j]] if top else None,
                        rnn_logprob=None if sc.rnn is None else sc.rnn[j],
                        ngram_logprob=None if sc.ngram is None else sc.ngram[j],
                    )
                    for j, (tid, name, lp) in enumerate(zip(tids, names, lps, strict=True))
                ]
            results.append(
                ScoreResult(
                    text=text,
                    logprob=float(sum(lps)),
                    num_tokens=len(lps),
                    oov_count=sum(1 for i in ids if i == UNK),
                    tokens=tokens,
                    backward_logprob=None if back is None else float(back),
                    rnn_logprob=None if sc.rnn is None else float(sum(sc.rnn)),
                    ngram_logprob=None if sc.ngram is None else float(sum(sc.ngram)),
                )
            )
        return results

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
        lens = [len(x) for x in inputs]
        host = self.host_step
        if host is None or not host.scores or len(inputs) < _HOST_SCORE_MIN_ROWS:
            ids = torch.full((len(inputs), max(lens)), PAD, dtype=torch.long)
            for row, x in enumerate(inputs):
                ids[row, : len(x)] = torch.tensor(x)
            lengths = torch.tensor(lens)
            feats, state = self.model.features(ids.to(self.device), lengths=lengths)
            rows = torch.arange(len(inputs), device=self.device)
            return state, feats[rows, lengths.to(self.device) - 1]  # (B, F)
        order = sorted(range(len(inputs)), key=lambda i: -lens[i])
        lens = [lens[i] for i in order]
        ids_np = np.full((len(order), lens[0]), PAD, dtype=np.int64)
        for row, i in enumerate(order):
            ids_np[row, : lens[row]] = inputs[i]
        state_now: State | None = None
        ended: list[tuple[State, Tensor]] = []  # finished rows' states and features, last first
        for t0, t1, n in _windows(lens, lens[0], min_window=1):
            if state_now is not None and n < state_now[0].shape[1]:  # rows that ended drop out
                state_now = tuple(z[:, :n].contiguous() for z in state_now)
            out, state_now = self._forward(ids_np[:n, t0:t1], state_now)
            m = sum(1 for x in lens[:n] if x > t1)  # rows m..n-1 end here
            if m < n:
                ended.append((tuple(z[:, m:n] for z in state_now), out[m:n, -1]))
        ended.reverse()  # sorted order: the longest row first
        back = torch.from_numpy(np.argsort(order)).to(self.device)  # sorted -> given order
        states = tuple(
            torch.cat([st[k] for st, _ in ended], dim=1).index_select(1, back)
            for k in range(len(ended[0][0]))
        )
        return states, torch.cat([f for _, f in ended]).index_select(0, back)

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
        """The n-gram's contexts (B, N-1) after each sequence's ids (start token included),
        or None where the n-gram takes no part."""
        if self.ngram is None:
            return None
        width = self.ngram.order - 1
        rows = [([NO_TOKEN] * width + list(x))[len(x) :] if width else [] for x in inputs]
        return self.ngram_contexts(np.array(rows, dtype=np.int64).reshape(len(inputs), width))

    def ngram_contexts(
        self, histories: np.ndarray[Any, np.dtype[np.int64]]
    ) -> np.ndarray[Any, np.dtype[np.int64]] | None:
        """Where each history (B, N-1) stands in the n-gram (models/ngram_next.py), or
        None where the n-gram takes no part (none, or λ = 1 everywhere)."""
        if self.ngram is None or self.rnn_only:
            return None
        return layout_of(self.ngram).contexts(histories)

    def advance_contexts(
        self, contexts: np.ndarray[Any, np.dtype[np.int64]], tokens: np.ndarray[Any, Any]
    ) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The n-gram's contexts (B, N-1) after each row's next token (B,)."""
        assert self.ngram is not None
        return layout_of(self.ngram).advance(contexts, tokens)

    def next_logprobs(
        self, feats: Tensor, contexts: np.ndarray[Any, np.dtype[np.int64]] | None
    ) -> Tensor:
        """The model's next-token log-probs (B, V) after a step's features (B, F): the
        RNN's, or (with each row's n-gram `contexts`) the mixture λ·P_rnn + (1−λ)·P_ngram,
        each row's λ its history's bucket's (models/ngram.py `mix_`). A new tensor each
        call (callers keep it)."""
        ngram, table, host = self.ngram, self.mix_table, self.host_step
        mixing = not (ngram is None or contexts is None or table is None or self.rnn_only)
        if host is not None and host.output is not None:
            if not mixing:
                return host.log_probs(feats)
            logits = host.output(np.ascontiguousarray(feats.numpy()))  # (B, V), new
            assert ngram is not None and table is not None and contexts is not None
            part, bucket = layout_of(ngram).mixture_part_at(
                contexts, table, logits.dtype
            )  # (1-λ)·P_ngram
            # The softmax folded into the mixture, in place in the product's own array.
            return torch.from_numpy(mix_(logits, table[bucket], part, logits=True))
        rnn = self.model.log_probs(feats)  # (B, V), new
        if not mixing:
            return rnn
        assert ngram is not None and table is not None and contexts is not None
        dtype = np.float32 if rnn.dtype == torch.float32 else np.float64
        part, bucket = layout_of(ngram).mixture_part_at(contexts, table, dtype)
        # On the host, where the n-gram is (a GPU's (B, V) comes over and goes back).
        mixed = mix_(rnn.cpu().numpy(), table[bucket], part)
        return torch.from_numpy(mixed).to(rnn.device)

    def prepare_sampling(self) -> None:
        """Build now what the first sample would otherwise wait for: the n-gram's layout
        for sampling (models/ngram_next.py: 0.6 s and 28 bytes an n-gram for a character
        10-gram of 2.6M n-grams), which scoring never needs. A server calls it on load."""
        if self.ngram is not None and not self.rnn_only:
            layout_of(self.ngram)

    def result(self, g: Generation) -> SampleResult:
        r = g.result()
        if g.params.logprobs or g.params.top_logprobs:
            pieces = [self.tokenizer.piece(i) if i != EOS else "<eos>" for i in g.ids]
            r.tokens = [
                TokenLogprob(i, p, lp, g.tops[j] if g.params.top_logprobs else None)
                for j, (i, p, lp) in enumerate(zip(g.ids, pieces, g.logprobs, strict=True))
            ]
        return r

"""Scoring: the engine's half that reads whole texts (models/engine.py's `Engine` has it).

Scoring packs texts into right-padded batches sorted by length. A recurrent
model reads left to right, so padding after a text never reaches its scores,
and only real positions are gathered. A bidirectional model's backward
direction scores each text reversed (`<bos> tn … t1 <eos>`, reversed before
padding), the same way.

With an n-gram, every token's probability is the mixture λ·P_rnn + (1−λ)·P_ngram,
the n-gram reading the same history as the RNN, λ the weight of the history's mixing
bucket (`models.ngram.mix_`, the one mixture, also sampling's). The backward direction
is the RNN's alone. A residual model's P_rnn is over the n-gram's whole distribution at
every position (models/model.py), so it is scored window by window, each window's
n-gram distributions beside its features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from rnnlm.models.gate import MixingGate, log_features, mix_gated_
from rnnlm.models.match import MatchModel
from rnnlm.models.model import RNNLM, State
from rnnlm.models.ngram import NgramModel, histories_of, mix_, mix_logprobs
from rnnlm.models.ngram_next import layout_of
from rnnlm.models.results import ScoreResult, TokenLogprob
from rnnlm.models.tokenizers import BOS, EOS, PAD, UNK, Tokenizer

_OUTPUT_CHUNK = 4096  # positions per output-layer call: bounds the (N, V) buffer
# Scoring runs the recurrent layers a window of time steps at a time, over only the
# rows still running (rows are sorted longest first, so those are a prefix): a window
# ends where a row ends, but spans at least _MIN_WINDOW steps (a recurrent call has a
# set-up cost) and at most _MAX_WINDOW (the (B, T, F) buffers of one call). Padding
# is then mostly not computed: +23% tokens/s on 64 sentences of 40 to 80 characters.
_MIN_WINDOW = 8
_MAX_WINDOW = 512
_PADDED_IDS = 1 << 20  # rows x time steps of one scoring batch, padding included


def windows(
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
    # With `features`: each position's φ (models/gate.py's FEATURES), what a gate reads.
    features: list[list[float]] | None = None


class Scoring:
    """Scoring methods, mixed into `Engine`, which owns the forward pass (`_forward`)
    and the attributes below."""

    if TYPE_CHECKING:
        model: RNNLM
        tokenizer: Tokenizer
        device: torch.device
        max_batch: int
        start_id: int
        bidirectional: bool
        ngram: NgramModel | None
        mix_table: np.ndarray[Any, Any] | None
        mix_gate: MixingGate | None
        residual: bool
        match: MatchModel | None

        def _forward(
            self,
            ids: np.ndarray[Any, np.dtype[np.int64]],
            state: State | None,
            backward: bool = False,
        ) -> tuple[Tensor, State]: ...

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
        self,
        seqs: Sequence[Sequence[int]],
        bos: bool = True,
        eos: bool = True,
        features: bool = False,
    ) -> list[tuple[list[float], list[float], list[int], list[list[float]] | None]]:
        """A model with an n-gram: each sequence's per-token ln P_rnn, ln P_ngram and
        mixing bucket (the tokens `score_token_ids` scores), from which any mixture follows;
        with `features`, each token's φ (models/gate.py: what a gate reads), else None."""
        if self.ngram is None:
            raise ValueError("this model has no n-gram")
        if features and self.residual:
            raise ValueError("a residual model mixes by its table alone (models/gate.py)")
        fulls = [([self.start_id] if bos else []) + list(s) + ([EOS] if eos else []) for s in seqs]
        return [
            (r.rnn or [], r.ngram or [], r.bucket or [], r.features)
            for r in self._score(fulls, 0, backward=False, features=features)
        ]

    def _score(
        self, fulls: list[list[int]], top: int, backward: bool, features: bool = False
    ) -> list[_Scored]:
        """Each full sequence's ids after the first, their log-probs and top alternatives
        (and, with an n-gram, each component's log-probs; with `features` or a gate,
        each position's φ)."""
        out = [_Scored(f[1:]) for f in fulls]
        mixing = self.ngram is not None and not backward
        # φ of every position (models/gate.py): what the gate reads, or what fits one.
        feats_too = mixing and (features or self.mix_gate is not None)
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
            # The n-gram's history of each target (B, T, N-1), the match's state before it.
            hist = histories_of(inp_np, self.ngram.order) if mixing and self.ngram else None
            matched = None if self.match is None or backward else self.match.scan(inp_np, lens)
            mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
            # float64: a mixture's log-probs are computed in it, and summed later.
            # [mixture, RNN, n-gram, mixing bucket (exact in float64)] with an n-gram,
            # then φ's four (models/gate.py's FEATURES) where they are asked for.
            whole = mixing and not top and not self.residual
            n_rows = 8 if feats_too and whole else 4 if mixing else 1
            lps = torch.zeros(n_rows, len(chunk), T, dtype=torch.float64)
            tops: list[tuple[Tensor, Tensor]] = []
            state: State | None = None
            spans = windows(lengths.tolist(), T)
            # Without alternatives, the n-gram and the mixture are computed once for the
            # whole chunk (one lookup over every position), the RNN's window by window;
            # a residual RNN needs the n-gram's distributions window by window (`whole`).
            for t0, t1, n in spans:
                if state is not None and n < state[0].shape[1]:  # rows that ended drop out
                    state = tuple(z[:, :n].contiguous() for z in state)
                feats, state = self._forward(inp_np[:n, t0:t1], state, backward)
                m = mask[:n, t0:t1]
                h = None if hist is None or whole else hist[:n, t0:t1][m.numpy()]
                ms = None if matched is None or whole else matched[:n, t0:t1][m.numpy()]
                parts, top_win = self._gather(
                    feats[m.to(self.device)], tgt[:n, t0:t1][m], top, h, ms, feats_too
                )
                for d, part in zip(self._rows(whole, len(parts)), parts, strict=True):
                    lps[d, :n, t0:t1][m] = part
                if top:
                    tops.append(top_win)
            if whole:
                assert self.ngram is not None and hist is not None
                at_hist = hist[mask.numpy()]
                ngram, bucket = self.ngram.logprob_and_bucket(at_hist, tgt[mask].cpu().numpy())
                lps[2][mask] = torch.from_numpy(ngram)
                lps[3][mask] = torch.from_numpy(bucket).double()
                rnn = lps[1][mask].numpy()
                if feats_too:  # the n-gram's φ: its whole distribution at every position
                    ngram_phi = self._ngram_features(at_hist)
                    lps[6][mask] = torch.from_numpy(ngram_phi[:, 0])
                    lps[7][mask] = torch.from_numpy(ngram_phi[:, 1])
                    rnn_phi = torch.stack([lps[4][mask], lps[5][mask]], 1).numpy()
                weights = (
                    self._weights(bucket)
                    if self.mix_gate is None
                    else self.mix_gate.weights(bucket, rnn_phi, ngram_phi)
                )
                mixed = mix_logprobs(rnn, ngram, weights)
                if matched is not None:
                    assert self.match is not None
                    at = mask.numpy()
                    mixed = self.match.token_logprobs(mixed, tgt_np[at], matched[at])
                lps[0][mask] = torch.from_numpy(mixed)
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
                if features and whole:
                    res.features = [
                        list(f) for f in zip(*(r[row][:n] for r in lp_rows[4:]), strict=True)
                    ]
        return out

    def _gather(
        self,
        feats: Tensor,
        targets: Tensor,
        top: int,
        hist: np.ndarray[Any, np.dtype[np.int64]] | None = None,
        matched: np.ndarray[Any, np.dtype[np.int64]] | None = None,
        rnn_features: bool = False,
    ) -> tuple[list[Tensor], tuple[Tensor, Tensor]]:
        """feats (N, F), targets (N,) -> [log P(target)] (N,) (with `hist` (N, order-1):
        [mixture, RNN, n-gram, mixing bucket]; without, and with `rnn_features`: [log P,
        the RNN's entropy, its largest ln P]), top-k (values, ids) (N, k) of the model's
        distribution; with `matched` (N, 3), the match's states, the model's log P and
        distribution have the match mixed in (models/match.py)."""
        phi = rnn_features and hist is None and not top
        parts: list[list[Tensor]] = (
            [[], [], [], []] if hist is not None else [[], [], []] if phi else [[]]
        )
        vals, ids = [], []
        for s in range(0, feats.shape[0], _OUTPUT_CHUNK):
            f, t = feats[s : s + _OUTPUT_CHUNK], targets[s : s + _OUTPUT_CHUNK]
            h = None if hist is None else hist[s : s + _OUTPUT_CHUNK]
            ms = None if matched is None else matched[s : s + _OUTPUT_CHUNK]
            prior = ngram_of = None
            if self.residual:
                # The n-gram's whole distribution ln P (N, V), under the RNN's logits; the
                # targets' n-gram log-probs and buckets come from it too (one walk of h).
                assert self.ngram is not None and h is not None
                layout = layout_of(self.ngram)
                ln_p, _, bucket = layout.log_probabilities_at(layout.contexts(h), np.float32)
                prior = torch.from_numpy(ln_p).to(f.device, f.dtype)
                at = np.arange(len(ln_p))
                ngram_of = (ln_p[at, t.cpu().numpy()].astype(np.float64), bucket)
            if top:
                full = self.model.log_probs(f, prior).double()
                rnn = full.gather(1, t.unsqueeze(1)).squeeze(1)
                if h is not None:
                    assert self.ngram is not None and self.mix_table is not None
                    # On the host, where the n-gram is; `full` is a new tensor, mixed in place.
                    layout = layout_of(self.ngram)
                    ngram_np, bucket = self.ngram.logprob_and_bucket(h, t.cpu().numpy())
                    if self.mix_gate is not None:
                        mixed = mix_gated_(
                            full.cpu().numpy(), self.mix_gate, layout, layout.contexts(h)
                        )
                    else:
                        part, _ = layout.mixture_part(h, self.mix_table)  # (1-λ)·P_ngram
                        mixed = mix_(full.cpu().numpy(), self._weights(bucket), part)
                    full = torch.from_numpy(mixed).to(feats.device)
                    parts[1].append(rnn.cpu())
                    parts[2].append(torch.from_numpy(ngram_np))
                    parts[3].append(torch.from_numpy(bucket).double())
                if ms is not None:
                    assert self.match is not None
                    mixed_in = self.match.mix_(full.cpu().numpy(), ms)  # `full` is new
                    full = torch.from_numpy(mixed_in).to(feats.device)
                parts[0].append(full.gather(1, t.unsqueeze(1)).squeeze(1).cpu())
                v, i = full.topk(min(top, full.shape[1]), dim=-1)
                vals.append(v)
                ids.append(i)
            elif phi:  # the whole distribution, for its entropy and peak (models/gate.py)
                full_np = self.model.log_probs(f, prior).double().cpu().numpy()
                rnn_phi = torch.from_numpy(log_features(full_np))
                parts[0].append(torch.from_numpy(full_np[np.arange(len(full_np)), t.cpu().numpy()]))
                parts[1].append(rnn_phi[:, 0])
                parts[2].append(rnn_phi[:, 1])
            else:
                rnn = self.model.token_log_probs(f, t, prior).double().cpu()
                if h is None:
                    parts[0].append(self._matched(rnn, t, ms))
                    continue
                assert self.ngram is not None
                ngram_np, bucket = ngram_of or self.ngram.logprob_and_bucket(h, t.cpu().numpy())
                ngram = torch.from_numpy(ngram_np)
                mixed = mix_logprobs(rnn.numpy(), ngram_np, self._weights(bucket))
                parts[0].append(self._matched(torch.from_numpy(mixed), t, ms))
                parts[1].append(rnn)
                parts[2].append(ngram)
                parts[3].append(torch.from_numpy(bucket).double())
        empty = torch.zeros(0, dtype=torch.float64)
        joined = [torch.cat(p) if p else empty for p in parts]
        if not vals:
            return joined, (torch.zeros(0, top), torch.zeros(0, top, dtype=torch.long))
        return joined, (torch.cat(vals).float().cpu(), torch.cat(ids).cpu())

    def _matched(
        self, logprobs: Tensor, targets: Tensor, states: np.ndarray[Any, Any] | None
    ) -> Tensor:
        """The targets' log P (N,) with the match mixed in, where there is one."""
        if states is None:
            return logprobs
        assert self.match is not None
        lp = self.match.token_logprobs(logprobs.numpy(), targets.cpu().numpy(), states)
        return torch.from_numpy(lp)

    @staticmethod
    def _rows(whole: bool, n: int) -> list[int]:
        """Which of `_score`'s rows `_gather`'s n parts go to: all of them in order, or,
        when the n-gram is scored over the whole chunk, the RNN's and its φ."""
        return [1, 4, 5][:n] if whole else list(range(n))

    def _ngram_features(self, hist: np.ndarray[Any, np.dtype[np.int64]]) -> np.ndarray[Any, Any]:
        """The n-gram's φ (entropy, largest ln P) (N, 2) after each history (N, order-1):
        its whole distribution, a chunk of positions at a time."""
        assert self.ngram is not None
        layout = layout_of(self.ngram)
        out = [
            log_features(layout.log_probabilities_at(layout.contexts(h), np.float64)[0])
            for h in (hist[s : s + _OUTPUT_CHUNK] for s in range(0, len(hist), _OUTPUT_CHUNK))
        ]
        return np.concatenate(out) if out else np.zeros((0, 2))

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

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

Sampling keeps a `Batch`: each running `Generation` owns a slice of the
recurrent state along dimension 1, its own parameters and its own random
generator (one uniform number per step, drawn whether or not it is needed), so
a sequence gives the same tokens alone or beside any others. `add()` prefills
new prompts into the batch, `step()` picks one token for every sequence and
advances the model once for all that continue, and finished sequences leave at
once.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence

from models.checkpoint import Checkpoint, start_token
from models.errors import CheckpointError
from models.model import State
from models.ngram import NO_TOKEN, mix_logprobs
from models.tokenizers import BOS, EOS, PAD, UNK, Decoder

# Sampling never emits these: they have no text, and a sample's text must score
# back to the same tokens. (Their probability still counts in every logprob.)
_NEVER_SAMPLED = [PAD, UNK, BOS]
SEED_SPACE = 2**63  # seeds are in [0, 2**63): a non-negative int64
_OUTPUT_CHUNK = 4096  # positions per output-layer call: bounds the (N, V) buffer
# Scoring runs the recurrent layers a window of time steps at a time, over only the
# rows still running (rows are sorted longest first, so those are a prefix): a window
# ends where a row ends, but spans at least _MIN_WINDOW steps (a recurrent call has a
# set-up cost) and at most _MAX_WINDOW (the (B, T, F) buffers of one call). Padding
# is then mostly not computed: +23% tokens/s on 64 sentences of 40 to 80 characters.
_MIN_WINDOW = 8
_MAX_WINDOW = 512
_PADDED_IDS = 1 << 20  # rows x time steps of one scoring batch, padding included


@dataclass
class TokenLogprob:
    id: int
    token: str
    logprob: float
    top: list[tuple[str, float]] | None = None


@dataclass
class ScoreResult:
    text: str
    logprob: float
    num_tokens: int
    oov_count: int
    tokens: list[TokenLogprob] | None = None
    # Bidirectional models: the backward model's log-probability of the same
    # text, over as many predictions as `logprob`; None for forward-only models.
    backward_logprob: float | None = None
    # Models with an n-gram: `logprob` is the mixture's; these are the RNN's
    # alone and the n-gram's alone, over the same tokens. None without one.
    rnn_logprob: float | None = None
    ngram_logprob: float | None = None

    @property
    def log10prob(self) -> float:
        return self.logprob / math.log(10)

    @property
    def average_logprob(self) -> float | None:
        """The mean of the forward and backward logprobs; None without a backward one."""
        if self.backward_logprob is None:
            return None
        return (self.logprob + self.backward_logprob) / 2

    @property
    def perplexity(self) -> float | None:
        """exp(-logprob / num_tokens); None when no token was scored."""
        if self.num_tokens == 0:
            return None
        return math.exp(-self.logprob / self.num_tokens)


@dataclass
class SampleParams:
    max_tokens: int = 100
    temperature: float = 1.0  # 0 is greedy
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False  # keep each token's log-probability
    top_logprobs: int = 0  # and this many alternatives per position

    def __post_init__(self) -> None:
        checks = [
            ("max_tokens", self.max_tokens >= 0, "must be >= 0"),
            ("temperature", 0.0 <= self.temperature <= 100.0, "must be in [0, 100]"),
            ("top_k", self.top_k >= 0, "must be >= 0"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("min_p", 0.0 <= self.min_p < 1.0, "must be in [0, 1)"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "must be non-empty"),
            ("top_logprobs", self.top_logprobs >= 0, "must be >= 0"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise ValueError(f"{name} {message}, not {getattr(self, name)!r}")
        if self.seed is not None and not 0 <= self.seed < SEED_SPACE:
            raise ValueError(f"seed must be in [0, 2**63), not {self.seed}")


@dataclass
class SampleResult:
    text: str
    finish_reason: str  # "eos" | "length" | "stop"
    num_tokens: int
    logprob: float
    seed: int
    tokens: list[TokenLogprob] | None = None


_UNIFORM_BLOCK = 64  # uniforms each sequence draws from its generator at a time


@dataclass(eq=False)
class Generation:
    """One sequence being sampled; `key` is whatever the caller uses to find it.

    Its text is decoded only when something reads it (a stop string, a stream,
    the result), and then only the tokens added since the last read.
    """

    params: SampleParams
    seed: int
    prompt_ids: list[int]
    prompt_text: str
    key: object = None
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tops: list[list[tuple[str, float]]] = field(default_factory=list)
    sent: int = 0  # characters of `text` already handed out by `delta()`
    finish_reason: str | None = None
    decoder: Decoder | None = None  # the completion's text after the prompt
    rng: np.random.Generator = field(init=False)
    _text: str = field(init=False, default="")
    _decoded: int = field(init=False, default=0)  # ids behind `_text`
    _fixed: bool = field(init=False, default=False)  # text set by hand (cut at a stop)
    _stop_scanned: int = field(init=False, default=0)  # text length searched for stops

    def __post_init__(self) -> None:
        self.rng = np.random.Generator(np.random.PCG64(self.seed))

    @property
    def text(self) -> str:
        if not self._fixed and self._decoded != len(self.ids) and self.decoder is not None:
            self._text = self.decoder.text(self.ids)
            self._decoded = len(self.ids)
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        self._text, self._fixed = value, True

    def delta(self) -> str:
        """Text not yet handed out that can no longer change.

        While running, hold back the end of the text that could still grow into
        a stop string (it would be cut) and an unfinished UTF-8 character.
        """
        text = self.text
        end = len(text)
        if self.finish_reason is None:
            while end > self.sent and text[end - 1] == "\ufffd":
                end -= 1
            for stop in self.params.stop:
                for k in range(min(len(stop) - 1, end - self.sent), 0, -1):
                    if text[end - k : end] == stop[:k]:
                        end -= k
                        break
        out = text[self.sent : end]
        self.sent = max(self.sent, end)
        return out

    def result(self) -> SampleResult:
        assert self.finish_reason is not None
        return SampleResult(
            text=self.text,
            finish_reason=self.finish_reason,
            num_tokens=len(self.ids),
            logprob=float(sum(self.logprobs)),
            seed=self.seed,
        )


def choose_tokens(
    logprobs: Tensor,
    temperature: Tensor,
    top_k: Tensor,
    top_p: Tensor,
    min_p: Tensor,
    uniform: Tensor,
    plan: SamplingPlan | None = None,
) -> Tensor:
    """Pick one token per row by inverse-CDF sampling with each row's parameters.

    logprobs (B, V); the rest (B,). Rows are computed independently, so a
    row's choice never depends on its neighbours: `plan` only skips work that
    would leave every row as it is (dividing by a temperature of 1, truncating
    rows that ask for no truncation, taking the argmax for rows that are not
    greedy), never a different arithmetic for some rows.
    """
    plan = plan or SamplingPlan.of(temperature, top_k, top_p, min_p)
    lp = logprobs + _never_sampled_mask(logprobs)  # -inf where sampling never goes
    scaled = lp / temperature.clamp(min=1e-6).unsqueeze(1) if plan.scale else lp
    probs = torch.softmax(scaled, dim=-1)  # (B, V)
    # Rows without truncation draw from the CDF in vocabulary order, rows with it
    # from the sorted one; each row takes its own path, whatever its neighbours do.
    chosen = _inverse_cdf(probs.cumsum(-1), uniform)
    if plan.truncated is not None and plan.truncated.numel():
        t = plan.truncated
        sorted_p, order = probs[t].sort(dim=-1, descending=True)
        rank = torch.arange(probs.shape[1], device=probs.device).unsqueeze(0)
        keep = (top_k[t].unsqueeze(1) == 0) | (rank < top_k[t].unsqueeze(1))
        keep &= (sorted_p.cumsum(-1) - sorted_p) < top_p[t].unsqueeze(1)  # the top one always
        keep &= sorted_p >= min_p[t].unsqueeze(1) * sorted_p[:, :1]
        pos = _inverse_cdf((sorted_p * keep).cumsum(-1), uniform[t])
        chosen = chosen.index_copy(0, t, order.gather(1, pos.unsqueeze(1)).squeeze(1))
    if plan.greedy is not None:
        chosen = torch.where(plan.greedy, lp.argmax(-1), chosen)
    return chosen


@dataclass
class SamplingPlan:
    """What a batch's sampling parameters need, worked out once when its rows change."""

    scale: bool  # some row's temperature is not 1 (0 included)
    truncated: Tensor | None  # rows with top-k, top-p or min-p: their indices
    greedy: Tensor | None  # (B,) True where temperature is 0; None if no row is greedy

    @classmethod
    def of(cls, temperature: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor) -> SamplingPlan:
        greedy = temperature == 0
        truncated = ((top_k > 0) | (top_p < 1) | (min_p > 0)).nonzero().squeeze(1)
        return cls(
            scale=bool((temperature != 1).any()),
            truncated=truncated if truncated.numel() else None,
            greedy=greedy if bool(greedy.any()) else None,
        )


_MASKS: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def _never_sampled_mask(logprobs: Tensor) -> Tensor:
    """(V,): -inf at the ids sampling never emits, 0 elsewhere (cached per shape)."""
    key = (logprobs.shape[-1], logprobs.dtype, logprobs.device)
    mask = _MASKS.get(key)
    if mask is None:
        mask = torch.zeros(key[0], dtype=key[1], device=key[2])
        mask[_NEVER_SAMPLED] = float("-inf")
        _MASKS[key] = mask
    return mask


def _inverse_cdf(cdf: Tensor, uniform: Tensor) -> Tensor:
    """cdf (B, V), uniform (B,) -> the position (B,) where each row's mass passes u × total."""
    target = (uniform * cdf[:, -1]).unsqueeze(1)
    # right=True: the first position whose cumulative mass exceeds the target,
    # which always carries positive probability.
    pos = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[1] - 1)
    return pos.squeeze(1)


def _windows(lengths: list[int], T: int) -> list[tuple[int, int, int]]:
    """(start, end, rows running) of each recurrent call over a chunk whose rows have
    `lengths`, longest first (see _MIN_WINDOW)."""
    out, t0 = [], 0
    while t0 < T:
        n = sum(1 for x in lengths if x > t0)
        next_end = min(x for x in lengths[:n])
        t1 = min(T, t0 + _MAX_WINDOW, max(t0 + _MIN_WINDOW, next_end))
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

    def __init__(self, checkpoint: Checkpoint, max_batch: int = 64) -> None:
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
        # Decoding reads the first layer's input projection from a table (small vocabularies).
        self.input_gates = self.model.input_gate_table()
        self.decode_weights = self.model.decode_weights()  # transposed, contiguous
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
            inp, tgt = torch.from_numpy(inp_np), torch.from_numpy(tgt_np)
            lengths = torch.from_numpy(lens)
            hist = self._histories(inp) if mixing else None  # (B, T, N-1)
            inp, tgt = inp.to(self.device), tgt.to(self.device)
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
                feats, state = self.model.features(inp[:n, t0:t1], state, backward=backward)
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
                lps[0][mask] = torch.from_numpy(
                    mix_logprobs(lps[1][mask].numpy(), ngram, self._weights(bucket))
                )
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

    def _histories(self, inp: Tensor) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The n-gram's history of each target: inp (B, T) -> (B, T, N-1), the inputs
        up to and including each position, -1 before the first."""
        assert self.ngram is not None
        width = self.ngram.order - 1
        ids = inp.numpy().astype(np.int64)
        if width == 0:
            return np.zeros((*ids.shape, 0), np.int64)
        padded = np.concatenate([np.full((ids.shape[0], width - 1), NO_TOKEN), ids], axis=1)
        return np.lib.stride_tricks.sliding_window_view(padded, width, axis=1)

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
                    part, bucket = self.ngram.mixture_part(h, self.mix_table)  # (1-λ)·P_ngram
                    lam = torch.from_numpy(self._weights(bucket)).to(full.device)
                    mixed = torch.from_numpy(part).to(full.device) + lam[:, None] * full.exp()
                    full = mixed.log()
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
                parts[0].append(
                    torch.from_numpy(mix_logprobs(rnn.numpy(), ngram_np, self._weights(bucket)))
                )
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

    def new_batch(self) -> Batch:
        return Batch(self)

    def sample(self, prompt: str, params: SampleParams, n: int = 1) -> list[SampleResult]:
        """Run n samples to completion: sample i uses seed `(seed + i) mod 2**63`."""
        batch = self.new_batch()
        gens = [self.generation(prompt, params, i) for i in range(n)]
        for s in range(0, n, self.max_batch):
            batch.add(gens[s : s + self.max_batch])
            while len(batch):
                batch.step()
        return [self.result(g) for g in gens]

    def result(self, g: Generation) -> SampleResult:
        r = g.result()
        if g.params.logprobs or g.params.top_logprobs:
            pieces = [self.tokenizer.piece(i) if i != EOS else "<eos>" for i in g.ids]
            r.tokens = [
                TokenLogprob(i, p, lp, g.tops[j] if g.params.top_logprobs else None)
                for j, (i, p, lp) in enumerate(zip(g.ids, pieces, g.logprobs, strict=True))
            ]
        return r


class Batch:
    """Running generations and their recurrent state, along the batch dimension.

    Per step the work that grows with the batch is tensor work; the Python loop
    over rows only appends each row's token and log-probability and checks its
    end (and decodes text only for rows with stop strings).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.gens: list[Generation] = []
        self.state: State | None = None  # each (layers, B, hidden)
        self.next_logprobs: Tensor | None = None  # (B, V): each sequence's next-token distribution
        # With an n-gram: each row's last N-1 tokens (-1 before the start), (B, N-1).
        self.history: np.ndarray[Any, np.dtype[np.int64]] | None = None
        # Per-row temperature, top_k, top_p, min_p: (B,) each.
        self._knobs: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        # Each row's next uniforms, drawn from its own generator a block at a time (the
        # same numbers, in the same order, as one draw per step): (B, block), (B,).
        self._uniforms = np.zeros((0, _UNIFORM_BLOCK))
        self._upos = np.zeros(0, dtype=np.int64)
        self._want_top = 0  # the most top_logprobs any row asks for
        self._plan: SamplingPlan | None = None
        self._stop_rows: list[int] = []  # rows with stop strings
        self._left = np.zeros(0, dtype=np.int64)  # tokens each row may still take

    def __len__(self) -> int:
        return len(self.gens)

    @torch.inference_mode()
    def add(self, gens: list[Generation]) -> list[Generation]:
        """Prefill the prompts of `gens` together and join them to the batch.

        Returns those already finished (max_tokens 0), which do not join.
        """
        done = [g for g in gens if g.params.max_tokens == 0]
        for g in done:
            g.finish_reason = "length"
        gens = [g for g in gens if g.params.max_tokens > 0]
        if not gens:
            return done
        model = self.engine.model
        inputs = [[self.engine.start_id] + g.prompt_ids for g in gens]
        if all(len(x) == 1 for x in inputs):  # no prompts: one decoding step from zero
            state, last = self._prefill_start(len(gens))
        else:
            state, last = self._prefill(inputs)
        history = self._start_history(inputs)
        lp = self._next_logprobs(model.log_probs(last), history)  # (B_new, V)
        self.gens.extend(gens)
        self._knobs = None
        self._uniforms = np.concatenate(
            [self._uniforms, np.stack([g.rng.random(_UNIFORM_BLOCK) for g in gens])]
        )
        self._upos = np.concatenate([self._upos, np.zeros(len(gens), dtype=np.int64)])
        self._left = np.concatenate(
            [self._left, np.array([g.params.max_tokens - len(g.ids) for g in gens])]
        )
        if self.state is None or self.next_logprobs is None:
            self.state, self.next_logprobs, self.history = state, lp, history
        else:
            self.state = tuple(
                torch.cat([a, b], dim=1) for a, b in zip(self.state, state, strict=True)
            )
            self.next_logprobs = torch.cat([self.next_logprobs, lp])
            if history is not None and self.history is not None:
                self.history = np.concatenate([self.history, history])
        return done

    def _prefill_start(self, n: int) -> tuple[State, Tensor]:
        """n sequences with no prompt: the start token from a zero state, as a decoding step
        (a fused layer's set-up would cost more than the step itself)."""
        model, dev = self.engine.model, self.engine.device
        start = torch.full((n,), self.engine.start_id, dtype=torch.long, device=dev)
        feats, state = model.step(
            start, model.init_state(n, dev), self.engine.input_gates, self.engine.decode_weights
        )
        return state, feats

    def _prefill(self, inputs: list[list[int]]) -> tuple[State, Tensor]:
        """The start token and prompt of each sequence through the recurrent layers at once:
        each row's state after its own last token, and its features there (B, F)."""
        model, dev = self.engine.model, self.engine.device
        lengths = torch.tensor([len(x) for x in inputs])
        ids = torch.full((len(inputs), int(lengths.max())), PAD, dtype=torch.long)
        for row, x in enumerate(inputs):
            ids[row, : len(x)] = torch.tensor(x)
        ids = ids.to(dev)
        # Packing makes the returned state each row's state after its own last
        # token, not after the padding.
        emb = model.embed(ids)  # (B, T, E); dropout is off at inference
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        zero = model.init_state(len(inputs), dev)
        if len(zero) == 2:  # (h, c)
            out_packed, (h, c) = model.rnn(packed, (zero[0], zero[1]))
            state: State = (h, c)
        else:
            out_packed, h = model.rnn(packed, zero[0])
            state = (h,)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_packed, batch_first=True)
        last = out[torch.arange(len(inputs)), lengths.to(dev) - 1]  # (B_new, H)
        if model.proj is not None:
            last = model.proj(last)
        return state, last

    def _start_history(self, inputs: list[list[int]]) -> np.ndarray[Any, np.dtype[np.int64]] | None:
        """The n-gram's history after each prompt (start token included): (B, N-1)."""
        ngram = self.engine.ngram
        if ngram is None:
            return None
        width = ngram.order - 1
        rows = [([NO_TOKEN] * width + x)[len(x) :] if width else [] for x in inputs]
        return np.array(rows, dtype=np.int64).reshape(len(inputs), width)

    def _next_logprobs(
        self, rnn: Tensor, history: np.ndarray[Any, np.dtype[np.int64]] | None
    ) -> Tensor:
        """The model's next-token log-probs (B, V): the RNN's, or the mixture with the n-gram."""
        ngram, table = self.engine.ngram, self.engine.mix_table
        if ngram is None or history is None or table is None or self.engine.rnn_only:
            return rnn
        # (1-λ)·P_ngram + λ·P_rnn, then the log: three passes over (B, V), in the
        # RNN's own precision (a sample's logprob agrees with its score to ~1e-6).
        dtype = np.float32 if rnn.dtype == torch.float32 else np.float64
        part, bucket = ngram.mixture_part(history, table, dtype)  # (B, V), (B,)
        mixed = torch.from_numpy(part).to(rnn.device)
        weight = torch.from_numpy(table[bucket].astype(dtype)).to(rnn.device).unsqueeze(1)
        return mixed.add_(rnn.exp().mul_(weight)).log_()

    def remove(self, keep: list[int]) -> None:
        """Keep only the rows in `keep` (indices into the batch)."""
        if len(keep) == len(self.gens):
            return
        self.gens = [self.gens[i] for i in keep]
        self._knobs = None
        self._uniforms, self._upos = self._uniforms[keep], self._upos[keep]
        self._left = self._left[keep]
        if not keep:
            self.state, self.next_logprobs, self.history = None, None, None
            return
        assert self.state is not None and self.next_logprobs is not None
        idx = torch.tensor(keep, device=self.engine.device)
        self.state = tuple(s.index_select(1, idx) for s in self.state)
        self.next_logprobs = self.next_logprobs.index_select(0, idx)
        if self.history is not None:
            self.history = self.history[keep]

    def cancel(self, gen: Generation) -> None:
        """Drop a generation whose client went away."""
        self.remove([i for i, g in enumerate(self.gens) if g is not gen])

    def _draw(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """This step's uniform of every row (B,), refilling the blocks that run out."""
        rows = np.arange(len(self.gens))
        u = self._uniforms[rows, self._upos]
        self._upos += 1
        for r in np.flatnonzero(self._upos == _UNIFORM_BLOCK):
            self._uniforms[r] = self.gens[r].rng.random(_UNIFORM_BLOCK)
            self._upos[r] = 0
        return u

    @torch.inference_mode()
    def step(self) -> list[Generation]:
        """Pick the next token of every sequence; advance those that go on.

        Returns the generations that finished in this step (already removed).
        """
        if not self.gens:
            return []
        assert self.state is not None and self.next_logprobs is not None
        gens, lp = self.gens, self.next_logprobs
        dev = lp.device
        if self._knobs is None:  # rebuilt only when the batch's members change
            p = [g.params for g in gens]
            self._knobs = (
                torch.tensor([x.temperature for x in p], device=dev),
                torch.tensor([x.top_k for x in p], device=dev),
                torch.tensor([x.top_p for x in p], device=dev),
                torch.tensor([x.min_p for x in p], device=dev),
            )
            self._want_top = max(x.top_logprobs for x in p)
            self._plan = SamplingPlan.of(*self._knobs)
            self._stop_rows = [row for row, x in enumerate(p) if x.stop]
        uniform = torch.from_numpy(self._draw()).to(device=dev, dtype=lp.dtype)
        tokens = choose_tokens(lp, *self._knobs, uniform, plan=self._plan)  # (B,)
        chosen_lp = lp.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
        tok_list = tokens.tolist()
        top_v = top_i = None
        if self._want_top:
            top_v, top_i = lp.topk(min(self._want_top, lp.shape[1]), dim=-1)
        for g, t, lp_t in zip(gens, tok_list, chosen_lp, strict=True):  # O(1) per row
            g.ids.append(t)
            g.logprobs.append(lp_t)
        if top_v is not None and top_i is not None:
            self._record_tops(top_v, top_i)
        # Which rows end: <eos> (counted in logprob and num_tokens; no text), a stop
        # string (only rows that have one decode their text), or the length limit.
        self._left -= 1
        at_eos = tokens.cpu().numpy() == EOS
        ending = at_eos | (self._left <= 0)
        for row in self._stop_rows:
            if not at_eos[row] and self._stopped(gens[row]):
                ending[row] = True
        finished = []
        if ending.any():
            for r in np.flatnonzero(ending).tolist():
                g = gens[r]
                if g.finish_reason is None:  # a stop string already said "stop"
                    g.finish_reason = "eos" if at_eos[r] else "length"
                finished.append(g)
        keep = np.flatnonzero(~ending).tolist()
        self.remove(keep)
        if keep:
            going = tokens if len(keep) == len(tok_list) else tokens[keep]
            feats, self.state = self.engine.model.step(
                going, self.state, self.engine.input_gates, self.engine.decode_weights
            )  # (B, F)
            if self.history is not None and self.history.shape[1]:
                self.history = np.concatenate(
                    [self.history[:, 1:], going.cpu().numpy().astype(np.int64)[:, None]], axis=1
                )
            self.next_logprobs = self._next_logprobs(
                self.engine.model.log_probs(feats), self.history
            )
        return finished

    def _record_tops(self, top_v: Tensor, top_i: Tensor) -> None:
        piece = self.engine.tokenizer.piece
        for row, g in enumerate(self.gens):
            if k := g.params.top_logprobs:
                g.tops.append(
                    [(piece(a), v) for a, v in zip(top_i[row, :k].tolist(),
                                                   top_v[row, :k].tolist(), strict=True)]
                )  # fmt: skip

    def _stopped(self, g: Generation) -> bool:
        """Whether the token just added completed a stop string; if so, cut there."""
        text = g.text
        longest = max(len(s) for s in g.params.stop)
        lo = max(0, g._stop_scanned - longest + 1)  # a stop may start in the text before
        g._stop_scanned = len(text)
        hits = [i for s in g.params.stop if (i := text.find(s, lo)) >= 0]
        if hits:
            self._cut_at(g, min(hits))
            return True
        return False

    def _cut_at(self, g: Generation, pos: int) -> None:
        """End `g` at a stop string found at `pos`: keep the tokens wholly before it."""
        text = g.text[:pos]
        k = len(g.ids)
        while k > 0 and not text.startswith(self._completion(g, g.ids[:k])):
            k -= 1
        del g.ids[k:]
        del g.logprobs[k:]
        del g.tops[k:]
        g.text = text
        g.finish_reason = "stop"

    def _completion(self, g: Generation, ids: list[int]) -> str:
        """The text of `ids` as it continues the prompt (spacing decided in context)."""
        tok = self.engine.tokenizer
        full = tok.decode(g.prompt_ids + ids)
        if full.startswith(g.prompt_text):
            return full[len(g.prompt_text) :]
        return tok.decode(ids)

"""Maximum-entropy direct connections (Mikolov's RNNME, faster-rnnlm's `--direct`),
measured against the same RNN without them, both mixed with the model's n-gram.

    python bench/maxent.py --corpus CORPUS --ngram-from RUN/best --budget 600 \
        --direct-order 4 [--threads 1] > result.json

Direct connections are hashed n-gram features added to the output logits and
trained with the network: for each context length k = 1..order-1, the last k
tokens are hashed to a base offset b_k, and the logit of target w gains
table[(b_k + w) mod D]. Each (context, target) pair gets its own weight up to
hash collisions, which are rare for pairs that occur (D = 2**log2-size). A full
softmax needs the logit of every target, so each position reads (order-1) × T
weights, T the targets that have features (`--direct-targets`: the T most
frequent ids, which the vocabulary's order puts first; all by default).

The loop is the trainer's in miniature, the same for both arms: the word
defaults' model (2x256 tied LSTM, dropout 0.2, no weight drop), sentence
batches of 20, BPTT 35, SGD at lr 20 with cosine decay over the time budget,
clip 0.25, 100 warm-up steps; `--direct-order 0` is the arm without. It
evaluates once at the end, on the whole validation and test splits, from <bos>
as `rnnlm eval` does; the n-gram's per-token probabilities come from the
checkpoint given (the same training split's 5-gram), and λ is fit on
validation. An experiment, not a feature: the model it trains is not saved.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rnnlm.models.checkpoint import load_checkpoint  # noqa: E402
from rnnlm.models.model import RNNLM  # noqa: E402
from rnnlm.models.ngram import mix_logprobs  # noqa: E402
from rnnlm.models.tokenizers import BOS, PAD  # noqa: E402
from rnnlm.training.config import TrainConfig, TrainState  # noqa: E402
from rnnlm.training.corpus import TokenSplit, load_corpus_tokenizer  # noqa: E402
from rnnlm.training.data import sentence_batches, sentence_windows  # noqa: E402
from rnnlm.training.mixture import choose_weights, component_logprobs  # noqa: E402
from rnnlm.training.train import learning_rate  # noqa: E402  (the trainer's schedule, warm-up included)

_P = 2_147_483_647  # 2**31 - 1: hashes stay below 2**31, so products fit in int64
_MIX = 2_654_435_761  # Knuth's multiplicative constant


class Direct(nn.Module):
    """Hashed n-gram -> logit weights: context (N, K) ids, newest first, -1 = none."""

    def __init__(self, order: int, log2_size: int, targets: int) -> None:
        super().__init__()
        self.K, self.T, self.mask = order - 1, targets, (1 << log2_size) - 1
        self.table = nn.Parameter(torch.zeros(1 << log2_size))
        self.register_buffer("span", torch.arange(targets), persistent=False)

    def forward(self, context: Tensor) -> Tensor:
        """context (N, K) -> direct logits of the first T ids (N, T)."""
        h = torch.zeros(context.shape[0], dtype=torch.long)
        out = None
        for k in range(self.K):
            c = context[:, k]
            h = (h * 1_000_003 + c + 2) % _P  # the context's last k+1 tokens
            base = ((h ^ (k + 1)) * _MIX) & self.mask  # (N,)
            idx = (base.unsqueeze(1) + self.span) & self.mask  # (N, T)
            w = self.table[idx] * (c >= 0).unsqueeze(1)  # no feature before the start
            out = w if out is None else out + w
        assert out is not None
        return out


def contexts(prev: Tensor, inp: Tensor, K: int) -> Tensor:
    """prev (B, K-1) the inputs before this window, inp (B, W) -> (B, W, K) newest first."""
    full = torch.cat([prev, inp], dim=1)  # (B, K-1+W)
    W = inp.shape[1]
    return torch.stack([full[:, K - 1 - k : K - 1 - k + W] for k in range(K)], dim=2)


def log_probs(model: RNNLM, direct: Direct | None, feats: Tensor, ctx: Tensor) -> Tensor:
    """feats (N, F), ctx (N, K) -> log-probabilities (N, V)."""
    assert model.decoder is not None
    logits = model.decoder(feats)  # (N, V)
    if direct is not None:
        T = direct.T
        logits = torch.cat([logits[:, :T] + direct(ctx), logits[:, T:]], dim=1)
    return F.log_softmax(logits, dim=-1)


def split_logprobs(model: RNNLM, direct: Direct | None, split: TokenSplit, K: int) -> np.ndarray:
    """ln P of every token of the split (each sequence from <bos>), in split order."""
    model.eval()
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for s0 in range(0, len(split), 64):
            seqs = [split.sequence(i) for i in range(s0, min(len(split), s0 + 64))]
            T = max(len(s) for s in seqs)
            inp = torch.full((len(seqs), T), PAD, dtype=torch.long)
            tgt = torch.full((len(seqs), T), PAD, dtype=torch.long)
            for r, s in enumerate(seqs):
                tgt[r, : len(s)] = torch.from_numpy(s.astype(np.int64))
                inp[r, 0] = BOS
                inp[r, 1 : len(s)] = torch.from_numpy(s[:-1].astype(np.int64))
            feats, _ = model.features(inp)
            mask = tgt != PAD  # row-major: each sequence's tokens in order
            ctx = contexts(torch.full((len(seqs), K - 1), -1), inp, K)[mask] if K else inp[:0]
            lp = log_probs(model, direct, feats[mask], ctx)
            out.append(lp.gather(1, tgt[mask].unsqueeze(1)).squeeze(1).double().numpy())
    model.train()
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--ngram-from", type=Path, required=True, help="a checkpoint of the corpus")
    p.add_argument("--budget", type=float, default=600.0, help="training seconds")
    p.add_argument("--max-steps", type=int, default=0, help="stop here too (step-matched runs)")
    p.add_argument("--direct-order", type=int, default=4, help="0: no direct connections")
    p.add_argument("--log2-size", type=int, default=22, help="direct weights: 2**this floats")
    p.add_argument("--direct-targets", type=int, default=0, help="ids with features; 0: all")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    tok = load_corpus_tokenizer(a.corpus)
    V = tok.vocab_size
    # The limits make `learning_rate`'s cosine follow the clock, or the steps when those end first.
    cfg = TrainConfig(time_budget=a.budget, max_steps=a.max_steps or None).resolve(tok.kind, V)
    assert cfg.lr and cfg.batch_size and cfg.bptt and cfg.clip
    model = RNNLM(cfg.model_config(V))
    K = max(a.direct_order - 1, 0)
    direct = Direct(a.direct_order, a.log2_size, a.direct_targets or V) if K else None
    params = list(model.parameters()) + (list(direct.parameters()) if direct else [])
    opt = torch.optim.SGD(params, lr=cfg.lr)
    train = TokenSplit(a.corpus, "train")
    t0, step, epoch, tokens = time.monotonic(), 0, 0, 0
    model.train()

    def done() -> bool:
        return time.monotonic() - t0 >= a.budget or 0 < a.max_steps <= step

    while not done():
        for idx in sentence_batches(train, cfg.batch_size, epoch, cfg.seed):
            _, wins = sentence_windows(train, idx, cfg.bptt)
            state, prev = None, torch.full((len(idx), max(K - 1, 0)), -1)
            for inp, tgt in wins:
                st = TrainState(step=step, elapsed=time.monotonic() - t0)
                # No epoch limit: the unit count is unused.
                lr = learning_rate(cfg, st, units_per_epoch=1)
                for g in opt.param_groups:
                    g["lr"] = lr
                feats, state = model.features(inp, state)
                state = tuple(s.detach() for s in state)
                mask = tgt != PAD
                ctx = contexts(prev, inp, K)[mask] if K else inp[:0]  # (N, K)
                lp = log_probs(model, direct, feats[mask], ctx)
                loss = F.nll_loss(lp, tgt[mask])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                opt.step()
                if K > 1:
                    prev = inp[:, -(K - 1) :]
                step += 1
                tokens += int(mask.sum())
            if done():
                break
        epoch += 1
    elapsed = time.monotonic() - t0
    ck = load_checkpoint(a.ngram_from)
    assert ck.ngram is not None, f"{a.ngram_from}: no n-gram inside"
    result: dict[str, Any] = {
        "bench": "maxent",
        "direct_order": a.direct_order,
        "direct_weights": (1 << a.log2_size) if K else 0,
        "direct_targets": (a.direct_targets or V) if K else 0,
        "threads": a.threads,
        "max_steps": a.max_steps or None,
        "steps": step,
        "tokens": tokens,
        "elapsed_s": round(elapsed, 1),
        "tokens_per_s": round(tokens / elapsed, 1),
    }
    parts = {}
    for name in ("valid", "test"):
        split = TokenSplit(a.corpus, name)
        rnn = split_logprobs(model, direct, split, K)
        _, ng, bucket = component_logprobs(ck, ck.ngram, split)
        assert len(rnn) == len(ng), (len(rnn), len(ng))
        parts[name] = (rnn, ng, bucket)
    lam, buckets = choose_weights(*parts["valid"], ck.ngram.order)
    rnn, ng, bucket = parts["test"]
    result["lambda"] = round(lam, 4)
    result["test_ppl_rnn"] = math.exp(-float(np.mean(rnn)))
    result["test_ppl_ngram"] = math.exp(-float(np.mean(ng)))
    result["test_ppl_mixture_one_weight"] = math.exp(-float(np.mean(mix_logprobs(rnn, ng, lam))))
    if buckets is not None:
        mixed = mix_logprobs(rnn, ng, buckets[bucket])
        result["test_ppl_mixture"] = math.exp(-float(np.mean(mixed)))
    else:
        result["test_ppl_mixture"] = result["test_ppl_mixture_one_weight"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""The training objective, and the validation score it is judged by."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from rnnlm.models.checkpoint import Checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.model import RNNLM, State
from rnnlm.models.ngram import NgramModel
from rnnlm.models.tokenizers import PAD, Tokenizer
from rnnlm.training.corpus import TokenSplit


class LossModule(nn.Module):
    """The training objective as a module, so DistributedDataParallel can wrap it.

    inputs, targets (B, T) -> NLL summed over non-padding targets (1,), their
    count, new state. A bidirectional model takes (2B, T), the rows and then
    their reversed copies (`with_backward_rows`), and a state of 2B rows too; it
    returns (2,), the forward and the backward NLL, and the count of one direction.
    A residual model's `prior` (B, T, V) is the n-gram's ln P at every position.
    """

    def __init__(self, model: RNNLM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, inp: Tensor, tgt: Tensor, state: State | None, prior: Tensor | None = None
    ) -> tuple[Tensor, Tensor, State]:
        directions = (False, True) if self.model.config.bidirectional else (False,)
        D = len(directions)
        nlls, states, count = [], [], tgt.new_zeros(())
        for d, backward in enumerate(directions):
            rows = slice(d * inp.shape[0] // D, (d + 1) * inp.shape[0] // D)
            s = None if state is None else tuple(x[:, rows] for x in state)
            feats, new_s = self.model.features(inp[rows], s, backward=backward)  # (B, T, F)
            mask = tgt[rows] != PAD
            p = None if prior is None else prior[rows][mask]  # (N, V): a residual model's
            if p is None and self.model.config.residual:  # a padding window (DDP): no targets
                p = feats.new_zeros(int(mask.sum()), self.model.config.vocab_size)
            lp = self.model.token_log_probs(feats[mask], tgt[rows][mask], p)  # (N,)
            nlls.append(-lp.sum())
            states.append(new_s)
            count = mask.sum()  # the same in both directions
        new_state = tuple(torch.cat(parts, dim=1) for parts in zip(*states, strict=True))
        return torch.stack(nlls), count, new_state


_EVAL_CHUNK = 1024  # sequences scored at a time


def evaluate_split(
    model: RNNLM,
    tok: Tokenizer,
    split: TokenSplit,
    mode: str,
    max_tokens: int | None = None,
    backward: bool = False,
    ngram: NgramModel | None = None,
) -> tuple[float, int]:
    """(total negative log-likelihood in nats, tokens scored) per the engine's convention.

    `backward`: of a bidirectional model's backward direction. `ngram`: a residual
    model's (the RNN's alone: λ = 1). Streams the split in chunks of sequences, so
    memory stays flat for any size.
    """
    was_training = model.training
    config = {"training": {"mode": mode}}
    engine = Engine(Checkpoint(Path("."), model, tok, config, ngram, 1.0))
    nll, n, seen = 0.0, 0, 0
    seqs: list[list[int]] = []

    def flush() -> None:
        nonlocal nll, n
        scored = (
            engine.score_token_ids_backward(seqs)
            if backward
            else [(ids, lps) for ids, lps, _ in engine.score_token_ids(seqs)]
        )
        for _, lps in scored:
            nll -= sum(lps)
            n += len(lps)
        seqs.clear()

    for i in range(len(split)):
        s = split.sequence(i)
        seqs.append(s[:-1].tolist())  # the engine appends <eos>
        seen += len(s)
        if len(seqs) >= _EVAL_CHUNK:
            flush()
        if max_tokens is not None and seen >= max_tokens:
            break
    flush()
    model.train(was_training)
    return nll, n

"""The training run's settings and counters: `TrainConfig` (defaults at the top,
`resolve()` fills those that depend on the corpus) and `TrainState` (what a
resumed run carries on from)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rnnlm.models.model import ModelConfig

# A full softmax up to this vocabulary, an adaptive one above (a 20,000-word full
# softmax of 256 inputs is 5M multiply-adds per token, four times the 2x256 LSTM).
ADAPTIVE_ABOVE = 20_000


@dataclass
class TrainConfig:
    # None: chosen by resolve() from the corpus (see DEFAULTS there).
    mode: str = "sentence"
    cell: str = "lstm"
    layers: int | None = None
    hidden: int | None = None
    embedding: int | None = None
    dropout: float | None = None
    weight_drop: float | None = None
    tied: bool | None = None
    adaptive: str = "auto"  # auto: adaptive softmax for vocabularies over ADAPTIVE_ABOVE
    bidirectional: bool = False  # a backward model too (sentence mode only)
    # The RNN over the n-gram (models/model.py, training/prior.py): sentence mode, a full
    # softmax, the n-gram estimated here (not --ngram-arpa).
    residual: bool = False
    optimizer: str | None = None  # sgd (words, subwords) | adamw (characters)
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None  # cosine (adamw) | plateau (sgd) | constant
    warmup: int = 100
    batch_size: int | None = None
    # The training step's matrix products: fp32, bf16 (autocast; the weights, the
    # optimizer and evaluation stay float32), or auto: bf16 where the device multiplies
    # it natively (training/precision.py). auto: on fortunes, 600 s, 2 threads, an Intel
    # Xeon with AMX, bf16 saw 1.6x the tokens and ended better, characters 1.922 bits
    # against 1.939, words 61.00 against 62.01 (docs/measured.md, 2026-12-06, night).
    precision: str = "auto"
    bptt: int | None = None
    clip: float | None = None  # 0: none
    patience: int = 5
    eval_every: int | None = None  # steps; None: ten times per time budget or per epoch
    max_eval_tokens: int = 200_000
    max_steps: int | None = None
    epochs: int | None = None
    time_budget: float | None = None
    save_every: int | None = None
    seed: int = 1234
    # The n-gram mixed with the RNN (estimated from the training split at the end
    # of the run, λ fit on the validation split); 0: none. None: chosen by resolve().
    ngram_order: int | None = None
    ngram_arpa: str | None = None  # a KenLM/SRILM ARPA file to use instead of estimating
    # The match model over the training split, mixed in over the n-gram's mixture when
    # it pays on validation text (models/match.py): tokens it reaches back; 0: none.
    match_len: int = 64

    def resolve(self, kind: str, vocab_size: int, bf16: bool = False) -> TrainConfig:
        """Fill the settings left None with the defaults for `kind`'s tokens; `bf16`:
        whether the run's steps multiply in bfloat16 (training/precision.py), which
        makes a wider word model pay."""
        word = kind != "char"
        wide = bf16 and kind == "word"  # measured for words; subwords keep 2x256
        if self.optimizer is None:
            # Words: the PyTorch word_language_model recipe's SGD, in sentence mode. On
            # fortunes, 600 s on one thread, the mixture with the 5-gram reached test PPL
            # 66.10 with it against 67.98 with AdamW (same model) and 69.77 with the
            # previous defaults (1x256, adaptive softmax, AdamW; docs/measured.md).
            self.optimizer = "sgd" if word else "adamw"
        sgd = self.optimizer == "sgd"
        # Measured on 2 CPU cores with a 10-minute budget (docs/measured.md): a
        # 1x256 word LSTM sees ~5x the tokens of a 2x512 one and ends far better.
        pick = {
            # Words: 2x256, tied 256-d embeddings and a full softmax (one layer: 67.34;
            # the previous 1x256 adaptive-softmax model: 69.77, both mixed); 2x384 where
            # the steps run in bf16, whose products of that width cost little more
            # (fortunes, 600 s, 2 threads, Intel Xeon AMX, mixed with the 5-gram and the
            # match model: 60.42 against 60.91 side by side in `make bench-quality`, and
            # 60.45 and 60.65 against 60.71, 61.27 and 61.43 in runs of their own; fp32,
            # where a step of 2x384 takes about twice as long, was not measured at 384, so
            # it keeps 2x256, as do subwords, not measured at 384; docs/measured.md,
            # 2026-12-07). Characters:
            # one layer of 512 at batch 32 (fortunes, 2 threads, with the 10-gram and the
            # match model; 300 s: 1.976 bits a character against 2.013 for 2x256 at batch
            # 64, 2.008 for 1x512 at 64, 2.001 for 2x256 at 32; 600 s, two seeds: 1.945
            # and 1.951 against 1.994 and 1.978; docs/measured.md, 2026-12-06).
            "layers": 2 if word else 1,
            "hidden": 512 if not word else 384 if wide else 256,
            "embedding": 64 if not word else 384 if wide else 256,
            # Locked dropout (AWD-LSTM). DropConnect on the recurrent weights
            # (`--weight-drop`) is off: fortunes, 600 s, 2 threads, two seeds, mixed test
            # PPL 63.20 and 63.17 without it against 63.92 and 64.40 with 0.3, whose masks
            # also cost a fifth of the steps (docs/measured.md, 2026-12-06).
            "dropout": 0.2 if word else 0.1,
            "weight_drop": 0.0,
            "tied": word,
            # Characters take a higher rate: in 120-s runs on fortunes, valid PPL
            # 12.0 at 3e-3, 9.4 at 1e-2, 8.7 at 2e-2 (docs/measured.md).
            "lr": 20.0 if sgd else 3e-3 if word else 1e-2,
            "weight_decay": 0.0 if sgd else 0.01,
            # Cosine to 5% over the budget, for SGD too: fortunes, 600 s, 2 threads, mixed
            # test PPL 63.63 against 65.60 with plateau (lr/4 when validation stalls),
            # whose result hangs on when in the budget a stall happens to come.
            "schedule": "cosine",
            "batch_size": 20 if word else 32,
            "clip": 0.25 if sgd else 1.0,
            "bptt": 35 if word else 200,
            # The n-gram alone on fortunes' validation split, by order (docs/ngram.md):
            # words 3: 93.1, 4: 87.0, 5: 85.6, 6: 85.4 (+33% memory); characters 8: 4.30,
            # 10: 4.25, 12: 4.22 (+60% memory); sentencepiece 4: 118.3, 5: 116.9, 6: 116.8.
            "ngram_order": default_ngram_order(kind),
        }
        for name, value in pick.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.adaptive == "on" or (self.adaptive == "auto" and vocab_size > ADAPTIVE_ABOVE):
            self.tied = False if self.adaptive == "auto" else self.tied
        if self.max_steps is None and self.epochs is None and self.time_budget is None:
            self.epochs = 20
        return self

    def model_config(self, vocab_size: int) -> ModelConfig:
        use_adaptive = self.adaptive == "on" or (
            self.adaptive == "auto" and vocab_size > ADAPTIVE_ABOVE
        )
        cutoffs = [c for c in (2000, 10000, 50000) if c < vocab_size - 1] if use_adaptive else []
        assert self.hidden and self.embedding and self.layers
        assert self.dropout is not None and self.weight_drop is not None
        return ModelConfig(
            vocab_size=vocab_size,
            cell=self.cell,
            embedding=self.embedding,
            hidden=self.hidden,
            layers=self.layers,
            dropout=self.dropout,
            weight_drop=self.weight_drop,
            tied=bool(self.tied),
            adaptive_cutoffs=cutoffs,
            bidirectional=self.bidirectional,
            residual=self.residual,
        )


def default_ngram_order(kind: str) -> int:
    return 10 if kind == "char" else 5


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    unit: int = 0  # batches (sentence) or windows (stream) done in this epoch
    window: int = 0  # bptt windows done in the unit in hand (a long sequence's batch)
    best_valid: float = math.inf
    bad_evals: int = 0
    lr_scale: float = 1.0  # plateau schedule
    elapsed: float = 0.0
    tokens: int = 0
    last_eval_step: int = 0
    last_eval_time: float = 0.0


# What a resumed run may change: its limits, and the n-gram made when it ends.
LIMIT_FIELDS = (
    "max_steps", "epochs", "time_budget", "patience", "save_every", "eval_every",
    "ngram_order", "ngram_arpa", "match_len",
)  # fmt: skip

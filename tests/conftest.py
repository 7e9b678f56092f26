"""Shared fixtures: tiny checkpoints built straight from `models/`, no training needed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlm.demo import stdlib_docstrings
from rnnlm.models.checkpoint import save_checkpoint
from rnnlm.models.gate import MixingGate
from rnnlm.models.match import BUCKETS, MatchModel, training_stream
from rnnlm.models.model import RNNLM, ModelConfig
from rnnlm.models.tokenizers import BOS, EOS, CharTokenizer, WordTokenizer
from rnnlm.training.ngram import estimate

TEXT = [
    "the cat sat on the mat.",
    "the dog sat on the log.",
    "a bird sang in the tree, and the cat listened.",
    "hello world! it's a fine day.",
]


GATE_SLOPES = (0.3, 0.5, -0.4, 0.6)  # make_checkpoint's gate: λ moves with every feature


def make_checkpoint(
    directory: Path,
    kind: str = "char",
    cell: str = "lstm",
    mode: str = "sentence",
    seed: int = 0,
    bidirectional: bool = False,
    ngram_order: int = 0,
    mix_weight: float = 0.6,
    bucket_weights: bool = False,
    residual: bool = False,
    match_mu: float = 0.0,
    gate: bool = False,
) -> Path:
    """A small random-weight model: enough to test scoring, sampling and serving.
    `ngram_order` > 0: with an n-gram of TEXT mixed in at λ = `mix_weight`, or with
    `bucket_weights` at a different λ in every mixing bucket (0.05 to 0.95); `residual`:
    the RNN's logits over that n-gram (models/model.py), the output bias random so the
    RNN's part is not near zero. `match_mu` > 0: with a match model over TEXT mixed in
    (models/match.py), μ that in every bucket with a match. `gate`: λ from a gate
    (models/gate.py) from the table's λ with slopes on every feature (GATE_SLOPES)."""
    torch.manual_seed(seed)
    if kind == "char":
        tok: CharTokenizer | WordTokenizer = CharTokenizer.fit(Counter("".join(TEXT)))
    else:
        w = WordTokenizer.fit(Counter(), vocab_size=None)
        tok = WordTokenizer.fit(Counter(t for line in TEXT for t in w.split(line)))
    cfg = ModelConfig(
        vocab_size=tok.vocab_size, cell=cell, embedding=16, hidden=32, layers=2, tied=True,
        bidirectional=bidirectional, residual=residual,
    )  # fmt: skip
    ngram = None
    if ngram_order:
        ids = [tok.encode(line) + [EOS] for line in TEXT]
        offsets = np.cumsum([0] + [len(x) for x in ids])
        start = EOS if mode == "stream" else BOS
        ngram, _ = estimate(np.concatenate(ids), offsets, ngram_order, tok.vocab_size, start)
    info: dict[str, object] = {"lambda": mix_weight, "source": "estimated"}
    if ngram is not None and bucket_weights:
        table = np.random.default_rng(seed).permutation(np.linspace(0.05, 0.95, ngram.buckets()))
        info["lambda_buckets"] = table.tolist()
    if ngram is not None and gate:
        lam = np.asarray(info.get("lambda_buckets", np.full(ngram.buckets(), mix_weight)))
        bias = np.log(lam / (1 - lam))
        info["lambda_gate"] = MixingGate(bias, np.array(GATE_SLOPES)).to_dict()
    model = RNNLM(cfg)
    if residual:
        assert model.decoder is not None
        torch.nn.init.normal_(model.decoder.bias, std=1.0)
    match = None
    if match_mu:
        ids = [tok.encode(line) + [EOS] for line in TEXT]
        stream = training_stream(ids, EOS if mode == "stream" else BOS, mode)
        match = MatchModel(stream, np.r_[0.0, np.full(BUCKETS - 1, match_mu)], max_len=16)
    save_checkpoint(
        directory, model, tok, ngram, info, match, training={"mode": mode, "step": 0}
    )  # fmt: skip
    return directory


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory with `char` (char LSTM) and `word` (word GRU) checkpoints,
    and the reference cells: `gru-simple` (char) and `lstm-peephole` (word)."""
    root = tmp_path_factory.mktemp("models")
    make_checkpoint(root / "char", "char", "lstm")
    make_checkpoint(root / "word", "word", "gru", seed=1)
    make_checkpoint(root / "gru-simple", "char", "gru-simple", seed=3)
    make_checkpoint(root / "lstm-peephole", "word", "lstm-peephole", seed=4)
    return root


@pytest.fixture(scope="session")
def char_checkpoint(models_dir: Path) -> Path:
    return models_dir / "char"


@pytest.fixture(scope="session")
def word_checkpoint(models_dir: Path) -> Path:
    return models_dir / "word"


@pytest.fixture(scope="session")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 60 KB of real text, one sequence per line."""
    path = tmp_path_factory.mktemp("text") / "docs.txt"
    path.write_text("\n".join(stdlib_docstrings(60_000)) + "\n", encoding="utf-8")
    return path

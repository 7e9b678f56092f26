"""The Python API a pipeline imports: `rnnlm.load(path)`, in KenLM's shape.

    import rnnlm
    lm = rnnlm.load("checkpoints/demo")
    lm.score("the cat sat", bos=True, eos=True)   # log10 P(sentence), as kenlm.Model.score
    list(lm.full_scores("the cat sat"))           # (log10 P, ngram_length, oov) per token
    lm.perplexity("the cat sat")
    lm.score_batch(["the cat sat", "a dog ran"])  # log10 P of each, batched as /score is
    s = rnnlm.State(); lm.BeginSentenceWrite(s)   # beam search, as KenLM (rnnlm/beam.py)

Every number is the engine's scoring (models/scoring.py, `Engine.score_batch`), the path
`rnnlm score` and `POST /score` take, so the three give the same number. A model that
carries an n-gram scores with the mixture of the RNN and the n-gram; `lm.rnn` and
`lm.ngram` are the same model scored by one part alone (same methods, same engine).

Thread-safe: one lock per loaded model around the engine, whose decoding step
computes in place. Picklable by path: a pickle holds the checkpoint's path and its
fingerprint (models/checkpoint.py), and unpickling loads the checkpoint again and
refuses it if it changed on disk since; so a process pool under fork or spawn gets a
working model without shipping its weights. A forked child runs torch on one thread
(see `_after_fork_in_child`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rnnlm.beam import FullScoreReturn, State, StateMethods
from rnnlm.loaded import Loaded, load_model
from rnnlm.models.adapt import Adaptation, score_adapting
from rnnlm.models.batch import sample as draw_samples
from rnnlm.models.engine import Engine
from rnnlm.models.errors import CheckpointError
from rnnlm.models.ngram import histories_of
from rnnlm.models.results import SampleResult, ScoreResult
from rnnlm.models.sampling import SampleParams
from rnnlm.models.tokenizers import EOS, UNK

__all__ = ["Adaptation", "CheckpointError", "FullScoreReturn", "LanguageModel", "State", "load"]

Part = Literal["mixture", "rnn", "ngram"]
LN10 = float(np.log(10.0))


def load(path: str | os.PathLike[str], device: str = "cpu") -> LanguageModel:
    """Load a checkpoint directory (as `rnnlm train` and `rnnlm demo` write them)."""
    return LanguageModel(path, device)


class LanguageModel(StateMethods):
    """A loaded rnnlm model, scored in KenLM's units (log10) and shapes.

    `bos=True` reads the sentence after the start token (`<bos>`), as the model was
    trained; `bos=False` reads its first token as context only, unscored (an RNN has no
    "null context" state to score it from, where KenLM scores it as a unigram).
    `eos=True` adds the probability of the end of the sentence (`</s>` in KenLM).
    A token is the model's own: a character, a word or punctuation mark, or a
    sentencepiece piece.
    """

    def __init__(
        self, path: str | os.PathLike[str], device: str = "cpu", *, part: Part = "mixture"
    ) -> None:
        self._init(load_model(Path(path), device, None), part)

    def _init(self, loaded: Loaded, part: Part) -> None:
        if part not in ("mixture", "rnn", "ngram"):
            raise ValueError(f"part must be 'mixture', 'rnn' or 'ngram', not {part!r}")
        if part == "ngram" and loaded.engine.ngram is None:
            raise ValueError(f"{loaded.path}: this model has no n-gram")
        self._loaded, self.part = loaded, part

    @classmethod
    def _view(cls, loaded: Loaded, part: Part) -> LanguageModel:
        lm = cls.__new__(cls)
        lm._init(loaded, part)
        return lm

    def __reduce__(self) -> tuple[Any, ...]:
        d = self._loaded
        return (_unpickle, (str(d.path), d.device, d.fingerprint, self.part))

    def __repr__(self) -> str:
        return f"rnnlm.LanguageModel({str(self.path)!r}, part={self.part!r})"

    # ------------------------------------------------------------ description

    @property
    def path(self) -> Path:
        return self._loaded.path

    @property
    def engine(self) -> Engine:
        """The engine underneath (models/engine.py); not thread-safe on its own."""
        return self._loaded.engine

    @property
    def rnn(self) -> LanguageModel:
        """The same model scored by its RNN alone (a residual model's RNN over its n-gram,
        models/model.py: it has no distribution without it)."""
        return LanguageModel._view(self._loaded, "rnn")

    @property
    def ngram(self) -> LanguageModel | None:
        """The same model scored by its n-gram alone; None for a model without one."""
        if self._loaded.engine.ngram is None:
            return None
        return LanguageModel._view(self._loaded, "ngram")

    @property
    def order(self) -> int:
        """The n-gram's order, as KenLM's; 0 for an RNN alone, whose history is unbounded
        (every token since the start of the sentence)."""
        ngram = self._loaded.engine.ngram
        return 0 if ngram is None or self.part == "rnn" else ngram.order

    @property
    def vocab_size(self) -> int:
        return self._loaded.engine.tokenizer.vocab_size

    def __contains__(self, word: object) -> bool:
        """Whether `word` is known: it tokenizes without `<unk>` (for a word model, it is in
        the vocabulary; a sentencepiece model knows every text)."""
        if not isinstance(word, str) or not word:
            return False
        ids = self._loaded.engine.tokenizer.encode(word)
        return bool(ids) and UNK not in ids

    # ---------------------------------------------------------------- scoring

    def score(self, sentence: str, bos: bool = True, eos: bool = True) -> float:
        """log10 P(sentence), as kenlm.Model.score."""
        return self.score_batch([sentence], bos, eos)[0]

    def score_batch(
        self, sentences: Sequence[str], bos: bool = True, eos: bool = True
    ) -> list[float]:
        """log10 P of each sentence, scored in batches as `POST /score` scores them."""
        return [self._log10(r) for r in self.score_results(sentences, bos, eos)]

    def score_results(
        self,
        sentences: Sequence[str],
        bos: bool = True,
        eos: bool = True,
        per_token: bool = False,
        adapt: Adaptation | None = None,
    ) -> list[ScoreResult]:
        """What `POST /score` returns of each sentence (natural-log `logprob`, `log10prob`,
        `num_tokens`, `perplexity`, `oov_count`, the RNN's and the n-gram's parts, and with
        `per_token` each token's), for the whole model whatever the view's part. `adapt`:
        the sentences read in order as one document, the RNN adapting to each once scored
        (`rnnlm.models.adapt`; this call's own copy of it)."""
        if isinstance(sentences, str):
            raise TypeError("score_batch takes a list of sentences, not one string")
        loaded = self._loaded
        with loaded.lock:
            if adapt is not None:
                return score_adapting(loaded.engine, list(sentences), bos, eos, per_token, adapt)
            return loaded.engine.score_batch(list(sentences), bos, eos, per_token=per_token)

    def full_scores(
        self, sentence: str, bos: bool = True, eos: bool = True
    ) -> Iterator[tuple[float, int, bool]]:
        """(log10 P, ngram_length, oov) of each scored token, then of the end with `eos`,
        as kenlm.Model.full_scores. `ngram_length` is the length of the longest n-gram the
        n-gram matched, ending in the token (KenLM's meaning); for an RNN alone, the
        history it read plus the token (it reads the whole sentence so far)."""
        (result,) = self.score_results([sentence], bos, eos, per_token=True)
        tokens = result.tokens or []
        lengths = self._ngram_lengths(sentence, bos, eos, len(tokens))
        for t, length in zip(tokens, lengths, strict=True):
            yield self._token_log10(t.logprob, t.rnn_logprob, t.ngram_logprob), length, t.id == UNK

    def perplexity(self, sentence: str) -> float:
        """10 ** (-log10 P / tokens), with the start and the end: as kenlm.Model.perplexity
        (which counts words + 1) and `/score`'s `perplexity` (which counts tokens, <eos> in)."""
        (result,) = self.score_results([sentence])
        assert result.num_tokens >= 1  # </s> at least
        return float(10.0 ** (-self._log10(result) / result.num_tokens))

    def _log10(self, r: ScoreResult) -> float:
        if self.part == "rnn" and r.rnn_logprob is not None:
            return r.rnn_logprob / LN10
        if self.part == "ngram":
            assert r.ngram_logprob is not None  # the view exists only with an n-gram
            return r.ngram_logprob / LN10
        return r.log10prob

    def _token_log10(self, mixed: float, rnn: float | None, ngram: float | None) -> float:
        if self.part == "rnn" and rnn is not None:
            return rnn / LN10
        if self.part == "ngram":
            assert ngram is not None
            return ngram / LN10
        return mixed / LN10

    def _ngram_lengths(self, sentence: str, bos: bool, eos: bool, scored: int) -> list[int]:
        engine = self._loaded.engine
        if engine.ngram is None or self.part == "rnn":
            return [j + 2 for j in range(scored)]  # the start (or first token), then the rest
        ids = ([engine.start_id] if bos else []) + engine.tokenizer.encode(sentence)
        full = ids + ([EOS] if eos else [])
        inputs = np.asarray(full[:-1], np.int64)[None, :]  # (1, T)
        hist = histories_of(inputs, engine.ngram.order)[0]  # (T, order-1)
        lengths = engine.ngram.matched_length(hist, np.asarray(full[1:], np.int64))
        return [int(x) for x in lengths]

    # --------------------------------------------------------------- sampling

    def sample(
        self,
        prompt: str = "",
        n: int = 1,
        max_tokens: int = 100,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> list[SampleResult]:
        """`n` samples that continue `prompt`, as `POST /sample` draws them (from the
        mixture: only the whole model samples). Each has `text`, `finish_reason` ("eos",
        "length" or "stop"), `num_tokens`, `logprob` (natural log) and `seed`."""
        if self.part != "mixture":
            raise ValueError(f"only the whole model samples, not its {self.part} alone")
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        params = SampleParams(max_tokens, temperature, top_k, top_p, seed=seed, stop=list(stop))
        loaded = self._loaded
        with loaded.lock:
            return draw_samples(loaded.engine, prompt, params, n)


def _unpickle(path: str, device: str, digest: str, part: Part) -> LanguageModel:
    return LanguageModel._view(load_model(Path(path), device, digest), part)

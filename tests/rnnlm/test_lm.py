"""`rnnlm.load`: the Python API in KenLM's shape, against the engine, KenLM itself, the CLI
and the service; threads, process pools under fork and spawn, and bad input."""

from __future__ import annotations

import json
import math
import multiprocessing
import pickle
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import kenlm
import numpy as np
import pytest
import torch

import rnnlm
from rnnlm.models.checkpoint import save_checkpoint
from rnnlm.models.errors import CheckpointError
from rnnlm.models.model import RNNLM, ModelConfig
from rnnlm.models.tokenizers import EOS, SPECIALS, WordTokenizer
from rnnlm.training.arpa import token_words, write_arpa
from rnnlm.training.ngram import estimate
from tests.app.conftest import make_client

DATA = Path(__file__).resolve().parent.parent / "data" / "ngram"
SENTENCES = ["w1 w2 w3", "w0 w0 w7 w1", "w299 w5", "w3", "w12 w0 w1 w2 w3 w4 w5 w6"]


@pytest.fixture(scope="module")
def word_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word model over the zipf corpus with its 3-gram mixed in at λ 0.6, and the same
    3-gram as an ARPA file beside it (`zipf.arpa`)."""
    root = tmp_path_factory.mktemp("lm")
    lines = [line.split() for line in (DATA / "zipf.txt").read_text().splitlines()]
    tok = WordTokenizer(SPECIALS + sorted({w for line in lines for w in line}), pretokenized=True)
    seqs = [tok.encode(" ".join(line)) + [EOS] for line in lines]
    ids, offsets = np.concatenate(seqs), np.cumsum([0] + [len(s) for s in seqs])
    ngram, _ = estimate(ids, offsets, 3, tok.vocab_size)
    write_arpa(ngram, token_words(tok), root / "zipf.arpa")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, cell="lstm", embedding=16, hidden=32, layers=1)
    save_checkpoint(root / "word", RNNLM(cfg), tok, ngram, {"lambda": 0.6, "source": "estimated"},
                    training={"mode": "sentence", "step": 0})  # fmt: skip
    return root / "word"


def test_kenlm_shapes_and_units(word_lm: Path) -> None:
    lm = rnnlm.load(word_lm)
    assert lm.order == 3 and lm.rnn.order == 0 and lm.ngram is not None and lm.ngram.order == 3
    for s in SENTENCES:
        full = list(lm.full_scores(s))
        assert len(full) == len(s.split()) + 1  # each word, then </s>
        assert all(isinstance(x, float) and isinstance(n, int) and isinstance(o, bool)
                   for x, n, o in full)  # fmt: skip
        assert lm.score(s) == pytest.approx(sum(x for x, _, _ in full), abs=1e-9)
        assert lm.perplexity(s) == pytest.approx(10 ** (-lm.score(s) / len(full)), rel=1e-9)
        # Without </s>: one fewer; without <s>: the first word is context, unscored.
        assert len(list(lm.full_scores(s, eos=False))) == len(full) - 1
        assert len(list(lm.full_scores(s, bos=False))) == len(full) - 1
    # The mixture lies between its parts, token by token: λ·P_rnn + (1-λ)·P_ngram.
    for (m, _, _), (r, _, _), (g, _, _) in zip(
        lm.full_scores(SENTENCES[4]), lm.rnn.full_scores(SENTENCES[4]),
        lm.ngram.full_scores(SENTENCES[4]), strict=True,
    ):  # fmt: skip
        assert 10**m == pytest.approx(0.6 * 10**r + 0.4 * 10**g, rel=1e-6)
    assert "w1" in lm and "w299" in lm and "nonesuch" not in lm and "" not in lm
    assert 3 not in lm  # type: ignore[operator]
    (oov,) = [o for _, _, o in lm.full_scores("nonesuch", eos=False)]
    assert oov


def test_the_ngram_part_is_what_kenlm_computes_from_its_arpa(word_lm: Path) -> None:
    lm, ken = rnnlm.load(word_lm), kenlm.Model(str(word_lm.parent / "zipf.arpa"))
    assert lm.ngram is not None and ken.order == lm.ngram.order
    for s in [*SENTENCES, "w0 " * 12]:
        ours, theirs = list(lm.ngram.full_scores(s)), list(ken.full_scores(s))
        np.testing.assert_allclose([x for x, _, _ in ours], [x for x, _, _ in theirs], atol=1e-4)
        assert [n for _, n, _ in ours] == [n for _, n, _ in theirs], s  # ngram_length
        assert lm.ngram.score(s) == pytest.approx(ken.score(s), abs=1e-3)


def test_score_batch_is_the_engine_cli_and_service_number(word_lm: Path, tmp_path: Path) -> None:
    lm = rnnlm.load(word_lm)
    batch = lm.score_batch(SENTENCES)
    assert batch == pytest.approx([lm.score(s) for s in SENTENCES], abs=1e-6)
    assert batch == pytest.approx([r.log10prob for r in lm.engine.score_batch(SENTENCES)], abs=1e-9)
    assert lm.rnn.score_batch(SENTENCES) == pytest.approx(
        [r.rnn_logprob / math.log(10) for r in lm.engine.score_batch(SENTENCES)], abs=1e-9
    )
    # `rnnlm score`, a process of its own.
    cli = subprocess.run([sys.executable, "-m", "rnnlm.cli", "score", "--model", str(word_lm),
                          *SENTENCES], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    rows = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [r["log10prob"] for r in rows] == pytest.approx(batch, abs=1e-6)
    # POST /score.
    models = tmp_path / "models"
    shutil.copytree(word_lm, models / "word")
    with make_client(models, default_model="word") as client:
        res = client.post("/score", json={"texts": SENTENCES})
    assert res.status_code == 200, res.text
    assert [r["log10prob"] for r in res.json()["results"]] == pytest.approx(batch, abs=1e-6)


def test_sampling_and_its_logprob(word_lm: Path) -> None:
    lm = rnnlm.load(word_lm)
    a = lm.sample(n=3, max_tokens=8, seed=5)
    assert a == lm.sample(n=3, max_tokens=8, seed=5)  # seeded: the same samples
    assert len(a) == 3 and all(s.num_tokens <= 8 for s in a)
    done = [s for s in a if s.finish_reason == "eos"]
    for s in done:  # a finished sample's logprob is its text's score (the model's own)
        assert s.logprob / math.log(10) == pytest.approx(lm.score(s.text), abs=1e-4)
    with pytest.raises(ValueError, match="only the whole model samples"):
        lm.rnn.sample()
    with pytest.raises(ValueError, match="n must be at least 1"):
        lm.sample(n=0)
    with pytest.raises(ValueError, match="temperature"):
        lm.sample(temperature=-1)


def test_threads_share_one_model(word_lm: Path) -> None:
    lm = rnnlm.load(word_lm)
    expected = lm.score_batch(SENTENCES)
    samples = lm.sample(n=2, max_tokens=6, seed=9)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                assert lm.score_batch(SENTENCES) == pytest.approx(expected, abs=1e-6)
                assert lm.sample(n=2, max_tokens=6, seed=9) == samples
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def _score_in_child(lm: rnnlm.LanguageModel) -> list[float]:
    return lm.score_batch(SENTENCES)


_POOL_LM: rnnlm.LanguageModel | None = None


def _keep(lm: rnnlm.LanguageModel) -> None:
    global _POOL_LM
    _POOL_LM = lm


def _score_with_kept(sentence: str) -> float:
    assert _POOL_LM is not None
    return _POOL_LM.ngram.score(sentence) if _POOL_LM.ngram else math.nan


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_process_pool_gets_a_working_model(word_lm: Path, method: str) -> None:
    lm = rnnlm.load(word_lm)
    lm.score("w1")  # the parent has used it (its threads, its lock) before the pool starts
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(2, mp_context=ctx, initializer=_keep, initargs=(lm,)) as pool:
        as_argument = pool.submit(_score_in_child, lm).result(timeout=120)
        kept = list(pool.map(_score_with_kept, SENTENCES, timeout=120))
    assert as_argument == pytest.approx(lm.score_batch(SENTENCES), abs=1e-6)
    assert lm.ngram is not None
    assert kept == pytest.approx(lm.ngram.score_batch(SENTENCES), abs=1e-9)


def test_a_pickle_is_the_path_and_a_changed_checkpoint_is_refused(
    word_lm: Path, tmp_path: Path
) -> None:
    path = tmp_path / "copy"
    shutil.copytree(word_lm, path)
    lm = rnnlm.load(path)
    data = pickle.dumps(lm.rnn)
    assert len(data) < 1000  # the path and a fingerprint, not the weights
    again = pickle.loads(data)
    assert again.part == "rnn" and again.score("w1 w2") == pytest.approx(lm.rnn.score("w1 w2"))
    config = json.loads((path / "config.json").read_text())
    config["metrics"] = {"note": "retrained since"}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="changed on disk since"):
        pickle.loads(data)
    assert rnnlm.load(path).score("w1")  # loading it anew is fine


def test_bad_input_is_refused_with_a_message(word_lm: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        rnnlm.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="part must be"):
        rnnlm.LanguageModel(word_lm, part="both")  # type: ignore[arg-type]
    lm = rnnlm.load(word_lm)
    with pytest.raises(TypeError, match="a list of sentences"):
        lm.score_batch("w1 w2")
    assert lm.score_batch([]) == []
    # The empty sentence is </s> after <s>: one token, as KenLM scores it.
    assert lm.perplexity("") == pytest.approx(10 ** -lm.score(""))
    assert len(list(lm.full_scores(""))) == 1


def test_a_model_without_ngram(tmp_path: Path) -> None:
    from tests.conftest import make_checkpoint

    lm = rnnlm.load(make_checkpoint(tmp_path / "c", "char", "lstm"))
    assert lm.ngram is None and lm.order == 0
    with pytest.raises(ValueError, match="has no n-gram"):
        rnnlm.LanguageModel(lm.path, part="ngram")
    full = list(lm.full_scores("the cat"))
    assert [n for _, n, _ in full] == list(range(2, 2 + len("the cat") + 1))
    assert lm.rnn.score("the cat") == lm.score("the cat")


def test_import_rnnlm_is_light() -> None:
    # The CLI imports the package: the API's torch and engine come only when used.
    code = "import sys, rnnlm; print('torch' in sys.modules, 'rnnlm.models.engine' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr

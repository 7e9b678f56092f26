import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rnnlm.models.batch import sample
from rnnlm.models.cells import RecurrentStack
from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.errors import RnnlmError
from rnnlm.models.sampling import SampleParams
from rnnlm.training.corpus import CorpusOptions, TokenSplit, build_corpus
from rnnlm.training.train import TrainConfig, train

SMALL = dict(hidden=48, embedding=16, layers=1, batch_size=16, eval_every=20, warmup=10, lr=0.01)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "char"
    build_corpus([text_file], out, CorpusOptions(seed=1))
    return out


def _unigram_test_ppl(corpus: Path) -> float:
    train_ids = np.asarray(TokenSplit(corpus, "train").tokens)
    counts = np.bincount(train_ids, minlength=256).astype(float) + 1.0
    logp = np.log(counts / counts.sum())
    test_ids = np.asarray(TokenSplit(corpus, "test").tokens)
    return float(np.exp(-logp[test_ids].mean()))


def test_loss_decreases_on_real_text(tmp_path: Path, corpus: Path):
    summary = train(TrainConfig(max_steps=120, **SMALL), corpus, tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"] - 0.3
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # Better than the unigram (frequency) model of the same training split.
    assert summary["test_ppl"] < 0.85 * _unigram_test_ppl(corpus)
    assert (tmp_path / "run/curve.png").read_bytes()[:4] == b"\x89PNG"
    best = load_checkpoint(tmp_path / "run/best")
    assert best.config["metrics"]["test_ppl"] == pytest.approx(summary["test_ppl"])
    assert best.config["training"]["step"] == summary["best_step"]


def test_stream_mode_trains_and_records_its_mode(tmp_path: Path, corpus: Path):
    cfg = TrainConfig(mode="stream", max_steps=40, bptt=32, cell="gru", **SMALL)
    summary = train(cfg, corpus, tmp_path / "run", progress=False)
    assert summary["steps"] == 40
    assert load_checkpoint(tmp_path / "run/best").mode == "stream"


def test_early_stopping_with_patience(tmp_path: Path, corpus: Path):
    # A learning rate this small cannot improve by the threshold: stop after `patience`.
    cfg = TrainConfig(max_steps=10_000, patience=2, **{**SMALL, "eval_every": 5, "lr": 1e-9})
    summary = train(cfg, corpus, tmp_path / "run", progress=False)
    assert summary["stopped"] == "early_stopping"
    assert summary["steps"] == 15


def test_time_budget_stops_the_run(tmp_path: Path, corpus: Path):
    # No step or epoch limit: only the budget can end this run (else the test's timeout).
    summary = train(TrainConfig(time_budget=3, **SMALL), corpus, tmp_path / "run", progress=False)
    assert summary["stopped"] == "time_budget"
    assert summary["elapsed_s"] >= 3


def test_refuses_to_overwrite_a_run_and_to_change_the_model_on_resume(tmp_path: Path, corpus: Path):
    train(TrainConfig(max_steps=5, **SMALL), corpus, tmp_path / "run", progress=False)
    with pytest.raises(RnnlmError, match="already holds a run"):
        train(TrainConfig(max_steps=5, **SMALL), corpus, tmp_path / "run", progress=False)
    with pytest.raises(RnnlmError, match="--hidden 64 differs"):
        train(
            TrainConfig(hidden=64),
            corpus,
            tmp_path / "run",
            resume=True,
            given={"hidden"},
            progress=False,
        )
    with pytest.raises(RnnlmError, match="nothing to resume"):
        train(TrainConfig(), corpus, tmp_path / "other", resume=True, progress=False)


def _train_cmd(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rnnlm.cli",
        "train",
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--hidden",
        "48",
        "--embedding",
        "16",
        "--layers",
        "1",
        "--batch-size",
        "8",
        "--schedule",
        "constant",
        "--max-steps",
        "150",
        "--eval-every",
        "1000",
        "--save-every",
        "10",
        "--no-progress",
        "--threads",
        "1",
        *extra,
    ]


def _latest_step(out: Path) -> int:
    try:
        return int(json.loads((out / "latest/trainer_state.json").read_text())["state"]["step"])
    except (OSError, ValueError, KeyError):
        return -1


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> bool:  # type: ignore[type-arg, no-untyped-def]
    """SIGKILL `proc` at a moment `ready()` holds: stopped first (SIGSTOP), so the moment
    is checked on the frozen process and cannot pass before the kill lands."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGSTOP)
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.001)
    return False


def _saving(out: Path) -> bool:
    """latest/ is being written: a temporary directory, or the old one set aside."""
    return any(p.name.startswith((".latest.tmp-", ".latest.old")) for p in out.iterdir())


def test_sigkill_at_several_moments_then_resume_reaches_the_same_end(tmp_path: Path, corpus: Path):
    out = tmp_path / "killed"
    moments = [
        ("after a few saves", lambda: _latest_step(out) >= 30),
        ("in the middle of a save", lambda: _latest_step(out) >= 60 and _saving(out)),
        ("after the last save, while finishing", lambda: _latest_step(out) == 150),
    ]
    steps_seen = []
    for i, (name, ready) in enumerate(moments):
        cmd = _train_cmd(corpus, out, *(["--resume"] if i else []))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert _kill_when(proc, ready), f"the run ended before the moment {name!r}"
        # The previous checkpoint is intact: it loads, and so does its trainer state.
        load_checkpoint(out / "latest")
        assert _latest_step(out) > (steps_seen[-1] if steps_seen else 0), name
        steps_seen.append(_latest_step(out))
    assert steps_seen[-1] == 150
    res = subprocess.run(
        _train_cmd(corpus, out, "--resume"), capture_output=True, text=True, timeout=240
    )
    assert res.returncode == 0, res.stderr
    assert "resuming at step 150" in res.stderr
    summary = json.loads(res.stdout)
    assert summary["steps"] == 150 and summary["stopped"] == "max_steps"
    # Nothing half-written is left behind.
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    # The resumed run ends with exactly the weights of an uninterrupted one.
    ref = tmp_path / "straight"
    subprocess.run(_train_cmd(corpus, ref), capture_output=True, check=True, timeout=240)
    a = load_file(str(out / "latest/model.safetensors"))
    b = load_file(str(ref / "latest/model.safetensors"))
    assert all((a[k] - b[k]).abs().max() < 1e-6 for k in a)
    assert json.loads((ref / "summary.json").read_text())["steps"] == 150


def test_resuming_a_finished_run_trains_no_further(tmp_path: Path, corpus: Path):
    cfg = TrainConfig(max_steps=12, **SMALL)
    train(cfg, corpus, tmp_path / "run", progress=False)
    before = load_file(str(tmp_path / "run/latest/model.safetensors"))
    summary = train(TrainConfig(), corpus, tmp_path / "run", resume=True, progress=False)
    assert summary["steps"] == 12 and summary["stopped"] == "max_steps"
    after = load_file(str(tmp_path / "run/latest/model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_long_line_obeys_the_limits_and_resumes_inside_its_batch(tmp_path: Path):
    # 4 lines of 399 characters (+ <eos>) are one batch of 8 windows of bptt 50.
    text = tmp_path / "long.txt"
    text.write_text("".join(("the cat sat on the mat. " * 17)[:399] + "\n" for _ in range(8)))
    c = tmp_path / "c"
    build_corpus([text], c, CorpusOptions(min_freq=1, valid_fraction=0, test_fraction=0))
    small = {**SMALL, "batch_size": 4, "bptt": 50, "eval_every": 1000, "schedule": "constant"}
    cut = train(TrainConfig(max_steps=11, **small), c, tmp_path / "cut", progress=False)
    assert cut["steps"] == 11  # not 16: the limit holds inside a batch
    saved = json.loads((tmp_path / "cut/latest/trainer_state.json").read_text())["state"]
    assert (saved["unit"], saved["window"]) == (1, 3)
    resumed = train(
        TrainConfig(max_steps=16), c, tmp_path / "cut", resume=True, given={"max_steps"},
        progress=False,
    )  # fmt: skip
    straight = train(TrainConfig(max_steps=16, **small), c, tmp_path / "straight", progress=False)
    assert resumed["steps"] == straight["steps"] == 16
    a = load_file(str(tmp_path / "cut/latest/model.safetensors"))
    b = load_file(str(tmp_path / "straight/latest/model.safetensors"))
    assert all((a[k] - b[k]).abs().max() < 1e-6 for k in a)


def test_sigterm_saves_a_resumable_checkpoint(tmp_path: Path, corpus: Path):
    out = tmp_path / "term"
    cmd = _train_cmd(corpus, out)
    cmd[cmd.index("--max-steps") + 1] = "100000"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = out / "latest/trainer_state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    step = json.loads(state.read_text())["state"]["step"]
    assert step > 0 and math.isfinite(step)
    assert "Traceback" not in err
    _ = os  # keep import for readers running this file alone


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A Python loop of tiny ops: on a busy machine a second thread only adds waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("cell", ["gru-simple", "lstm-peephole"])
@pytest.mark.usefixtures("one_thread")
def test_reference_cells_train_then_score_and_sample(tmp_path: Path, corpus: Path, cell: str):
    # A Python loop over time steps: keep it short (2 layers, so dropout between them runs).
    cfg = TrainConfig(cell=cell, max_steps=12, **{**SMALL, "layers": 2, "eval_every": 6})
    train(cfg, corpus, tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"]
    best = load_checkpoint(tmp_path / "run/best")
    assert best.config["model"]["cell"] == cell
    assert isinstance(best.model.rnn, RecurrentStack) and best.model.rnn.cell == cell
    engine = Engine(best, max_batch=4)
    for s in sample(engine, "The ", SampleParams(max_tokens=30, seed=5), n=3):
        scored = engine.score_batch(["The " + s.text], eos=s.finish_reason == "eos")[0]
        prompt = engine.score_batch(["The "], eos=False)[0]
        assert s.logprob == pytest.approx(scored.logprob - prompt.logprob, abs=1e-3)


@pytest.mark.usefixtures("one_thread")
def test_bidirectional_trains_and_reports_both_directions(tmp_path: Path, corpus: Path):
    cfg = TrainConfig(bidirectional=True, max_steps=40, **SMALL)
    summary = train(cfg, corpus, tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    for key in ("valid_loss", "valid_loss_backward", "train_loss_backward"):
        assert rows[-1][key] < rows[0][key], key
    # valid_ppl stays the forward perplexity; the backward one sits beside it.
    last = rows[-1]
    assert last["valid_ppl"] == pytest.approx(math.exp(last["valid_loss"]))
    assert last["valid_ppl_backward"] == pytest.approx(math.exp(last["valid_loss_backward"]))
    assert last["valid_ppl"] != pytest.approx(last["valid_ppl_backward"])
    best = load_checkpoint(tmp_path / "run/best")
    assert best.model.config.bidirectional and best.config["training"]["config"]["bidirectional"]
    assert summary["test_ppl_backward"] > 1
    metrics = best.config["metrics"]
    assert metrics["test_ppl_backward"] == pytest.approx(summary["test_ppl_backward"])
    assert summary["best_valid_ppl_backward"] == metrics["valid_ppl_backward"]
    r = Engine(best).score_batch(["The value of x."])[0]
    assert r.backward_logprob is not None and r.average_logprob is not None
    # Resuming keeps the backward model and its optimizer state.
    summary = train(TrainConfig(max_steps=44), corpus, tmp_path / "run", resume=True,
                    given={"max_steps"}, progress=False)  # fmt: skip
    assert summary["steps"] == 44 and summary["test_ppl_backward"] > 1


def test_stream_mode_refuses_bidirectional(tmp_path: Path, corpus: Path):
    cfg = TrainConfig(mode="stream", bidirectional=True, max_steps=2, **SMALL)
    with pytest.raises(RnnlmError, match="--bidirectional needs --mode sentence: .*no sequence"):
        train(cfg, corpus, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("kind", "optimizer", "want"),
    [
        # The default optimizer depends on the tokenizer, and what follows from it too.
        ("word", None, ("sgd", 20.0, 2, 256, 0.2, True, 20, 0.25, 35, "cosine")),
        ("sentencepiece", None, ("sgd", 20.0, 2, 256, 0.2, True, 20, 0.25, 35, "cosine")),
        ("char", None, ("adamw", 1e-2, 1, 64, 0.1, False, 32, 1.0, 200, "cosine")),
        ("word", "adamw", ("adamw", 3e-3, 2, 256, 0.2, True, 20, 1.0, 35, "cosine")),
        ("char", "sgd", ("sgd", 20.0, 1, 64, 0.1, False, 32, 0.25, 200, "cosine")),
    ],
)
def test_defaults_depend_on_the_tokenizer(kind: str, optimizer: str | None, want: tuple) -> None:  # type: ignore[type-arg]
    cfg = TrainConfig(optimizer=optimizer).resolve(kind, vocab_size=100)
    got = (cfg.optimizer, cfg.lr, cfg.layers, cfg.embedding, cfg.dropout, cfg.tied,
           cfg.batch_size, cfg.clip, cfg.bptt, cfg.schedule)  # fmt: skip
    assert got == want
    assert TrainConfig(lr=0.5).resolve(kind, 100).lr == 0.5  # a given value always wins
    # Steps in bf16: a word model of 2x384 (measured to pay there); the others as they are.
    wide = TrainConfig(optimizer=optimizer).resolve(kind, vocab_size=100, bf16=True)
    want_width = {"word": (384, 384), "sentencepiece": (256, 256), "char": (512, 64)}[kind]
    assert (wide.hidden, wide.embedding) == want_width
    assert (cfg.hidden, cfg.embedding) == {"char": (512, 64)}.get(kind, (256, 256))
    assert TrainConfig(hidden=128).resolve(kind, 100, bf16=True).hidden == 128
    # A vocabulary too large for a full softmax: an adaptive one, which cannot be tied.
    big = TrainConfig().resolve(kind, vocab_size=30_000)
    assert big.tied is False and big.model_config(30_000).adaptive_cutoffs == [2000, 10000]


def test_a_run_ends_with_its_ngram_mixed_in(tmp_path: Path, corpus: Path):
    summary = train(TrainConfig(max_steps=10, ngram_order=3, **SMALL), corpus, tmp_path / "run",
                    progress=False)  # fmt: skip
    ck = load_checkpoint(tmp_path / "run" / "best")
    assert ck.ngram is not None and ck.ngram.order == 3
    section = ck.config["ngram"]
    assert (
        section["lambda"] == summary["ngram"]["lambda"] and section["lambda_from"] == "validation"
    )
    assert 0 <= ck.mix_weight <= 1  # 10 steps: the RNN may be worth nothing yet
    valid = section["perplexity"]["valid"]
    # λ is the best weight on the validation split: better than either part alone there.
    assert valid["mixture"] <= min(valid["rnn"], valid["ngram"]) + 1e-9
    assert ck.config["metrics"]["test_ppl"] == summary["test_ppl"]
    assert ck.config["metrics"]["test_ppl_rnn"] == summary["test_ppl_rnn"]
    # Resumed when finished, with another order: only the n-gram is made again.
    again = train(TrainConfig(ngram_order=2), corpus, tmp_path / "run", resume=True,
                  given={"ngram_order"}, progress=False)  # fmt: skip
    assert again["steps"] == 10 and again["ngram"]["order"] == 2
    assert load_checkpoint(tmp_path / "run" / "best").ngram.order == 2  # type: ignore[union-attr]


def test_ngram_order_zero_is_the_rnn_alone(tmp_path: Path, corpus: Path):
    summary = train(TrainConfig(max_steps=5, ngram_order=0, **SMALL), corpus, tmp_path / "run",
                    progress=False)  # fmt: skip
    assert "ngram" not in summary and "test_ppl_rnn" not in summary
    assert load_checkpoint(tmp_path / "run" / "best").ngram is None


def test_the_ngram_default_depends_on_the_tokenizer():
    assert TrainConfig().resolve("char", 100).ngram_order == 10
    assert TrainConfig().resolve("word", 10_000).ngram_order == 5
    assert TrainConfig().resolve("sentencepiece", 8000).ngram_order == 5
    assert TrainConfig(ngram_order=0).resolve("char", 100).ngram_order == 0


@pytest.mark.parametrize("ngram_order", [3, 0])
def test_the_end_of_a_run_scores_the_test_split_once_and_writes_best_once(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, ngram_order: int
) -> None:
    from rnnlm.training import mixture
    from rnnlm.training import train as train_module

    test_split = TokenSplit(corpus, "test")
    scored: list[str] = []
    writes: list[str] = []
    evaluate, components = train_module.evaluate_split, mixture.components_and_features
    write, save = train_module.write_checkpoint_files, mixture.save_checkpoint

    def counting_evaluate(model, tok, split, *args, **kwargs):  # type: ignore[no-untyped-def]
        if len(split) == len(test_split):
            scored.append("evaluate_split")
        return evaluate(model, tok, split, *args, **kwargs)

    def counting_components(ck, ngram, split, *args, **kwargs):  # type: ignore[no-untyped-def]
        if len(split) == len(test_split):
            scored.append("components_and_features")
        return components(ck, ngram, split, *args, **kwargs)

    def counting_write(*args, **kwargs):  # type: ignore[no-untyped-def]
        writes.append("best or latest")
        return write(*args, **kwargs)

    def counting_save(*args, **kwargs):  # type: ignore[no-untyped-def]
        writes.append("best, with the n-gram")
        return save(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_split", counting_evaluate)
    monkeypatch.setattr(mixture, "components_and_features", counting_components)
    monkeypatch.setattr(mixture, "save_checkpoint", counting_save)
    cfg = TrainConfig(max_steps=20, ngram_order=ngram_order, **{**SMALL, "eval_every": 1000})
    finish = train_module._finish

    def counted_finish(*args, **kwargs):  # type: ignore[no-untyped-def]
        writes.clear()  # what the loop wrote (best/ and latest/ at its evaluation) aside
        monkeypatch.setattr(train_module, "write_checkpoint_files", counting_write)
        return finish(*args, **kwargs)

    monkeypatch.setattr(train_module, "_finish", counted_finish)
    summary = train(cfg, corpus, tmp_path / "run", progress=False)
    assert len(scored) == 1, scored  # the test split once
    assert len(writes) == 1, writes  # best/ once
    metrics = load_checkpoint(tmp_path / "run" / "best").config["metrics"]
    assert metrics["test_ppl"] == pytest.approx(summary["test_ppl"])
    assert summary["test_tokens"] > 0
    if ngram_order:  # the model is the mixture; the RNN's figure is named as such
        assert scored == ["components_and_features"] and writes == ["best, with the n-gram"]
        assert metrics["test_ppl_rnn"] == pytest.approx(summary["test_ppl_rnn"])
        assert summary["test_ppl"] != summary["test_ppl_rnn"]
    else:
        assert scored == ["evaluate_split"] and "test_ppl_rnn" not in summary


@pytest.mark.usefixtures("one_thread")
def test_a_residual_run_trains_over_its_ngram(tmp_path: Path, corpus: Path):
    from rnnlm.training.mixture import detach_ngram

    out = tmp_path / "run"
    cfg = TrainConfig(max_steps=30, ngram_order=4, residual=True, **SMALL)
    summary = train(cfg, corpus, out, progress=False)
    ck = load_checkpoint(out / "best")
    assert ck.model.config.residual and ck.ngram is not None and ck.ngram.order == 4
    assert ck.config["ngram"]["lambda_from"] == "validation"
    assert summary["residual_setup_s"] >= 0
    # It starts where the n-gram is: after 30 steps the RNN over the n-gram is near the
    # n-gram alone, where a plain RNN after as many steps is far above it.
    assert summary["test_ppl_rnn"] < 1.25 * summary["test_ppl_ngram"]
    plain = train(TrainConfig(max_steps=30, ngram_order=4, **SMALL), corpus, tmp_path / "plain",
                  progress=False)  # fmt: skip
    assert plain["test_ppl_rnn"] > 1.25 * summary["test_ppl_ngram"]
    # Every checkpoint of the run holds the n-gram: latest/ loads and resumes.
    assert load_checkpoint(out / "latest").ngram is not None
    with pytest.raises(RnnlmError, match="residual"):
        train(TrainConfig(ngram_order=3), corpus, out, resume=True, given={"ngram_order"},
              progress=False)  # fmt: skip
    with pytest.raises(RnnlmError, match="residual"):
        detach_ngram(out / "best")
    e = Engine(ck)
    s = sample(e, "the", SampleParams(max_tokens=20, seed=1))[0]
    scored = e.score_batch(["the" + s.text], eos=s.finish_reason == "eos")[0]
    assert s.logprob == pytest.approx(scored.logprob - e.score_batch(["the"], eos=False)[0].logprob,
                                      abs=1e-3)  # fmt: skip


@pytest.mark.parametrize(
    "extra", [{"mode": "stream"}, {"ngram_order": 0}, {"bidirectional": True}],
    ids=["stream", "no-ngram", "bidirectional"],
)  # fmt: skip
def test_residual_refuses_what_it_cannot_train_over(tmp_path: Path, corpus: Path, extra: dict):  # type: ignore[type-arg]
    cfg = TrainConfig(max_steps=1, residual=True, **{**SMALL, **extra})
    with pytest.raises(RnnlmError, match="--residual"):
        train(cfg, corpus, tmp_path / "run", progress=False)

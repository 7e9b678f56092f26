"""The real `rnnlm` command, as a user runs it: corpus -> train -> eval/score/sample."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

RNNLM = [sys.executable, "-m", "rnnlm.cli"]
# Real training runs, as long as the machine is slow (the full demo: ~45 s on 2 busy cores):
# the deadlines are hang guards, far above ten times that, never a measurement.
GUARD_S = 1200
pytestmark = pytest.mark.timeout(GUARD_S)


def run(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [*RNNLM, *args], capture_output=True, text=True, timeout=GUARD_S, env=env, input=stdin
    )
    if check:
        assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> Path:
    root = tmp_path_factory.mktemp("cli")
    run(
        "corpus",
        str(text_file),
        "--out",
        str(root / "corpus"),
        "--tokenizer",
        "word",
        "--vocab-size",
        "800",
        "--lowercase",
    )
    out = run(
        "train",
        "--corpus",
        str(root / "corpus"),
        "--out",
        str(root / "run"),
        "--hidden",
        "48",
        "--embedding",
        "32",
        "--layers",
        "1",
        "--weight-drop",
        "0.3",
        "--max-steps",
        "30",
        "--eval-every",
        "15",
        "--no-progress",
    )
    summary = json.loads(out.stdout)
    assert summary["steps"] == 30 and summary["test_ppl"] > 1
    # The n-gram is made when training ends, λ fit on the validation split: the
    # model's perplexity is the mixture's, at most the weighted geometric mean of its
    # parts' (ln is concave: ln(λa + (1-λ)b) >= λ ln a + (1-λ) ln b, token by token).
    lam = summary["ngram"]["lambda"]
    assert summary["ngram"]["order"] == 5 and 0 <= lam <= 1  # 30 steps: the RNN may add nothing
    bound = summary["test_ppl_rnn"] ** lam * summary["test_ppl_ngram"] ** (1 - lam)
    # (With one λ per mixing bucket, that holds of the mixture at the single λ.)
    single = summary.get("test_ppl_one_weight", summary["test_ppl"])
    assert summary["ngram"]["bucket_weights"] == ("test_ppl_one_weight" in summary)
    assert single <= bound * (1 + 1e-9)
    assert "n-gram: order 5" in out.stderr and "λ (the RNN's weight)" in out.stderr
    config = json.loads((root / "run" / "best" / "config.json").read_text())
    assert config["model"]["weight_drop"] == 0.3  # as given
    return root / "run" / "best"


def test_eval_prints_perplexity_and_bits(trained: Path, text_file: Path):
    r = json.loads(run("eval", "--model", str(trained), "--input", str(text_file)).stdout)
    assert r["perplexity"] > 1
    assert r["bits_per_token"] > r["bits_per_character"] > 0
    assert r["unk_count"] > 0 and r["tokens"] > r["sequences"]
    # The mixture's figures, and each part's alone on the same tokens.
    lam = r["ngram"]["lambda"]
    if not r["ngram"]["bucket_weights"]:  # one λ: at most the weighted geometric mean
        bound = r["perplexity_rnn"] ** lam * r["perplexity_ngram"] ** (1 - lam)
        assert r["perplexity"] <= bound * (1 + 1e-9)
    assert r["bits_per_character_ngram"] > 0 and r["bits_per_character_rnn"] > 0
    # The same numbers `rnnlm score` gives line by line.
    lines = [x.strip() for x in text_file.read_text().splitlines() if x.strip()][:200]
    short = text_file.parent / "eval-short.txt"
    short.write_text("\n".join(lines) + "\n")
    r = json.loads(run("eval", "--model", str(trained), "--input", str(short)).stdout)
    scored = [json.loads(x) for x in run("score", "--model", str(trained), "--input",
                                         str(short)).stdout.splitlines()]  # fmt: skip
    nll = -sum(x["logprob"] for x in scored)
    assert r["perplexity"] == pytest.approx(math.exp(nll / sum(x["num_tokens"] for x in scored)))
    # --adapt: the lines again in order, the RNN adapting; its own row beside the same
    # static figures. A bad rate is refused before anything loads.
    a = json.loads(run("eval", "--model", str(trained), "--input", str(short), "--adapt",
                       "--adapt-lr", "0.01").stdout)  # fmt: skip
    assert {k: v for k, v in a.items() if k != "adapted"} == r
    assert a["adapted"]["lr"] == 0.01 and a["adapted"]["perplexity"] > 1
    bad = run("eval", "--model", str(trained), "--input", str(short), "--adapt", "--adapt-lr",
              "-1", check=False)  # fmt: skip
    assert bad.returncode == 2 and "--adapt-lr" in bad.stderr
    # The cache alone: no RNN step (--adapt-lr 0), the lines read held in a cache.
    c = json.loads(run("eval", "--model", str(trained), "--input", str(short), "--adapt",
                       "--adapt-lr", "0", "--adapt-cache", "4096").stdout)  # fmt: skip
    assert c["adapted"]["lr"] == 0 and c["adapted"]["cache"] == 4096
    bad = run("eval", "--model", str(trained), "--input", str(short), "--adapt",
              "--adapt-cache", "-3", check=False)  # fmt: skip
    assert bad.returncode == 2 and "--adapt-cache" in bad.stderr


def test_score_texts_and_file(trained: Path, tmp_path: Path):
    rows = [
        json.loads(x)
        for x in run(
            "score", "--model", str(trained), "the module", "", "--per-token"
        ).stdout.splitlines()
    ]
    assert [r["text"] for r in rows] == ["the module", ""]
    assert rows[0]["num_tokens"] == 3 and len(rows[0]["tokens"]) == 3
    assert set(rows[0]) == {
        "text",
        "logprob",
        "log10prob",
        "num_tokens",
        "perplexity",
        "oov_count",
        "rnn_logprob",
        "ngram_logprob",
        "tokens",
    }
    f = tmp_path / "in.txt"
    f.write_text("the module\nreturn the value\n")
    from_file = [
        json.loads(x)
        for x in run("score", "--model", str(trained), "--input", str(f)).stdout.splitlines()
    ]
    assert from_file[0]["logprob"] == pytest.approx(rows[0]["logprob"], abs=1e-4)
    stdin = run("score", "--model", str(trained), "--input", "-", stdin="the module\n")
    assert json.loads(stdin.stdout)["logprob"] == pytest.approx(rows[0]["logprob"], abs=1e-4)


def test_sample_is_reproducible_and_scores_back(trained: Path):
    args = [
        "sample",
        "--model",
        str(trained),
        "--seed",
        "4",
        "-n",
        "3",
        "--json",
        "--max-tokens",
        "20",
    ]
    a = [json.loads(x) for x in run(*args).stdout.splitlines()]
    b = [json.loads(x) for x in run(*args).stdout.splitlines()]
    assert [{**s, "logprob": 0} for s in a] == [{**s, "logprob": 0} for s in b] and len(a) == 3
    # Each process times its two BLAS libraries (models/blas.py) and a busy machine may
    # make it pick the other one: the same tokens, logprobs apart by float32 rounding.
    assert [s["logprob"] for s in a] == pytest.approx([s["logprob"] for s in b], rel=1e-6)
    for s in a:
        scored = run(
            "score",
            "--model",
            str(trained),
            s["text"],
            *([] if s["finish_reason"] == "eos" else ["--no-eos"]),
        )
        assert json.loads(scored.stdout)["logprob"] == pytest.approx(s["logprob"], abs=1e-3)
    greedy = run("sample", "--model", str(trained), "--temperature", "0", "--prompt", "the")
    assert greedy.stdout.startswith("the")


def _fails(res: subprocess.CompletedProcess, message: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert message in lines[0], lines[0]


def test_user_errors_are_one_line(tmp_path: Path, trained: Path, text_file: Path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _fails(
        run("corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "c"), check=False),
        "no such file",
    )
    _fails(
        run("corpus", str(empty), "--out", str(tmp_path / "c"), check=False),
        "training split is empty",
    )
    _fails(
        run(
            "corpus",
            str(text_file),
            "--out",
            str(tmp_path / "c"),
            "--valid-fraction",
            "2",
            check=False,
        ),
        "--valid-fraction",
    )
    _fails(
        run("train", "--corpus", str(tmp_path), "--out", str(tmp_path / "r"), check=False),
        "not a corpus directory",
    )
    _fails(
        run("train", "--corpus", str(tmp_path), "--out", "r", "--lr", "abc", check=False), "--lr"
    )
    _fails(
        run("train", "--corpus", str(tmp_path), "--out", "r", "--weight-drop", "1", check=False),
        "--weight-drop",
    )
    _fails(
        run("train", "--corpus", str(tmp_path), "--out", "r", "--cell", "tcn", check=False),
        "--cell",
    )
    _fails(
        run("sample", "--model", str(tmp_path / "none"), check=False),
        "no such checkpoint directory",
    )
    _fails(
        run("sample", "--model", str(trained), "--temperature", "-1", check=False), "--temperature"
    )
    _fails(run("score", "--model", str(trained), check=False), "nothing to score")
    _fails(
        run("eval", "--model", str(trained), "--input", str(empty), check=False),
        "no text to evaluate",
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in trained.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x80\x04junk")
    _fails(run("score", "--model", str(broken), "x", check=False), "model.safetensors")
    _fails(run("frobnicate", check=False), "invalid choice")


def test_demo_builds_once_then_is_cached(tmp_path: Path):
    out = tmp_path / "checkpoints"
    first = run("demo", "--out", str(out), "--steps", "20", "--max-valid-ppl", "1e6")
    assert "demo model ready" in first.stderr
    config = json.loads((out / "demo/config.json").read_text())
    assert config["tokenizer"]["kind"] == "char" and config["model"]["cell"] == "lstm"
    before = (out / "demo/model.safetensors").stat().st_mtime_ns
    second = run("demo", "--out", str(out), "--steps", "20", "--max-valid-ppl", "1e6")
    assert "demo model ready" in second.stderr
    assert (out / "demo/model.safetensors").stat().st_mtime_ns == before  # not retrained
    assert not (out / ".demo-work").exists()
    sample = run("sample", "--model", str(out / "demo"), "--seed", "1", "--max-tokens", "30")
    assert sample.stdout.strip()


# The demo's recipe on a small slice of the same docstrings, in a process of its own
# (hash seeds and all): the whole harvest costs ~40 s a build on a slow machine.
_SMALL_DEMO = """
import sys
from pathlib import Path
import rnnlm.demo as demo
full = demo.stdlib_docstrings
demo.stdlib_docstrings = lambda: full(60_000)
from rnnlm.models.errors import RnnlmError
try:
    demo.build_demo(Path(sys.argv[1]), steps=int(sys.argv[2]), max_valid_ppl=float(sys.argv[3]))
except RnnlmError as e:
    sys.exit(f"rnnlm: {e}")
"""


def small_demo(out: Path, steps: int, bound: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", _SMALL_DEMO, str(out), str(steps), str(bound)]
    return subprocess.run(args, capture_output=True, text=True, timeout=GUARD_S, env=env)


def test_demo_is_the_same_model_wherever_it_is_built(tmp_path: Path):
    # Steps and a seed, not a clock: built again elsewhere, the same weights (on one
    # machine bit for bit; across CPUs only rounding differs).
    from safetensors.torch import load_file

    weights = []
    for where in ("one", "two"):
        res = small_demo(tmp_path / where, 20, 1e6)
        assert res.returncode == 0, res.stderr
        weights.append(load_file(str(tmp_path / where / "demo/model.safetensors")))
    first_w, again_w = weights
    assert first_w.keys() == again_w.keys()  # (the header's key order may not)
    assert all(torch.equal(first_w[k], again_w[k]) for k in first_w)


def test_demo_above_its_bound_is_not_published(tmp_path: Path):
    # A demo worse than the bound is not published, and says why in one line.
    bad = small_demo(tmp_path / "bad", 2, 1.5)
    assert bad.returncode == 1 and "above the 1.5 it must reach" in bad.stderr
    assert not (tmp_path / "bad" / "demo").exists()
    assert not (tmp_path / "bad" / ".demo-work").exists()


def test_reference_cell_trains_samples_and_scores(trained: Path, tmp_path: Path):
    corpus, run_dir = trained.parent.parent / "corpus", tmp_path / "run"
    run(
        "train",
        *("--corpus", str(corpus), "--out", str(run_dir), "--cell", "lstm-peephole"),
        *("--hidden", "32", "--embedding", "16", "--layers", "1"),
        *("--max-steps", "6", "--eval-every", "3", "--no-progress"),
    )
    best = str(run_dir / "best")
    args = ("sample", "--model", best, "--seed", "2", "--json", "--max-tokens", "12")
    s = json.loads(run(*args).stdout)
    no_eos = [] if s["finish_reason"] == "eos" else ["--no-eos"]
    scored = json.loads(run("score", "--model", best, s["text"], *no_eos).stdout)
    assert scored["logprob"] == pytest.approx(s["logprob"], abs=1e-3)


def test_bidirectional_trains_scores_and_evaluates(trained: Path, tmp_path: Path):
    corpus, run_dir = trained.parent.parent / "corpus", tmp_path / "run"
    out = run(
        "train",
        *("--corpus", str(corpus), "--out", str(run_dir), "--bidirectional"),
        *("--hidden", "32", "--embedding", "16", "--layers", "1", "--no-progress"),
        *("--max-steps", "6", "--eval-every", "3"),
    )
    summary = json.loads(out.stdout)
    assert summary["test_ppl"] > 1 and summary["test_ppl_backward"] > 1
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["valid_ppl"] > 1 and rows[-1]["valid_ppl_backward"] > 1
    best = str(run_dir / "best")
    scored = json.loads(run("score", "--model", best, "the module").stdout)
    assert scored["average_logprob"] == pytest.approx(
        (scored["logprob"] + scored["backward_logprob"]) / 2
    )
    f = tmp_path / "in.txt"
    f.write_text("return the value of the module .\nthe module\n")
    args = ("--free-running", "6", "--max-tokens", "15", "--seed", "3")
    ev = json.loads(run("eval", "--model", best, "--input", str(f), *args).stdout)
    assert ev["perplexity"] > 1 and ev["perplexity_backward"] > 1
    free = ev["free_running"]
    assert free["samples"] == 6 and free["max_tokens"] == 15
    assert free["input_mean_tokens"] == 4.5  # 7 and 2 tokens


def test_ngram_commands_export_remove_import_estimate(trained: Path, tmp_path: Path):
    import kenlm

    model = tmp_path / "m"
    shutil.copytree(trained, model)
    text = "the value of the module ."
    mixed = json.loads(run("score", "--model", str(model), text).stdout)
    exported = json.loads(run("ngram", "export", "--model", str(model), "--out",
                              str(tmp_path / "m.arpa")).stdout)  # fmt: skip
    assert exported["counts"][0] > 100
    assert kenlm.Model(str(tmp_path / "m.arpa")).order == 5
    run("ngram", "remove", "--model", str(model))
    alone = json.loads(run("score", "--model", str(model), text).stdout)
    assert "rnn_logprob" not in alone
    assert alone["logprob"] == pytest.approx(mixed["rnn_logprob"], abs=1e-4)
    # Back in, λ fit on the validation split as training fit it: the same scores as before.
    corpus = trained.parent.parent / "corpus"
    imported = run("ngram", "import", "--model", str(model), "--arpa", str(tmp_path / "m.arpa"),
                   "--corpus", str(corpus))  # fmt: skip
    assert "0 word(s) the model lacks" in imported.stderr
    again = json.loads(run("score", "--model", str(model), text).stdout)
    assert again["logprob"] == pytest.approx(mixed["logprob"], abs=1e-4)
    # With a λ given: that one for every history, and the score is the mixture at it.
    run("ngram", "import", "--model", str(model), "--arpa", str(tmp_path / "m.arpa"),
        "--lambda", "0.3")  # fmt: skip
    section = json.loads((model / "config.json").read_text())["ngram"]
    assert section["lambda"] == 0.3 and section["lambda_buckets"] is None
    given = json.loads(run("score", "--model", str(model), text, "--per-token").stdout)
    from rnnlm.models.checkpoint import load_checkpoint
    from rnnlm.models.engine import Engine
    from rnnlm.models.ngram import mix_logprobs

    engine = Engine(load_checkpoint(model))
    ((rnn, ngram, _, _),) = engine.score_components([engine.tokenizer.encode(text)])
    want = mix_logprobs(np.array(rnn), np.array(ngram), 0.3)
    assert [t["logprob"] for t in given["tokens"]] == pytest.approx(want.tolist(), abs=1e-5)
    # Estimated afresh from the corpus, at another order, λ fit on its validation split.
    report = json.loads(run("ngram", "estimate", "--corpus", str(corpus), "--model", str(model),
                            "--order", "3").stdout)  # fmt: skip
    assert report["order"] == 3 and report["lambda_from"] == "validation"
    assert json.loads((model / "config.json").read_text())["ngram"]["order"] == 3
    # Or straight to an ARPA file, no model involved.
    run("ngram", "estimate", "--corpus", str(corpus), "--arpa", str(tmp_path / "c.arpa"))
    assert kenlm.Model(str(tmp_path / "c.arpa")).order == 5


def test_ngram_command_errors_are_one_line(trained: Path, tmp_path: Path):
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1\tthe\n\n\\end\\\n")
    for args, message in [
        (
            ["import", "--model", str(trained), "--arpa", str(bad)],
            "has 1 entries, the header says 2",
        ),
        (["import", "--model", str(trained), "--arpa", str(tmp_path / "no")], "no such file"),
        (["export", "--model", str(tmp_path / "none"), "--out", "x.arpa"], "no such checkpoint"),
        (["estimate", "--corpus", str(tmp_path), "--arpa", "x.arpa"], "not a corpus directory"),
        (["import", "--model", str(trained), "--arpa", str(bad), "--lambda", "2"], "must be in"),
    ]:
        r = run("ngram", *args, check=False)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr

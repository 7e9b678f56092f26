"""POST /sample and POST /score through the whole app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.engine import Engine
from tests.app.conftest import make_client
from tests.conftest import make_checkpoint


def _events(body: str) -> list[dict]:
    out = []
    for block in body.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            out.append(json.loads(block[len("data: ") :]))
    return out


def test_sample_returns_samples_usage_and_seeds(client: TestClient) -> None:
    r = client.post("/sample", json={"prompt": "the ", "max_tokens": 12, "seed": 5, "n": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "char"
    assert [s["seed"] for s in body["samples"]] == [5, 6, 7]
    for s in body["samples"]:
        assert s["finish_reason"] in ("eos", "length", "stop")
        assert s["num_tokens"] <= 12 and s["logprob"] < 0 and s["tokens"] is None
    assert body["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": sum(s["num_tokens"] for s in body["samples"]),
        "total_tokens": 4 + sum(s["num_tokens"] for s in body["samples"]),
    }


def test_any_seed_in_range_works_with_any_n(client: TestClient) -> None:
    last = 2**63 - 1  # the seeds of n samples wrap around rather than overflow
    r = client.post("/sample", json={"max_tokens": 5, "seed": last, "n": 3})
    assert r.status_code == 200, r.text
    assert [s["seed"] for s in r.json()["samples"]] == [last, 0, 1]
    req = {"model": "char", "prompt": ["a", "b"], "max_tokens": 3, "seed": last, "n": 2}
    r = client.post("/v1/completions", json=req)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 4


def test_same_seed_same_sample_and_drawn_seed_reproduces(client: TestClient) -> None:
    req = {"prompt": "a", "max_tokens": 30, "temperature": 0.9, "top_k": 10, "top_p": 0.9}
    a = client.post("/sample", json={**req, "seed": 42}).json()["samples"][0]
    b = client.post("/sample", json={**req, "seed": 42}).json()["samples"][0]
    assert a == b
    drawn = client.post("/sample", json=req).json()["samples"][0]
    again = client.post("/sample", json={**req, "seed": drawn["seed"]}).json()["samples"][0]
    assert again == drawn


def test_greedy_is_deterministic_without_a_seed(client: TestClient) -> None:
    req = {"prompt": "the", "max_tokens": 20, "temperature": 0}
    texts = {client.post("/sample", json=req).json()["samples"][0]["text"] for _ in range(2)}
    assert len(texts) == 1


def test_stop_strings_are_cut_and_never_streamed(client: TestClient) -> None:
    found = 0
    for seed in range(30):
        req = {"max_tokens": 60, "seed": seed, "stop": ["e", "at"]}
        plain = client.post("/sample", json=req).json()["samples"][0]
        stream = client.post("/sample", json={**req, "stream": True})
        events = _events(stream.text)
        streamed = "".join(e["text"] for e in events if e["type"] == "token")
        final = next(e for e in events if e["type"] == "sample")["sample"]
        assert streamed == final["text"] == plain["text"]
        assert final == plain
        assert "e" not in plain["text"] and "at" not in plain["text"]
        found += plain["finish_reason"] == "stop"
    assert found > 5


def test_stream_events_end_with_usage(client: TestClient) -> None:
    r = client.post("/sample", json={"max_tokens": 8, "seed": 1, "n": 2, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert events[-1]["type"] == "done" and events[-1]["model"] == "char"
    samples = {e["index"]: e["sample"] for e in events if e["type"] == "sample"}
    assert set(samples) == {0, 1}
    assert events[-1]["usage"]["completion_tokens"] == sum(
        s["num_tokens"] for s in samples.values()
    )


def test_sample_logprobs_and_top_alternatives(client: TestClient) -> None:
    r = client.post(
        "/sample", json={"max_tokens": 10, "seed": 3, "logprobs": True, "top_logprobs": 3}
    )
    s = r.json()["samples"][0]
    assert len(s["tokens"]) == s["num_tokens"]
    assert sum(t["logprob"] for t in s["tokens"]) == pytest.approx(s["logprob"])
    for t in s["tokens"]:
        assert len(t["top"]) == 3
        assert t["top"][0]["logprob"] >= t["logprob"] - 1e-6


@pytest.mark.parametrize("model", ["char", "word"])
def test_score_of_a_sample_is_its_logprob(client: TestClient, model: str) -> None:
    checked = set()
    for seed in range(12):
        req = {"model": model, "max_tokens": 15, "seed": seed, "stop": ["."]}
        s = client.post("/sample", json=req).json()["samples"][0]
        r = client.post(
            "/score",
            json={"model": model, "texts": [s["text"]], "eos": s["finish_reason"] == "eos"},
        ).json()["results"][0]
        assert r["logprob"] == pytest.approx(s["logprob"], abs=1e-4), (s, r)
        assert r["num_tokens"] == s["num_tokens"]
        checked.add(s["finish_reason"])
    assert {"eos", "length"} <= checked


def test_score_fields(client: TestClient) -> None:
    r = client.post("/score", json={"texts": ["the cat", "", "qq\u0000\u00e9"], "per_token": True})
    assert r.status_code == 200, r.text
    cat, empty, odd = r.json()["results"]
    assert cat["num_tokens"] == 8 and cat["oov_count"] == 0
    assert cat["log10prob"] == pytest.approx(cat["logprob"] / 2.302585092994046)
    assert cat["perplexity"] == pytest.approx(2.718281828459045 ** (-cat["logprob"] / 8))
    assert [t["token"] for t in cat["tokens"]] == [*"the cat", "<eos>"]
    assert sum(t["logprob"] for t in cat["tokens"]) == pytest.approx(cat["logprob"])
    assert empty["num_tokens"] == 1 and empty["text"] == ""  # just <eos>
    assert odd["oov_count"] == 4 and odd["text"] == "qq\u0000\u00e9"


def test_score_without_bos_or_eos(client: TestClient) -> None:
    r = client.post("/score", json={"texts": ["the", ""], "bos": False, "eos": False}).json()
    assert r["results"][0]["num_tokens"] == 2
    assert r["results"][1] == {
        "text": "", "logprob": 0.0, "log10prob": 0.0, "num_tokens": 0, "perplexity": None,
        "oov_count": 0, "backward_logprob": None, "average_logprob": None,
        "rnn_logprob": None, "ngram_logprob": None, "tokens": None,
    }  # fmt: skip


def test_score_uses_the_named_model(client: TestClient) -> None:
    r = client.post("/score", json={"model": "word", "texts": ["the cat sat ."]}).json()
    assert r["model"] == "word" and r["results"][0]["num_tokens"] == 5


def test_reference_cell_models_sample_and_score(tmp_path: Path, models_dir: Path) -> None:
    for name in ("char", "gru-simple", "lstm-peephole"):
        shutil.copytree(models_dir / name, tmp_path / name)
    with make_client(tmp_path) as client:
        for model in ("gru-simple", "lstm-peephole"):
            assert client.get(f"/models/{model}").json()["cell"] == model
            req = {"model": model, "max_tokens": 12, "seed": 3, "n": 3}
            for s in client.post("/sample", json=req).json()["samples"]:
                body = {"model": model, "texts": [s["text"]], "eos": s["finish_reason"] == "eos"}
                r = client.post("/score", json=body).json()["results"][0]
                assert r["logprob"] == pytest.approx(s["logprob"], abs=1e-4), (s, r)


def test_score_of_a_bidirectional_model_has_both_directions(
    tmp_path: Path, models_dir: Path
) -> None:
    shutil.copytree(models_dir / "char", tmp_path / "char")
    make_checkpoint(tmp_path / "bi", "char", bidirectional=True)
    texts = ["the cat", "", "a"]
    with make_client(tmp_path) as client:
        body = {"model": "bi", "texts": texts, "per_token": True}
        results = client.post("/score", json=body).json()["results"]
        engine = Engine(load_checkpoint(tmp_path / "bi"))
        for r, e in zip(results, engine.score_batch(texts), strict=True):
            assert r["logprob"] == pytest.approx(e.logprob)  # forward, as for any model
            assert r["backward_logprob"] == pytest.approx(e.backward_logprob)
            assert r["average_logprob"] == pytest.approx((r["logprob"] + r["backward_logprob"]) / 2)
            assert sum(t["logprob"] for t in r["tokens"]) == pytest.approx(r["logprob"])
        # Sampling runs the forward model: a sample scores back to its logprob.
        s = client.post("/sample", json={"model": "bi", "max_tokens": 15, "seed": 1}).json()
        s = s["samples"][0]
        body = {"model": "bi", "texts": [s["text"]], "eos": s["finish_reason"] == "eos"}
        assert client.post("/score", json=body).json()["results"][0]["logprob"] == pytest.approx(
            s["logprob"], abs=1e-4
        )
        plain = client.post("/score", json={"model": "char", "texts": ["the cat"]}).json()
        assert plain["results"][0]["backward_logprob"] is None
        assert plain["results"][0]["average_logprob"] is None


def test_score_adapting_reads_its_texts_in_order_and_keeps_nothing(client: TestClient) -> None:
    doc = ["the cat sat on the mat.", "the cat sat on the mat.", "the cat"]
    plain = client.post("/score", json={"texts": doc}).json()["results"]
    body = {"texts": doc, "adapt": {"lr": 0.5}}
    adapted = client.post("/score", json=body).json()["results"]
    assert adapted[0]["logprob"] == pytest.approx(plain[0]["logprob"], abs=1e-4)
    assert adapted[1]["logprob"] > plain[1]["logprob"] + 0.5  # read once already
    # Each request adapts its own copy: the same request again, and plain scoring, are
    # as before.
    assert client.post("/score", json=body).json()["results"] == adapted
    assert client.post("/score", json={"texts": doc}).json()["results"] == plain
    defaults = client.post("/score", json={"texts": doc, "adapt": {}})
    assert defaults.status_code == 200, defaults.text
    # The cache alone (no RNN step), and neither: the plain scores again.
    song = ["row, row, row your boat.", "gently down the stream."] * 6
    plain = client.post("/score", json={"texts": song}).json()["results"]
    cached = client.post("/score", json={"texts": song, "adapt": {"lr": 0}}).json()["results"]
    assert sum(r["logprob"] for r in cached) > sum(r["logprob"] for r in plain) + 5
    off = {"texts": song, "adapt": {"lr": 0, "cache": 0}}
    assert [r["logprob"] for r in client.post("/score", json=off).json()["results"]] == (
        pytest.approx([r["logprob"] for r in plain], abs=1e-5)
    )


@pytest.mark.parametrize(
    "adapt",
    [
        {"lr": -1},
        {"lr": 100},
        {"lr": "0.1"},
        {"decay": 2},
        {"rate": 1},
        {"cache": -1},
        {"cache": 1.5},
        {"cache": "64"},
        {"cache": 1 << 30},
        1,
        True,
    ],
)
def test_score_adapting_refuses_bad_settings(client: TestClient, adapt: object) -> None:
    r = client.post("/score", json={"texts": ["the"], "adapt": adapt})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "adapt" in (err["param"] or "")

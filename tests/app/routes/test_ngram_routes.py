"""A model with an n-gram over HTTP: /score shows the mixture and its parts, /models the n-gram."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rnnlm.models.ngram import KID_BINS, NGRAM_FILE
from tests.app.conftest import make_client
from tests.conftest import make_checkpoint


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mixed_models")


@pytest.fixture(scope="module")
def client(root: Path) -> Iterator[TestClient]:
    make_checkpoint(root / "char", "char", ngram_order=5, mix_weight=0.25)
    make_checkpoint(root / "plain", "char")
    make_checkpoint(root / "buckets", "char", ngram_order=5, bucket_weights=True)
    make_checkpoint(root / "matched", "char", ngram_order=5, bucket_weights=True, match_mu=0.4)
    with make_client(root) as c:
        yield c


def test_score_gives_the_mixture_and_each_part(client: TestClient) -> None:
    r = client.post("/score", json={"texts": ["the cat sat.", ""], "per_token": True}).json()
    cat, empty = r["results"]
    assert cat["rnn_logprob"] < cat["logprob"] and cat["ngram_logprob"] < 0
    assert sum(t["logprob"] for t in cat["tokens"]) == pytest.approx(cat["logprob"])
    assert empty["num_tokens"] == 1 and empty["rnn_logprob"] is not None
    plain = client.post("/score", json={"model": "plain", "texts": ["the cat sat."]}).json()
    assert plain["results"][0]["rnn_logprob"] is None  # no n-gram, no parts


@pytest.mark.parametrize("model", ["char", "buckets", "matched"])
def test_a_sample_scores_back_under_the_mixture(client: TestClient, model: str) -> None:
    for seed in (4, 5, 6):
        body = {"model": model, "max_tokens": 30, "seed": seed, "n": 2}
        for s in client.post("/sample", json=body).json()["samples"]:
            score = {"model": model, "texts": [s["text"]], "eos": s["finish_reason"] == "eos"}
            scored = client.post("/score", json=score).json()["results"][0]
            assert scored["logprob"] == pytest.approx(s["logprob"], abs=1e-3)


def test_openai_echo_scoring_uses_the_mixture(client: TestClient) -> None:
    body = {"model": "char", "prompt": "the cat", "max_tokens": 0, "echo": True, "logprobs": 1}
    lp = client.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]
    score = client.post("/score", json={"texts": ["the cat"], "eos": False}).json()
    assert sum(lp["token_logprobs"]) == pytest.approx(score["results"][0]["logprob"], abs=1e-4)


def test_models_describes_the_ngram(client: TestClient, root: Path) -> None:
    by_name = {m["name"]: m for m in client.get("/models").json()["models"]}
    ngram = by_name["char"]["ngram"]
    assert ngram["order"] == 5 and ngram["lambda"] == 0.25 and ngram["ngrams"] > 100
    assert ngram["lambda_buckets"] is None  # one λ for every history
    assert ngram["source"] == "estimated"
    # What the server holds: the arrays (the file, but for its header), their index by
    # context and the layout for sampling, which it builds when it loads the model.
    assert ngram["memory_bytes"] > 2 * (root / "char" / NGRAM_FILE).stat().st_size
    assert by_name["plain"]["ngram"] is None
    assert len(by_name["buckets"]["ngram"]["lambda_buckets"]) == 5 * KID_BINS
    assert by_name["char"]["size_bytes"] > by_name["plain"]["size_bytes"]
    assert by_name["char"]["match"] is None
    match = by_name["matched"]["match"]
    assert match["max_len"] == 16 and match["mu"][0] == 0 and set(match["mu"][1:]) == {0.4}
    # the text (tokens, 8 bytes each) and its index, built on load
    assert match["tokens"] > 50 and match["memory_bytes"] > 8 * match["tokens"]

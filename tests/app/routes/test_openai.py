"""POST /v1/completions and GET /v1/models in OpenAI's shapes."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient


def test_v1_models(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["char", "endless", "word"]
    assert all(m["object"] == "model" and m["owned_by"] == "rnnlm" for m in body["data"])


def test_completion_matches_sample(client: TestClient) -> None:
    req = {"prompt": "the ", "max_tokens": 20, "seed": 9, "n": 2, "stop": ["at"]}
    native = client.post("/sample", json=req).json()["samples"]
    r = client.post("/v1/completions", json={"model": "char", **req})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    for choice, s in zip(body["choices"], native, strict=True):
        assert choice["text"] == s["text"] and choice["seed"] == s["seed"]
        want = "length" if s["finish_reason"] == "length" else "stop"
        assert choice["finish_reason"] == want and choice["logprobs"] is None
    assert body["usage"]["prompt_tokens"] == 4
    assert body["usage"]["completion_tokens"] == sum(s["num_tokens"] for s in native)


def test_prompt_list_and_n(client: TestClient) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": "word", "prompt": ["the cat", "a bird"], "n": 2, "max_tokens": 4, "seed": 1},
    ).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    assert [c["seed"] for c in r["choices"]] == [1, 2, 1, 2]
    assert r["usage"]["prompt_tokens"] == 4


@pytest.mark.parametrize("model", ["char", "word"])
def test_echo_scoring_equals_score_without_eos(client: TestClient, model: str) -> None:
    text = "the cat sat on the mat."
    r = client.post(
        "/v1/completions",
        json={"model": model, "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 1},
    ).json()
    (choice,) = r["choices"]
    lp = choice["logprobs"]
    assert choice["text"] == text and choice["finish_reason"] == "length"
    assert None not in lp["token_logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"])
    assert all(len(t) == 1 for t in lp["top_logprobs"])
    for tok, off in zip(lp["tokens"], lp["text_offset"], strict=True):
        assert text[off : off + len(tok)] == tok
    score = client.post("/score", json={"model": model, "texts": [text], "eos": False}).json()
    assert sum(lp["token_logprobs"]) == pytest.approx(score["results"][0]["logprob"], abs=1e-4)
    assert r["usage"] == {"prompt_tokens": len(lp["tokens"]), "completion_tokens": 0,
                          "total_tokens": len(lp["tokens"])}  # fmt: skip


def test_echo_with_generation_and_logprobs(client: TestClient) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": "char", "prompt": "ab", "max_tokens": 6, "echo": True, "logprobs": 2,
              "seed": 4},
    ).json()  # fmt: skip
    choice = r["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"].startswith("ab")
    assert "".join(t for t in lp["tokens"] if t != "<eos>") == choice["text"]
    assert lp["text_offset"][:2] == [0, 1] and lp["text_offset"][2] == 2
    assert all(len(t) == 2 for t in lp["top_logprobs"])


def test_logprobs_without_echo_sum_to_the_sample(client: TestClient) -> None:
    req = {"max_tokens": 12, "seed": 21}
    s = client.post("/sample", json=req).json()["samples"][0]
    r = client.post("/v1/completions", json={"model": "char", "logprobs": 0, **req}).json()
    lp = r["choices"][0]["logprobs"]
    assert lp["top_logprobs"] is None
    assert sum(lp["token_logprobs"]) == pytest.approx(s["logprob"], abs=1e-5)
    assert lp["text_offset"][0] == 0


def _chunks(text: str) -> list:
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert blocks[-1] == "data: [DONE]"
    return [json.loads(b.removeprefix("data: ")) for b in blocks[:-1]]


def test_streaming_completion(client: TestClient) -> None:
    req = {"model": "char", "prompt": "th", "max_tokens": 15, "seed": 2, "n": 2,
           "stop": ["e"], "stream_options": {"include_usage": True}}  # fmt: skip
    plain = client.post("/v1/completions", json={**req, "stream": False}).json()
    r = client.post("/v1/completions", json={**req, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = _chunks(r.text)
    texts, reasons = ["", ""], [None, None]
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"]:
            reasons[choice["index"]] = choice["finish_reason"]
    assert texts == [c["text"] for c in plain["choices"]]
    assert reasons == [c["finish_reason"] for c in plain["choices"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_streaming_echo_scoring(client: TestClient) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": "char", "prompt": "cat", "max_tokens": 0, "echo": True, "logprobs": 1,
              "stream": True},
    )  # fmt: skip
    chunks = _chunks(r.text)
    assert chunks[0]["choices"][0]["text"] == "cat"
    assert len(chunks[0]["choices"][0]["logprobs"]["tokens"]) == 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "a"}, "model"),
        ({"model": "char", "prompt": "a", "max_tokens": 9999}, "max_tokens"),
        ({"model": "char", "prompt": "a", "suffix": "z"}, "suffix"),
        ({"model": "char", "prompt": "a", "logit_bias": {"5": 1}}, "logit_bias"),
        ({"model": "char", "prompt": "a", "presence_penalty": 0.5}, "presence_penalty"),
        ({"model": "char", "prompt": "a", "best_of": 3}, "best_of"),
        ({"model": "char", "prompt": "a", "best_of": 2, "n": 2}, "best_of"),
        ({"model": "char", "prompt": [1, 2]}, "prompt"),
        ({"model": "char", "prompt": []}, "prompt"),
        ({"model": "char", "prompt": "a", "logprobs": 50}, "logprobs"),
        ({"model": "char", "prompt": ["a"] * 5, "n": 16}, "n"),
        ({"model": "char", "prompt": "a", "top_p": 2}, "top_p"),
    ],
)
def test_schema_errors_are_400(client: TestClient, body: dict, param: str) -> None:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_unknown_openai_fields_are_ignored(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "char", "prompt": "a", "max_tokens": 2,
                                             "user": "u1", "something_new": True})  # fmt: skip
    assert r.status_code == 200

"""GET /models, /models/{name}, /health, /ready, /metrics and /."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_models_lists_loaded_and_failed(client: TestClient) -> None:
    body = client.get("/models").json()
    assert body["default"] == "char"
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"broken", "char", "endless", "word"}  # "notes" has no config.json
    char = by_name["char"]
    assert char["status"] == "ready" and char["cell"] == "lstm" and char["layers"] == 2
    assert char["tokenizer"]["kind"] == "char" and char["parameters"] > 0
    assert char["size_bytes"] > 0 and char["mode"] == "sentence"
    assert by_name["word"]["cell"] == "gru"
    assert by_name["broken"]["status"] == "failed"
    assert "broken/config.json" in by_name["broken"]["error"]
    assert "/tmp" not in by_name["broken"]["error"]  # no server paths


def test_one_model(client: TestClient) -> None:
    assert client.get("/models/word").json()["tokenizer"]["kind"] == "word"
    assert client.get("/models/broken").json()["status"] == "failed"


def test_health_ready_index(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["failed"] == ["broken"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>rnnlm playground</title>" in page.text


def test_playground_page_loads_nothing_from_outside(client: TestClient) -> None:
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    # Nothing fetched from another host: no CDN, no web fonts, no remote images.
    assert "http:" not in page.text and "https:" not in page.text
    assert re.search(r"\ssrc=|@import|url\(", page.text) is None
    assert re.findall(r'href="([^"]*)"', page.text) == ["data:,"]


def test_metrics_count_requests_and_tokens(client: TestClient) -> None:
    client.post("/sample", json={"max_tokens": 5, "seed": 1, "n": 2})
    client.post("/score", json={"texts": ["the cat", "a"]})
    client.post("/sample", json={"max_token": 5})
    text = client.get("/metrics").text
    assert 'rnnlm_requests_total{method="POST",route="/sample",status="200"}' in text
    assert 'rnnlm_requests_total{method="POST",route="/sample",status="422"}' in text
    assert 'rnnlm_request_seconds_bucket{le="0.005",method="POST",route="/score"}' in text
    for name in ("rnnlm_tokens_generated_total", "rnnlm_tokens_scored_total",
                 "rnnlm_batch_size_count", "rnnlm_score_batch_size_count",
                 "rnnlm_queue_depth", "rnnlm_running_sequences"):  # fmt: skip
        assert f'{name}{{model="char"}}' in text, name
    scored = next(
        line
        for line in text.splitlines()
        if line.startswith('rnnlm_tokens_scored_total{model="char"}')
    )
    assert float(scored.split()[-1]) >= 10  # 8 + 2


def test_openapi_documents_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/sample", "/score", "/models", "/v1/completions", "/v1/models"} <= set(paths)

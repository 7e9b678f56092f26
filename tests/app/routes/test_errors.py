"""Every error path answers JSON in one shape, with the right status; never a 5xx."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import make_client

JSON = {"content-type": "application/json"}


def _error(r, status: int, param: str | None = "?") -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param != "?":
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize(
    ("route", "body", "param", "words"),
    [
        ("/sample", {"max_token": 5}, "max_token", "unknown field 'max_token'"),
        ("/sample", {"max_tokens": -1}, "max_tokens", "greater than or equal"),
        ("/sample", {"max_tokens": 10**6}, "max_tokens", "at most 2048"),
        ("/sample", {"max_tokens": 10**40}, "max_tokens", "at most 2048"),
        ("/sample", {"temperature": -0.5}, "temperature", "greater than or equal"),
        ("/sample", {"temperature": "hot"}, "temperature", "valid number"),
        ("/sample", {"top_p": 0}, "top_p", "greater than 0"),
        ("/sample", {"min_p": 1}, "min_p", "less than 1"),
        ("/sample", {"top_k": -3}, "top_k", "greater than or equal"),
        ("/sample", {"seed": 2**64}, "seed", "less than or equal"),
        ("/sample", {"seed": -1}, "seed", "greater than or equal"),
        ("/sample", {"n": 0}, "n", "greater than or equal"),
        ("/sample", {"n": 17}, "n", "at most 16"),
        ("/sample", {"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop"),
        ("/sample", {"stop": ["x" * 65]}, "stop", "at most 64 characters"),
        ("/sample", {"stop": [""]}, "stop", "must not be empty"),
        ("/sample", {"top_logprobs": 21}, "top_logprobs", "at most 20"),
        ("/sample", {"prompt": 5}, "prompt", "valid string"),
        ("/sample", {"prompt": "\ud800x"}, "prompt", "lone UTF-16 surrogate U+D800"),
        ("/sample", {"stream": "maybe"}, "stream", "valid boolean"),
        ("/score", {}, "texts", "texts: field required"),
        ("/score", {"texts": "abc"}, "texts", "valid list"),
        ("/score", {"texts": ["ok", "\udc80"]}, "texts.1", "surrogate"),
        ("/score", {"texts": ["a"], "per_tokens": True}, "per_tokens", "unknown field"),
        ("/score", {"texts": ["a"], "bos": "yes please"}, "bos", "valid boolean"),
    ],
)
def test_bad_fields_are_422_and_named(
    client: TestClient, route: str, body: dict, param: str, words: str
) -> None:
    raw = json.dumps(body)  # ASCII escapes: lone surrogates travel as \ud800
    err = _error(client.post(route, content=raw, headers=JSON), 422, param)
    assert words in err["message"]
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b'{"prompt": "\xff\xfe"}', 400, "not valid UTF-8"),
        (b'{"prompt": ', 422, "not valid JSON"),
        (b"[1, 2]", 422, "JSON object"),
        (b'{"seed": 1' + b"9" * 5000 + b"}", 400, "digits"),
        (b'{"prompt": "a\\u0000b", "max_tokens": 2}', 200, ""),
        (b'{"prompt": "\\ud83d\\ude00", "max_tokens": 2}', 200, ""),  # a valid pair
        (b'{"max_tokens": 1e308, "prompt": "a"}', 422, "max_tokens"),
        (b'{"max_tokens": 1e999}', 422, "max_tokens: Input should be a finite number"),
        (b'{"seed": -1e999}', 422, "seed"),
        (b'{"temperature": NaN}', 422, "temperature"),
    ],
)
def test_raw_bodies_never_5xx(client: TestClient, raw: bytes, status: int, words: str) -> None:
    r = client.post("/sample", content=raw, headers=JSON)
    if status == 200:
        assert r.status_code == 200, r.text
    else:
        assert words in _error(r, status)["message"]


def test_form_body_is_refused_with_advice(client: TestClient) -> None:
    r = client.post("/sample", content=b"prompt=a")
    assert "Content-Type: application/json" in _error(r, 422)["message"]


def test_too_large(client: TestClient) -> None:
    big = {"texts": ["a"] * 257}
    assert "at most 256 texts" in _error(client.post("/score", json=big), 413, "texts")["message"]
    long = {"texts": ["ok", "x" * 10_001]}
    assert "10000 characters" in _error(client.post("/score", json=long), 413, "texts.1")["message"]
    prompt = {"prompt": "x" * 10_001}
    _error(client.post("/sample", json=prompt), 413, "prompt")
    body = b'{"texts": ["' + b"a" * (1 << 20) + b'"]}'
    err = _error(client.post("/score", content=body, headers=JSON), 413)
    assert err["code"] == "body_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"x" * 32768

    _error(client.post("/score", content=chunks(), headers=JSON), 413)


def test_unknown_and_failed_models_are_404(client: TestClient) -> None:
    err = _error(client.post("/sample", json={"model": "nope"}), 404, "model")
    assert "available: char, endless, word" in err["message"]
    assert err["code"] == "model_not_found"
    err = _error(client.post("/score", json={"model": "broken", "texts": ["a"]}), 404, "model")
    assert "failed to load" in err["message"] and "config.json" in err["message"]
    _error(client.get("/models/nope"), 404, "name")
    _error(client.post("/v1/completions", json={"model": "nope", "prompt": "a"}), 404, "model")


def test_unknown_route_and_method(client: TestClient) -> None:
    assert "no route" in _error(client.get("/nothing"), 404)["message"]
    assert "not allowed" in _error(client.get("/sample"), 405)["message"]


def test_full_queue_is_503_with_retry_after(client: TestClient) -> None:
    registry = client.app.state.registry  # type: ignore[attr-defined]
    worker = registry.models["char"].worker
    worker.max_queue = 0
    try:
        for route, body in [("/sample", {}), ("/score", {"texts": ["a"]})]:
            r = client.post(route, json=body)
            assert _error(r, 503)["code"] == "queue_full"
            assert r.headers["retry-after"] == "1"
        r = client.post("/sample", json={"stream": True})
        assert r.status_code == 503
    finally:
        worker.max_queue = 256
    assert client.post("/score", json={"texts": ["a"]}).status_code == 200
    metrics = client.get("/metrics").text
    assert 'rnnlm_rejected_total{model="char"} 3.0' in metrics


def test_api_key(app_models_dir: Path) -> None:
    with make_client(app_models_dir, api_key="s3cret") as c:
        for method, path in [("post", "/sample"), ("get", "/models"), ("get", "/metrics"),
                             ("get", "/v1/models"), ("post", "/v1/completions")]:  # fmt: skip
            r = getattr(c, method)(path)
            assert _error(r, 401)["type"] == "authentication_error"
            assert r.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer s3cres"}
        _error(c.get("/models", headers=wrong), 401)
        _error(c.get("/models", headers={"Authorization": "Basic s3cret"}), 401)
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
        assert c.get("/").status_code == 200  # the playground page, where the key is typed
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/models", headers=ok).status_code == 200
        assert c.post("/score", json={"texts": ["a"]}, headers=ok).status_code == 200
        # The key is checked before the body is parsed.
        _error(c.post("/score", content=b"{", headers=JSON), 401)


def test_cors(app_models_dir: Path) -> None:
    with make_client(app_models_dir, cors_origins=["http://ui.example"], api_key="k") as c:
        r = c.options(
            "/score",
            headers={"Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization"},
        )  # fmt: skip
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://ui.example"


def test_not_ready_without_models(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("[]")
    with make_client(tmp_path) as c:
        err = _error(c.get("/ready"), 503)
        assert "no model is loaded" in err["message"] and "bad" in err["message"]
        assert c.get("/health").status_code == 200
        _error(c.post("/sample", json={}), 404, "model")

"""The real server: `rnnlm serve` under uvicorn on a loopback port, driven by httpx and
by the official `openai` client."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from tests.e2e.live import live_server

KEY = "e2e-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ENDLESS = 10**9  # tokens: no engine samples that many while a test waits


@pytest.fixture(scope="module")
def server(served_models: Path) -> Iterator[str]:
    env = {"RNNLM_API_KEY": KEY, "RNNLM_MAX_TOKENS": str(ENDLESS)}
    with live_server(served_models, env) as live:
        yield live.base


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def oai(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=30)


def _metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split()[0] == name:
            return float(line.split()[-1])
    return 0.0


def test_health_ready_models(http: httpx.Client, server: str) -> None:
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}  # no key needed
    assert httpx.get(f"{server}/models").status_code == 401
    names = [m["name"] for m in http.get("/models").json()["models"]]
    assert names == ["char", "endless", "word"]
    assert http.get("/models/word").json()["cell"] == "gru"


def test_sample_and_score_round_trip(http: httpx.Client) -> None:
    s = http.post("/sample", json={"max_tokens": 20, "seed": 3}).json()["samples"][0]
    r = http.post("/score", json={"texts": [s["text"]], "eos": s["finish_reason"] == "eos"})
    assert r.json()["results"][0]["logprob"] == pytest.approx(s["logprob"], abs=1e-4)


def test_sample_stream_over_http(http: httpx.Client) -> None:
    req = {"prompt": "the", "max_tokens": 25, "seed": 8, "stop": ["a"]}
    plain = http.post("/sample", json=req).json()["samples"][0]
    text, final = "", None
    with http.stream("POST", "/sample", json={**req, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                ev = json.loads(line[6:])
                if ev["type"] == "token":
                    text += ev["text"]
                elif ev["type"] == "sample":
                    final = ev["sample"]
    assert text == plain["text"] and final is not None
    # The same sample; its logprob to float32 rounding (another batch may share the step).
    assert {**final, "logprob": 0} == {**plain, "logprob": 0}
    assert final["logprob"] == pytest.approx(plain["logprob"], rel=1e-6, abs=1e-5)


def test_errors_over_http(http: httpx.Client, server: str) -> None:
    bad = http.post("/sample", content=b'{"prompt": "\xc3\x28"}',
                    headers={"Content-Type": "application/json"})  # fmt: skip
    assert bad.status_code == 400 and "UTF-8" in bad.json()["error"]["message"]
    assert http.post("/sample", json={"max_token": 3}).status_code == 422
    big = http.post("/score", content=b"[" + b" " * (2 << 20) + b"]",
                    headers={"Content-Type": "application/json"})  # fmt: skip
    assert big.status_code == 413
    assert http.post("/score", json={"model": "nope", "texts": []}).status_code == 404
    r = httpx.post(f"{server}/sample", json={}, headers={"Authorization": "Bearer no"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_openai_client_completion(oai: openai.OpenAI, http: httpx.Client) -> None:
    assert [m.id for m in oai.models.list()] == ["char", "endless", "word"]
    c = oai.completions.create(model="char", prompt="the ", max_tokens=15, seed=5, n=2)
    native = http.post("/sample", json={"prompt": "the ", "max_tokens": 15, "seed": 5, "n": 2})
    assert [ch.text for ch in c.choices] == [s["text"] for s in native.json()["samples"]]
    assert {ch.finish_reason for ch in c.choices} <= {"stop", "length"}
    assert c.usage is not None and c.usage.prompt_tokens == 4


def test_openai_client_streaming(oai: openai.OpenAI) -> None:
    plain = oai.completions.create(model="word", prompt="the cat", max_tokens=8, seed=2)
    text, reason = "", None
    for chunk in oai.completions.create(
        model="word", prompt="the cat", max_tokens=8, seed=2, stream=True
    ):
        for ch in chunk.choices:
            text += ch.text
            reason = ch.finish_reason or reason
    assert text == plain.choices[0].text and reason == plain.choices[0].finish_reason


@pytest.mark.parametrize("model", ["char", "word"])
def test_openai_client_echo_scoring(oai: openai.OpenAI, http: httpx.Client, model: str) -> None:
    text = "the dog sat on the log."
    c = oai.completions.create(model=model, prompt=text, max_tokens=0, echo=True, logprobs=1)
    lp = c.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None
    assert c.choices[0].text == text and None not in lp.token_logprobs
    score = http.post("/score", json={"model": model, "texts": [text], "eos": False}).json()
    assert sum(lp.token_logprobs) == pytest.approx(score["results"][0]["logprob"], abs=1e-4)


def test_disconnected_clients_free_their_slots(http: httpx.Client, server: str) -> None:
    # A stream read once and dropped.
    with http.stream("POST", "/sample", json={"model": "endless", "max_tokens": ENDLESS,
                                              "stream": True}) as r:  # fmt: skip
        next(r.iter_lines())
    # A plain request whose client gives up once its 4 samples are running (seen, not
    # guessed with a client timeout: on a busy machine they might not have started yet).
    running = 'rnnlm_running_sequences{model="endless"}'
    body = json.dumps({"model": "endless", "max_tokens": ENDLESS, "n": 4}).encode()
    url = urlsplit(server)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(b"POST /sample HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
                  % (KEY.encode(), len(body), body))  # fmt: skip
        deadline = time.monotonic() + 60  # a hang guard
        while _metric(http, running) < 4:  # the dropped stream is one row at most
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.02)
    deadline = time.monotonic() + 60  # a hang guard
    while _metric(http, running) > 0:
        assert time.monotonic() < deadline, "generations of gone clients still running"
        time.sleep(0.1)
    # None ran to its end.
    assert _metric(http, 'rnnlm_tokens_generated_total{model="endless"}') < ENDLESS

"""Hostile input by hand: each gets a 4xx with a message a person can act on, and no
model name, however crafted, reaches the filesystem. (Schema errors of single
fields are in test_errors.py; the live-server abuse is in tests/e2e/test_abuse.py.)"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import make_client

JSON = {"content-type": "application/json"}
ROUTES = ("/sample", "/score", "/v1/completions")
# Small limits, so that "at the limit" is cheap to reach.
LIMITS = {"max_tokens": 40, "max_n": 4, "max_texts": 5, "max_text_chars": 50, "max_stop": 3,
          "max_top_logprobs": 3}  # fmt: skip


def _error(r: Any, status: int, param: str | None = "?") -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    err: dict[str, Any] = body["error"]
    assert err["message"] and len(err["message"]) < 300, err
    if param != "?":
        assert err["param"] == param, err
    return err


def _schema_status(route: str) -> int:
    return 400 if route.startswith("/v1/") else 422


def _minimal(route: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, dict[str, Any]] = {
        "/sample": {"max_tokens": 2},
        "/score": {"texts": ["a"]},
        "/v1/completions": {"model": "char", "prompt": "a", "max_tokens": 2},
    }
    return {**base[route], **fields}


@pytest.fixture(scope="module")
def small(app_models_dir: Path) -> Iterator[TestClient]:
    with make_client(app_models_dir, **LIMITS) as c:
        yield c


# ------------------------------------------------------------------- bytes


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "\xff\xfe"}',  # not UTF-8 at all
        b'{"prompt": "\xc0\xaf"}',  # overlong encoding of "/"
        b'{"prompt": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 (CESU-8)
        b'{"prompt": "\x80abc"}',  # a lone continuation byte
        b'{"prompt": "caf\xe9"}',  # Latin-1
        b'{"prompt": "\xe2\x82"}',  # cut inside a character
        '{"prompt": "a"}'.encode("utf-16"),  # another encoding altogether
    ],
)
@pytest.mark.parametrize("route", ROUTES)
def test_invalid_utf8_is_400_with_the_offset(client: TestClient, route: str, raw: bytes) -> None:
    err = _error(client.post(route, content=raw, headers=JSON), 400)
    assert "not valid UTF-8" in err["message"] and "at offset" in err["message"]
    assert err["code"] == "invalid_utf8"


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("field", "value"),
    [("prompt", "\ud800"), ("prompt", "a\udfffb"), ("model", "\ud83d"), ("stop", ["\udc00"])],
)
def test_lone_surrogates_in_any_string_field_are_refused(
    client: TestClient, route: str, field: str, value: Any
) -> None:
    if route == "/score" and field in ("prompt", "stop"):
        field, value = "texts", ["ok", value if isinstance(value, str) else value[0]]
    raw = json.dumps(_minimal(route, **{field: value}))  # ASCII: surrogates travel as \ud800
    err = _error(client.post(route, content=raw, headers=JSON), _schema_status(route))
    assert "lone UTF-16 surrogate" in err["message"]
    assert err["param"] is not None and err["param"].split(".")[0] == field


def test_nul_characters_are_text(client: TestClient) -> None:
    r = client.post("/score", json={"texts": ["a\u0000b", "\u0000"]})
    assert r.status_code == 200, r.text
    assert [x["oov_count"] for x in r.json()["results"]] == [1, 1]  # NUL is <unk> here
    r = client.post("/sample", json={"prompt": "\u0000", "stop": ["\u0000"], "max_tokens": 3})
    assert r.status_code == 200, r.text
    r = client.post("/v1/completions", json={"model": "char", "prompt": "x\u0000", "max_tokens": 2})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("route", ROUTES)
def test_deeply_nested_json(client: TestClient, route: str) -> None:
    deep = b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    err = _error(client.post(route, content=deep, headers=JSON), 400)
    assert "nested too deeply" in err["message"]
    obj = b'{"prompt": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}"
    assert (
        "nested too deeply" in _error(client.post(route, content=obj, headers=JSON), 400)["message"]
    )
    # Nested, but not too deep for the parser: a schema error.
    nested = b"[" * 500 + b"]" * 500
    some = b'{"model": "char", "prompt": %s, "texts": %s}' % (nested, nested)
    r = client.post(route, content=some, headers=JSON)
    assert r.status_code in (400, 422), r.text
    _error(r, r.status_code)


@pytest.mark.parametrize("route", ROUTES)
def test_huge_numbers_are_not_repeated_back(client: TestClient, route: str) -> None:
    huge = b"1" + b"0" * 4000
    raw = {
        "/sample": b'{"n": %s}' % huge,
        "/score": b'{"texts": ["a"], "bos": %s}' % huge,
        "/v1/completions": b'{"model": "char", "prompt": "a", "max_tokens": %s}' % huge,
    }[route]
    err = _error(client.post(route, content=raw, headers=JSON), _schema_status(route))
    assert err["param"] in ("n", "bos", "max_tokens")
    assert "0000000000" not in err["message"]
    if route != "/score":
        assert "a 4001-digit number" in err["message"]


@pytest.mark.parametrize("name", ["str", "none", "int", "body", "", "function-x", "list[int]"])
def test_unknown_fields_are_named_whatever_their_name(client: TestClient, name: str) -> None:
    # Found by fuzzing: names that look like pydantic's union tags were dropped ("None").
    err = _error(client.post("/sample", json={name: 1}), 422, name)
    assert err["message"] == f"unknown field {name!r}"


# ------------------------------------------------------------------- limits


def test_n_and_max_tokens_at_and_past_their_limits(small: TestClient) -> None:
    r = small.post("/sample", json={"model": "endless", "n": 4, "max_tokens": 40, "seed": 1})
    assert r.status_code == 200, r.text
    samples = r.json()["samples"]
    assert len(samples) == 4
    assert all(s["num_tokens"] == 40 and s["finish_reason"] == "length" for s in samples)
    assert "at most 4" in _error(small.post("/sample", json={"n": 5}), 422, "n")["message"]
    err = _error(small.post("/sample", json={"max_tokens": 41}), 422, "max_tokens")
    assert "at most 40 on this server, got 41" in err["message"]
    # No max_tokens: the default (100) is lowered to the server's limit rather than refused.
    r = small.post("/sample", json={"model": "endless", "seed": 2})
    assert r.status_code == 200 and r.json()["samples"][0]["num_tokens"] == 40

    v1 = {"model": "endless", "prompt": "a", "seed": 1}
    r = small.post("/v1/completions", json={**v1, "n": 4, "max_tokens": 40, "logprobs": 3})
    assert r.status_code == 200, r.text
    assert [len(c["logprobs"]["tokens"]) for c in r.json()["choices"]] == [40] * 4
    _error(small.post("/v1/completions", json={**v1, "n": 5}), 400, "n")
    _error(small.post("/v1/completions", json={**v1, "max_tokens": 41}), 400, "max_tokens")
    _error(small.post("/v1/completions", json={**v1, "logprobs": 4}), 400, "logprobs")
    _error(small.post("/sample", json={"top_logprobs": 4}), 422, "top_logprobs")


def test_texts_at_and_past_their_limits(small: TestClient) -> None:
    r = small.post("/score", json={"texts": ["x" * 50] * 5})
    assert r.status_code == 200 and len(r.json()["results"]) == 5
    assert (
        "at most 5 texts" in _error(small.post("/score", json={"texts": ["a"] * 6}), 413)["message"]
    )
    _error(small.post("/score", json={"texts": ["a", "x" * 51]}), 413, "texts.1")
    _error(small.post("/sample", json={"prompt": "x" * 51}), 413, "prompt")
    r = small.post("/v1/completions", json={"model": "char", "prompt": ["a"] * 6})
    _error(r, 413, "prompt")


@pytest.mark.parametrize("route", ROUTES)
def test_thousands_of_stop_strings_are_refused_at_once(small: TestClient, route: str) -> None:
    if route == "/score":
        return  # /score has no stop strings
    r = small.post(route, json=_minimal(route, stop=[f"s{i}" for i in range(5000)]))
    err = _error(r, _schema_status(route), "stop")
    assert "at most 3 stop strings, got 5000" in err["message"]

    # Refused in time linear in the body: against 4 stop strings (a 1,250x smaller
    # list), at most 50x the time, the best of 3 each (a ratio in one run, so a
    # slow or busy machine slows both; a per-string quadratic check would be ~10^4x).
    def best(n: int) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            small.post(route, json=_minimal(route, stop=[f"s{i}" for i in range(n)]))
            times.append(time.perf_counter() - t0)
        return min(times)

    assert best(5000) < 50 * best(4)
    # So many that the body itself is over the limit: refused before parsing.
    r = small.post(route, json=_minimal(route, stop=["x" * 60] * 20_000))
    assert _error(r, 413)["code"] == "body_too_large"
    assert small.post(route, json=_minimal(route, stop=["a", "b", "c"])).status_code == 200


# ----------------------------------------------------------------- model names

HOSTILE_NAMES = [
    "../secret",
    "../../secret",
    "..",
    ".",
    "%2e%2e/secret",
    "..%2fsecret",
    "%2e%2e%2fsecret",
    "/etc/passwd",
    "SECRET_DIR/secret",  # replaced by the absolute path of a real checkpoint
    "char/../char",
    "char\u0000",
    "\u0000",
    "char/",
    "./char",
    "~/secret",
    "char\\..\\secret",
]

_RECORDING: list[str] | None = None
_HOOKED = False
_FS_EVENTS = {"open", "os.listdir", "os.scandir", "os.chdir", "os.mkdir", "os.rename",
              "os.remove", "os.rmdir", "shutil.rmtree", "shutil.copytree", "glob.glob"}  # fmt: skip


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _RECORDING is not None and event in _FS_EVENTS and args:
        _RECORDING.append(f"{event} {args[0]!r}")


@pytest.fixture()
def filesystem_events() -> Iterator[list[str]]:
    """Every filesystem access the process makes while the test runs (PEP 578 audit hooks)."""
    global _RECORDING, _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)  # process-wide and permanent, but inert unless recording
        _HOOKED = True
    _RECORDING = []
    try:
        yield _RECORDING
    finally:
        _RECORDING = None


def test_model_names_never_reach_the_filesystem(
    tmp_path: Path, app_models_dir: Path, filesystem_events: list[str]
) -> None:
    # A real checkpoint outside the models directory, where `../secret` would lead.
    models = tmp_path / "models"
    shutil.copytree(app_models_dir / "char", models / "char")
    shutil.copytree(app_models_dir / "char", tmp_path / "secret")
    names = [n.replace("SECRET_DIR", str(tmp_path)) for n in HOSTILE_NAMES]
    with make_client(models) as c:
        c.post("/sample", json={"model": "warm-up", "max_tokens": 1})
        c.get("/models/warm-up")
        filesystem_events.clear()
        for name in names:
            for route in ROUTES:
                err = _error(c.post(route, json=_minimal(route, model=name)), 404, "model")
                assert "not found (available: char)" in err["message"], err
            every_byte = "".join(f"%{b:02X}" for b in name.encode())  # dots too
            r = c.get(f"/models/{every_byte}", follow_redirects=False)
            if r.status_code == 307:  # "char/": Starlette's trailing-slash redirect, to char
                assert r.headers["location"].endswith("/models/char"), r.headers
            else:
                assert r.status_code == 404, (name, r.text)
        touched = [e for e in filesystem_events if "secret" in e or str(tmp_path) in e]
        assert touched == [], touched
        assert c.post("/sample", json={"model": "char", "max_tokens": 1}).status_code == 200

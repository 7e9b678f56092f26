"""bench/loadgen.py, the benchmarks' HTTP client, against a scripted server on loopback:
keep-alive, both ways of framing a body, a server that closes, bad answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from tests.bench.test_bench_scripts import _load

loadgen = _load("loadgen")

Answer = Callable[[dict[str, object], int], bytes]  # (request's JSON, its number) -> bytes


def _length(status: int, payload: object, extra: str = "") -> bytes:
    body = json.dumps(payload).encode()
    head = f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def _chunked(payload: object) -> bytes:
    body = json.dumps(payload).encode()
    parts = [body[:5], body[5:]]
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + chunks + b"0\r\nX-T: 1\r\n\r\n"  # a trailer, then the end


@asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[tuple[str, list[int]]]:
    """A server that reads each request by its Content-Length and writes `answer`'s bytes;
    yields its base URL and the number of requests each connection carried."""
    per_connection: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        per_connection.append(0)
        k = len(per_connection) - 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
                n = int(head.split("content-length:")[1].split("\r\n")[0])
                request = json.loads(await reader.readexactly(n))
                per_connection[k] += 1
                writer.write(answer(request, sum(per_connection)))
                await writer.drain()
                if b"connection: close" in answer(request, 0).lower():
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", per_connection


def test_keep_alive_carries_every_request_on_one_connection() -> None:
    async def go() -> tuple[list[object], list[int]]:
        async with serving(lambda req, i: _length(200, {"echo": req, "i": i})) as (base, conns):
            async with loadgen.Connection(base) as c:
                out = [await c.post("/x", {"k": k}) for k in range(5)]
            return out, conns

    out, conns = asyncio.run(go())
    assert out == [{"echo": {"k": k}, "i": k + 1} for k in range(5)]
    assert conns == [5]


def test_chunked_bodies_and_a_server_that_closes() -> None:
    def answer(req: dict[str, object], i: int) -> bytes:
        if req["k"] == 1:
            return _length(200, {"closed": True}, "Connection: close\r\n")
        return _chunked({"k": req["k"], "text": "é" * 10})

    async def go() -> tuple[list[object], list[int]]:
        async with serving(answer) as (base, conns):
            async with loadgen.Connection(base) as c:
                out = [await c.post("/x", {"k": k}) for k in range(3)]
            return out, conns

    out, conns = asyncio.run(go())
    assert out == [{"k": 0, "text": "é" * 10}, {"closed": True}, {"k": 2, "text": "é" * 10}]
    assert conns == [2, 1]  # reconnected after the server closed


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_length(503, {"error": "busy"}), "503"),
        (b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n{}", "neither Content-Length nor chunked"),
        (b"SPDY/3 200 OK\r\ncontent-length: 2\r\n\r\n{}", "not an HTTP/1.x status line"),
    ],
)
def test_bad_answers_raise(raw: bytes, message: str) -> None:
    async def go() -> None:
        async with serving(lambda req, i: raw) as (base, _), loadgen.Connection(base) as c:
            await c.post("/x", {})

    with pytest.raises(loadgen.HttpError, match=message):
        asyncio.run(go())


def test_only_plain_http_urls() -> None:
    for bad in ("https://127.0.0.1:1", "127.0.0.1:8000", "http://"):
        with pytest.raises(ValueError, match="http://host:port"):
            loadgen.Connection(bad)

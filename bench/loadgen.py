"""A lean HTTP/1.1 client for the throughput benchmarks: keep-alive connections on
asyncio's streams, a few hundredths of a millisecond of CPU a request.

Each benchmark client holds one `Connection` and sends its requests back to back:
a request is one write of its bytes, a response one read of the head and one of
the body (by Content-Length, or chunk by chunk). The JSON is parsed, so a broken
answer is caught, and a status other than 200 raises.

Why not httpx: with the load generator alone on its core and a server that answers
at once (a bare ASGI app, bench/README.md), httpx's AsyncClient spent 1.1 ms of CPU
a request with 1 to 8 connections and 3.6-5.0 ms with 32 (its pool looks over
every waiting request on each event), so 32 streams topped out at 200-300
requests/s whatever the server could do, and the load generator's busy core
slowed the server's own. This client spends 0.05-0.15 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    """A status other than 200, or an answer this client cannot read."""


class Connection:
    """One keep-alive HTTP/1.1 connection to `base` (http://host:port)."""

    def __init__(self, base: str, timeout: float = 120.0) -> None:
        url = urlsplit(base)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"need http://host:port, not {base!r}")
        self.host, self.port = url.hostname, url.port or 80
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):  # the server closed first
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def post(self, path: str, payload: Any) -> Any:
        """POST `payload` as JSON; the answer's JSON. Raises HttpError unless 200."""
        body = json.dumps(payload).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        status, data = await asyncio.wait_for(self._exchange(head + body), self.timeout)
        if status != 200:
            raise HttpError(f"POST {path}: {status} {data[:300]!r}")
        return json.loads(data)

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(request)
        reader = self._reader
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP/1.x status line: {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            data = await _chunked(reader)
        else:
            raise HttpError("the answer has neither Content-Length nor chunked encoding")
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return int(parts[1]), data


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                pass
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the CRLF after each chunk

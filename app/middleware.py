"""ASGI middleware: request metrics, then the guard (body size, UTF-8, API key).

Plain ASGI rather than BaseHTTPMiddleware, so streaming responses and
disconnect detection pass straight through.
"""

from __future__ import annotations

import hmac
import time

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rnnlm.app.errors import error_response
from rnnlm.app.metrics import Metrics

# The playground page holds no data; it must load so that a user can type the key.
OPEN_PATHS = frozenset({"/health", "/ready", "/"})


class MetricsMiddleware:
    """Counts requests and times them to the last byte, labelled by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)


class GuardMiddleware:
    """Refuses, before any parsing: a missing or wrong API key (401), a body over the
    limit (413), a JSON body that is not UTF-8 (400). The body is read here, at most
    `max_body_bytes` of it, and handed on unchanged."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, api_key: str | None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key.encode() if api_key else None

    def _authorized(self, scope: Scope) -> bool:
        if self.api_key is None or scope["path"] in OPEN_PATHS:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    return hmac.compare_digest(token.strip(), self.api_key)
        return False

    def _too_large(self) -> Response:
        # Made when needed: building it for every request cost more than the guard's checks.
        limit = self.max_body_bytes
        return error_response(
            413, f"request body is over the limit of {limit} bytes", code="body_too_large"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            response = error_response(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                "authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        headers = dict(scope["headers"])
        limit = self.max_body_bytes
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > limit:
            await self._too_large()(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        disconnected: Message | None = None
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = message
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large()(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body and b"json" in headers.get(b"content-type", b""):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = error_response(
                    400,
                    f"request body is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset "
                    f"{e.start})",
                    code="invalid_utf8",
                )
                await bad(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if disconnected is not None:
                return disconnected
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

"""Typed service errors and the handlers that turn every error into one JSON shape.

    {"error": {"message": "...", "type": "...", "param": "..." | null, "code": "..." | null}}

Schema errors answer 422 on the native routes and 400 on `/v1/*`, as OpenAI does.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("rnnlm.app")


class ServiceError(Exception):
    """An error with an HTTP status and a message a person can act on."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers


class InvalidField(ServiceError):
    status = 422
    type = "invalid_request_error"
    code = "invalid_field"


class TooLarge(ServiceError):
    status = 413
    type = "invalid_request_error"
    code = "too_large"


class ModelNotFound(ServiceError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class Unauthorized(ServiceError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Overloaded(ServiceError):
    status = 503
    type = "overloaded_error"
    code = "queue_full"


class NotReady(ServiceError):
    status = 503
    type = "service_unavailable"
    code = "not_ready"


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    503: "service_unavailable",
}


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = error_body(message, type_ or _TYPES.get(status, "server_error"), param, code)
    return JSONResponse(body, status_code=status, headers=headers)


def _is_openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def _schema_status(request: Request) -> int:
    return 400 if _is_openai(request) else 422


_TAGS = {"str", "int", "float", "bool", "none", "StreamOptions"}


def _is_tag(x: str) -> bool:
    return x in _TAGS or x.startswith(("function-", "list[", "dict["))


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """Pydantic's error list -> one readable message and the first field's dotted name."""
    parts, first = [], None
    for e in errors:
        loc = [str(x) for x in e.get("loc", ())]
        loc = loc[1:] if loc[:1] == ["body"] else loc  # FastAPI's prefix, not a field "body"
        kind = e.get("type", "")
        if kind == "json_invalid":
            where = loc[0] if loc else "?"
            reason = (e.get("ctx") or {}).get("error", "invalid JSON")
            parts.append(f"request body is not valid JSON (at character {where}: {reason})")
            continue
        # Union members add their type name to the location: drop it. The first name is
        # always a field, and so is the last of an unknown one ({"str": 1} is a field "str").
        keep_last = kind == "extra_forbidden"
        loc = [
            x
            for i, x in enumerate(loc)
            if i == 0 or (keep_last and i == len(loc) - 1) or not _is_tag(x)
        ]
        param = ".".join(loc) if loc else None
        first = param if first is None else first
        if kind == "extra_forbidden":
            parts.append(f"unknown field {param!r}")
        elif kind == "missing" and not loc:
            parts.append("request body is missing: send a JSON object")
        elif kind == "missing":
            parts.append(f"{param}: field required")
        elif kind == "string_unicode":  # pydantic's word for a lone surrogate, in places
            parts.append(f"{param}: a lone UTF-16 surrogate is not text")
        elif kind == "model_attributes_type" and not loc:
            parts.append("request body must be a JSON object (send Content-Type: application/json)")
        else:
            msg = str(e.get("msg", "invalid value"))
            msg = msg.removeprefix("Value error, ")
            parts.append(f"{param}: {msg}" if param else msg)
    return "; ".join(dict.fromkeys(parts)) or "invalid request", first


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    status = exc.status
    if isinstance(exc, InvalidField):
        status = _schema_status(request)
    return error_response(status, exc.message, exc.type, exc.param, exc.code, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = describe_validation_errors(list(exc.errors()))
    return error_response(_schema_status(request), message, param=param, code="invalid_field")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    elif isinstance(exc.__cause__, RecursionError):
        message = "request body is not valid JSON here: it is nested too deeply"
    elif exc.__cause__ is not None:
        # FastAPI's "error parsing the body": say why (a number too long, bad UTF-8, ...).
        message = f"{message}: {exc.__cause__}"
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error (logged on the server)", "server_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)

"""The OpenAPI document the service serves: the routes' schemas plus what `Settings` decide.

The wire models carry their static bounds; the limits a server is started with
(`RNNLM_MAX_TOKENS`, `RNNLM_MAX_N`, ...) and the API key are added here, so the
document describes exactly what this server accepts. Clients and schema-driven
tests (schemathesis, `tests/e2e/test_fuzz.py`) can rely on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from rnnlm.app.config import Settings
from rnnlm.app.middleware import OPEN_PATHS
from rnnlm.app.schemas import COMPLETION_MAX_TOKENS, SAMPLE_MAX_TOKENS, SEED_MAX

Schema = dict[str, Any]


def _branches(prop: Schema, type_: str) -> list[Schema]:
    """The alternatives of a (possibly `anyOf`) property that have JSON type `type_`."""
    return [b for b in prop.get("anyOf", [prop]) if b.get("type") == type_]


def _limit(props: Schema, name: str, type_: str, **bounds: Any) -> None:
    for branch in _branches(props[name], type_):
        branch.update(bounds)


def _stop(props: Schema, s: Settings) -> None:
    _limit(props, "stop", "string", minLength=1, maxLength=s.max_stop_chars)
    item = {"type": "string", "minLength": 1, "maxLength": s.max_stop_chars}
    _limit(props, "stop", "array", maxItems=s.max_stop, items=item)


def apply_settings(doc: Schema, s: Settings) -> Schema:
    """Write the server's limits and its authentication into an OpenAPI document."""
    schemas = doc["components"]["schemas"]
    text = {"type": "string", "maxLength": s.max_text_chars}

    sample = schemas["SampleRequest"]["properties"]
    _limit(sample, "prompt", "string", maxLength=s.max_text_chars)
    _limit(sample, "max_tokens", "integer", maximum=s.max_tokens)
    sample["max_tokens"]["default"] = min(SAMPLE_MAX_TOKENS, s.max_tokens)
    _limit(sample, "n", "integer", maximum=s.max_n)
    _limit(sample, "top_logprobs", "integer", maximum=s.max_top_logprobs)
    _limit(sample, "seed", "integer", maximum=SEED_MAX)  # exact: FastAPI writes 9.2e18
    _stop(sample, s)

    score = schemas["ScoreRequest"]["properties"]
    _limit(score, "texts", "array", maxItems=s.max_texts, items=text)

    completion = schemas["CompletionRequest"]["properties"]
    _limit(completion, "prompt", "string", maxLength=s.max_text_chars)
    _limit(completion, "prompt", "array", minItems=1, maxItems=s.max_texts, items=text)
    _limit(completion, "max_tokens", "integer", maximum=s.max_tokens)
    completion["max_tokens"]["default"] = min(COMPLETION_MAX_TOKENS, s.max_tokens)
    _limit(completion, "n", "integer", maximum=s.max_n)
    _limit(completion, "logprobs", "integer", maximum=s.max_top_logprobs)
    _limit(completion, "seed", "integer", maximum=SEED_MAX)
    _stop(completion, s)
    # Accepted only at their neutral values (the server refuses anything else).
    _limit(completion, "suffix", "string", maxLength=0)
    _limit(completion, "presence_penalty", "number", minimum=0, maximum=0)
    _limit(completion, "frequency_penalty", "number", minimum=0, maximum=0)
    _limit(completion, "logit_bias", "object", maxProperties=0)

    # FastAPI's default 422 body ({"detail": [...]}) is never sent: errors have one shape.
    for ops in doc["paths"].values():
        for op in ops.values():
            body = op.get("responses", {}).get("422", {}).get("content", {})
            ref = body.get("application/json", {}).get("schema", {}).get("$ref", "")
            if ref.endswith("/HTTPValidationError"):
                del op["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)

    if s.api_key is not None:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, ops in doc["paths"].items():
            if path not in OPEN_PATHS:
                for op in ops.values():
                    op["security"] = [{"bearer": []}]
    return doc


def openapi_for(app: FastAPI, settings: Settings) -> Callable[[], Schema]:
    """A replacement for `app.openapi` that builds the document once, with the settings."""

    def openapi() -> Schema:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = apply_settings(doc, settings)
        return app.openapi_schema

    return openapi

"""POST /sample and POST /score."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from rnnlm.app import service
from rnnlm.app.deps import RegistryDep, SettingsDep
from rnnlm.app.schemas import (
    SampleRequest,
    SampleResponse,
    ScoreRequest,
    ScoreResponse,
    error_responses,
    json_response,
)

router = APIRouter(tags=["native"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_SSE_DOC = {200: {"content": {"text/event-stream": {}}, "description": "with stream: true"}}
_ERRORS = error_responses(400, 401, 404, 413, 422, 503)


@router.post("/sample", response_model=SampleResponse, responses={**_SSE_DOC, **_ERRORS})  # type: ignore[dict-item]
async def sample(
    body: SampleRequest, request: Request, settings: SettingsDep, registry: RegistryDep
) -> Response:
    """Generate text until <eos>, a stop string or max_tokens; `stream` sends SSE."""
    body.check(settings)
    model = registry.get(body.model)
    if body.stream:
        job, gens = service.start_sample(model, body)
        events = service.stream_sample(model, job, gens, body.n)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    return json_response(await service.sample(model, body, request))


@router.post("/score", response_model=ScoreResponse, responses=_ERRORS)
async def score(
    body: ScoreRequest, request: Request, settings: SettingsDep, registry: RegistryDep
) -> Response:
    """Log-probability of each text: natural log, log10, perplexity, per-token on request."""
    body.check(settings)
    return json_response(await service.score(registry.get(body.model), body, request))

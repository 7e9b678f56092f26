"""POST /sample and POST /score."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app import service
from app.deps import RegistryDep, SettingsDep
from app.schemas import SampleRequest, SampleResponse, ScoreRequest, ScoreResponse

router = APIRouter(tags=["native"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_SSE_DOC = {200: {"content": {"text/event-stream": {}}, "description": "with stream: true"}}


@router.post("/sample", response_model=SampleResponse, responses=_SSE_DOC)  # type: ignore[arg-type]
async def sample(
    body: SampleRequest, request: Request, settings: SettingsDep, registry: RegistryDep
) -> SampleResponse | StreamingResponse:
    """Generate text until <eos>, a stop string or max_tokens; `stream` sends SSE."""
    body.check(settings)
    model = registry.get(body.model)
    if body.stream:
        job, gens = service.start_sample(model, body)
        events = service.stream_sample(model, job, gens, body.n)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    return await service.sample(model, body, request)


@router.post("/score", response_model=ScoreResponse)
async def score(
    body: ScoreRequest, request: Request, settings: SettingsDep, registry: RegistryDep
) -> ScoreResponse:
    """Log-probability of each text: natural log, log10, perplexity, per-token on request."""
    body.check(settings)
    return await service.score(registry.get(body.model), body, request)

"""OpenAI-compatible routes: POST /v1/completions, GET /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from rnnlm.app import service
from rnnlm.app.deps import RegistryDep, SettingsDep
from rnnlm.app.routes.native import _SSE_DOC, SSE_HEADERS
from rnnlm.app.schemas import (
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
    error_responses,
    json_response,
)

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models", response_model=ModelList, responses=error_responses(401, 503))
async def list_models(request: Request, registry: RegistryDep) -> ModelList:
    """The loaded models, in OpenAI's shape."""
    created = int(request.app.state.started)
    return ModelList(data=[ModelCard(id=name, created=created) for name in registry.models])


# Schema errors are 400 here, as OpenAI does: no 422.
_ERRORS = error_responses(400, 401, 404, 413, 503)


@router.post("/completions", response_model=Completion, responses={**_SSE_DOC, **_ERRORS})  # type: ignore[dict-item]
async def completions(
    body: CompletionRequest, request: Request, settings: SettingsDep, registry: RegistryDep
) -> Response:
    """Text completion; `echo` with `logprobs` and `max_tokens: 0` scores the prompt."""
    body.check(settings)
    model = registry.get(body.model)
    if body.stream:
        c = service.start_completion(model, body)
        return StreamingResponse(
            service.stream_completion(c), media_type="text/event-stream", headers=SSE_HEADERS
        )
    return json_response(await service.complete(model, body, request))

"""GET /health, GET /ready, GET /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rnnlm.app.deps import MetricsDep
from rnnlm.app.errors import NotReady
from rnnlm.app.schemas import error_responses

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/ready", responses=error_responses(503))
async def ready(request: Request) -> dict[str, Any]:
    """200 once models are loaded and at least one is being served; 503 otherwise."""
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        raise NotReady("models are still loading", headers={"Retry-After": "1"})
    if not registry.models:
        failed = "; ".join(f"{n}: {e}" for n, e in registry.failed.items())
        raise NotReady("no model is loaded" + (f" ({failed})" if failed else ""))
    return {"status": "ready", "models": list(registry.models), "failed": list(registry.failed)}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **error_responses(401)},
)
async def metrics(m: MetricsDep) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

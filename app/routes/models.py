"""GET /models and GET /models/{name}: what is loaded, and what failed to load."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from rnnlm.app.deps import RegistryDep
from rnnlm.app.errors import ModelNotFound
from rnnlm.app.schemas import error_responses

router = APIRouter(tags=["models"])


@router.get("/models", responses=error_responses(401, 503))
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    """Every model directory found: size, tokenizer, cell, training metrics, or its error."""
    return {"default": registry.default, "models": registry.listing()}


@router.get("/models/{name}", responses=error_responses(401, 404, 503))
async def get_model(name: str, registry: RegistryDep) -> dict[str, Any]:
    """One model's description (or why it failed to load)."""
    for entry in registry.listing():
        if entry["name"] == name:
            return entry
    available = ", ".join(registry.models) or "none"
    raise ModelNotFound(f"model {name!r} not found (available: {available})", "name")

"""POST /admin/reload: pick up models added to, replaced in or removed from the directory."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from rnnlm.app.deps import RegistryDep
from rnnlm.app.schemas import error_responses

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/reload", responses=error_responses(401, 503))
async def reload(registry: RegistryDep) -> dict[str, Any]:
    """Read the models directory again: what was added, replaced, removed, or failed to load.

    Requests in flight finish on the version they started with. Needs the API key
    when one is configured (as every route but /health, /ready and / does).
    """
    return await registry.reload()

"""`Annotated` dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rnnlm.app.config import Settings
from rnnlm.app.errors import NotReady
from rnnlm.app.metrics import Metrics
from rnnlm.app.registry import Registry

# `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop
# per request for a dictionary lookup.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_registry(request: Request) -> Registry:
    registry: Registry | None = getattr(request.app.state, "registry", None)
    if registry is None:
        raise NotReady("models are not loaded yet", headers={"Retry-After": "1"})
    return registry


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

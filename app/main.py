"""Builds the FastAPI app (`create_app`) and runs it under uvicorn (`serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import ValidationError

from rnnlm.app.config import Settings
from rnnlm.app.errors import install_error_handlers
from rnnlm.app.metrics import Metrics
from rnnlm.app.middleware import GuardMiddleware, MetricsMiddleware
from rnnlm.app.openapi import openapi_for
from rnnlm.app.registry import Registry
from rnnlm.app.routes import admin, health, models, native, openai, playground
from rnnlm.models.errors import RnnlmError

log = logging.getLogger("rnnlm.app")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service: models load in the lifespan, one worker thread each."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.torch_threads)
        # Every torch call of the engine thread releases the GIL; with Python's
        # 5 ms default a busy event loop then keeps it for up to 5 ms per call.
        sys.setswitchinterval(settings.switch_interval_s)
        registry = Registry.load(settings, metrics)
        registry.start()
        app.state.registry = registry
        log.info("serving %s (default: %s)", ", ".join(registry.models) or "no model",
                 registry.default)  # fmt: skip
        tasks = _watch_models(registry, settings)
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            app.state.registry = None
            registry.stop()

    app = FastAPI(
        title="rnnlm",
        summary="Sample from and score with recurrent language models.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = None
    app.state.started = time.time()
    app.openapi = openapi_for(app, settings)  # type: ignore[method-assign]
    install_error_handlers(app)
    routers = (native.router, openai.router, models.router, admin.router, health.router,
               playground.router)  # fmt: skip
    for r in routers:
        app.include_router(r)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    # Added innermost first: metrics see every response, CORS answers preflights
    # before the guard asks for a key.
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes, api_key=key)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _watch_models(registry: Registry, settings: Settings) -> list[asyncio.Task[None]]:
    """Reload the models on SIGHUP, and every `watch_interval_s` when set."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []

    async def reload(why: str) -> None:
        try:
            report = await registry.reload()
        except Exception:  # never let a reload take the service down
            log.exception("reloading the models (%s) failed", why)
            return
        if why == "SIGHUP" or any(report[k] for k in ("added", "replaced", "removed", "failed")):
            log.info("reload (%s): %s", why, report)

    def on_hup() -> None:
        tasks.append(loop.create_task(reload("SIGHUP")))

    # Only the main thread may set signal handlers (not so under some test clients).
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)

    async def watch() -> None:
        while True:
            await asyncio.sleep(settings.watch_interval_s)
            if any(registry.changes().values()):
                await reload("watch")

    if settings.watch_interval_s > 0:
        tasks.append(loop.create_task(watch()))
    return tasks


def serve(
    models_dir: str | None, host: str | None, port: int | None, default_model: str | None
) -> None:
    """`rnnlm serve`: arguments given win over `RNNLM_*` settings."""
    given = {"models_dir": models_dir, "host": host, "port": port, "default_model": default_model}
    try:
        settings = Settings(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
        )
        raise RnnlmError(f"bad setting ({problems})") from None
    if settings.models_dir is None:
        raise RnnlmError("no models directory: pass --models DIR or set RNNLM_MODELS_DIR")
    if not Path(settings.models_dir).is_dir():
        raise RnnlmError(f"{settings.models_dir}: no such directory")
    import uvicorn

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )

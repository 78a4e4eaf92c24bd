"""The FastAPI application served by `cicbot serve`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from bot import api, api_crm, console, metrics
from bot.campaign_api import router as campaign_router
from bot.runtime import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="cicbot", version="0.1.0", lifespan=lifespan)
    app.state.runtime = runtime

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        """200 when the database answers, 503 otherwise."""
        if await runtime.healthy():
            return JSONResponse({"status": "ok", "channels": sorted(runtime.channels)})
        return JSONResponse({"status": "database unavailable"}, status_code=503)

    api.install(app)
    app.include_router(campaign_router)
    app.include_router(api_crm.router)
    app.include_router(console.router)
    app.include_router(metrics.router)
    for adapter in runtime.channels.values():
        if adapter.router is not None:
            app.include_router(adapter.router)
    return app

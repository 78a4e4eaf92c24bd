"""The FastAPI application served by `cicbot serve`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Scope
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from bot.runtime import Runtime
from bot.web import agent_console as console
from bot.web import api, chat_info, docs, inbox_api, metrics, signin_api
from bot.web import crm_api as api_crm
from bot.web.campaigns_api import router as campaign_router

WARM_UP_PATH = "/.well-known/cicbot-warm-up"  # routed nowhere: the match visits every route


async def warm_routes(app: ASGIApp) -> None:
    """One request to no route, in process, before the socket opens. FastAPI builds each
    route's dependency and validation models on the first request that matches against it
    (about 150 ms of event-loop CPU for our ~60 routes): without this, the first customer
    pays for it, and every chat behind that request waits."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_: Message) -> None:
        pass

    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": WARM_UP_PATH, "raw_path": WARM_UP_PATH.encode(),
        "root_path": "", "query_string": b"", "headers": [], "client": None,
        "server": None, "state": {},
    }  # fmt: skip
    await app(scope, receive, send)


def create_app(runtime: Runtime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        await warm_routes(app)
        try:
            yield
        finally:
            await runtime.stop()

    server = runtime.settings.server
    app = FastAPI(
        title="cicbot",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # bot/web/docs.py serves Swagger UI itself, no CDN
        redoc_url=None,
        # every route; routes with more to carry (imports, webhooks) set their own
        max_body_size=server.max_body_bytes,
    )
    app.state.runtime = runtime
    # the client address and scheme from X-Forwarded-* only when a trusted proxy sent them
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=server.trusted_proxies)

    # the channels' routes first (ChannelHost.add_routes): routes are tried in order, and a
    # webhook POST, the one request that comes per customer message, then matches at once
    # instead of after the ~60 console and API routes (their matching was ~3 % of the bot's
    # CPU under load, bench/telegram.py --profile); no channel path is an API path (test)
    for router, max_body_bytes in runtime.routes:
        app.include_router(router, max_body_size=max_body_bytes)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        """200 when the database answers, 503 otherwise."""
        if await runtime.healthy():
            return JSONResponse({"status": "ok", "channels": sorted(runtime.channels)})
        return JSONResponse({"status": "database unavailable"}, status_code=503)

    api.install(app)
    app.include_router(signin_api.public)
    app.include_router(signin_api.router)
    app.include_router(inbox_api.router)
    app.include_router(chat_info.router)
    app.include_router(campaign_router)
    app.include_router(api_crm.router)
    app.include_router(console.router)
    app.include_router(metrics.router)
    app.include_router(docs.router)
    return app

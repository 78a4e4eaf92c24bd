"""GET /metrics: the runtime's Prometheus registry (bot/ops/metrics.py), scraped."""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from bot.runtime import Runtime

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Loopback only, unless server.metrics_token is set: then a bearer token from anywhere."""
    runtime: Runtime = request.app.state.runtime
    token = runtime.settings.server.metrics_token
    if token is not None and token.get_secret_value():
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            return PlainTextResponse(
                "send 'Authorization: Bearer <metrics token>'\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    elif not _loopback(request.client.host if request.client else None):
        return PlainTextResponse(
            "/metrics answers loopback only; set CICBOT_SERVER__METRICS_TOKEN to scrape from "
            "elsewhere\n",
            status_code=403,
        )
    scheduler = runtime.scheduler
    body = await runtime.metrics.render(
        runtime.sessions, lambda: scheduler is not None and scheduler.leader, runtime.inbox.groups
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""The FastAPI application under a real uvicorn server: /healthz, request body limits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import routing
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.config import DispatcherSettings
from bot.desk import auth
from bot.runtime import Runtime
from storage.models import AgentRole
from tests.conftest import make_settings
from tests.server import free_port, serve

TIMEOUT = 10.0
# the dispatcher polls a database that is not there: not too often, so the log stays
# readable (and not too seldom: after an error it sleeps a whole interval, even at stop)
SLOW_DISPATCHER = DispatcherSettings(poll_interval_seconds=0.3).model_dump()


async def get_health(base: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        return await http.get("/healthz")


async def test_healthz_ok_with_a_live_database(db_url: str) -> None:
    async with serve(make_settings(db_url)) as (base, _):
        response = await get_health(base)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "ok"
    assert "webchat" in body["channels"] and "console" not in body["channels"]


def unreachable_sqlite(tmp_path: Path) -> str:
    # a directory where the database file should be: SQLite cannot open it
    return f"sqlite+aiosqlite:///{tmp_path}"


def unreachable_postgres(tmp_path: Path) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/cicbot"


@pytest.mark.parametrize(
    "url_for",
    [unreachable_sqlite, unreachable_postgres],
    ids=["sqlite-directory", "postgres-closed-port"],
)
async def test_healthz_503_when_the_database_is_unreachable(
    tmp_path: Path, url_for: object, caplog: pytest.LogCaptureFixture
) -> None:
    assert callable(url_for)
    url = url_for(tmp_path)
    # auto_migrate is off (make_settings), so start-up itself does not need the database
    settings = make_settings(url, dispatcher=SLOW_DISPATCHER)
    assert settings.database.auto_migrate is False
    async with serve(settings) as (base, runtime):
        response = await get_health(base)
        assert await runtime.healthy() is False
    assert response.status_code == 503
    assert response.json() == {"status": "database unavailable"}
    assert "health check: database unavailable" in caplog.text


async def test_unknown_path_is_404(sqlite_url: str) -> None:
    async with serve(make_settings(sqlite_url)) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
            response = await http.get("/nosuch")
    assert response.status_code == 404


# --- request bodies (issue 15, finding 5) ---------------------------------------------------

MB = 1 << 20
HUGE = 200 * MB
CHUNK = b"x" * (64 << 10)


class Meter:
    """An ASGI layer between uvicorn and the app counting the body bytes the app read."""

    def __init__(self) -> None:
        self.read = 0

    def __call__(self, app: ASGIApp) -> ASGIApp:
        async def metered(scope: Scope, receive: Receive, send: Send) -> None:
            async def counted() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    self.read += len(message.get("body", b""))
                return message

            await app(scope, counted, send)

        return metered


async def post_streaming(
    base: str, path: str, total: int, *, chunked: bool, headers: dict[str, str] | None = None
) -> tuple[int, int]:
    """POST `total` bytes over a raw connection, as fast as the server takes them, until
    it answers: (the status, the bytes sent by then)."""
    url = httpx.URL(base)
    assert url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n{extra}\r\n".encode()
    )
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    piece = f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n" if chunked else CHUNK
    sent = 0
    try:
        while sent < total and not answer.done():
            writer.write(piece)
            drained = asyncio.ensure_future(writer.drain())
            await asyncio.wait({drained, answer}, return_when=asyncio.FIRST_COMPLETED)
            if not drained.done():
                drained.cancel()
                break
            drained.result()
            sent += len(CHUNK)
        if chunked and not answer.done():
            writer.write(b"0\r\n\r\n")
        async with asyncio.timeout(60):
            head = await answer
    except (ConnectionError, asyncio.IncompleteReadError):  # closed after its answer
        head = answer.result() if answer.done() and not answer.exception() else b""
    finally:
        writer.close()
    assert head, "no answer"
    return int(head.split()[1]), sent


async def agent_token(runtime: Runtime, role: AgentRole = AgentRole.AGENT) -> str:
    async with runtime.sessions() as s, s.begin():
        _, token = await auth.create_agent(s, f"Agent {role}", role)
    return token


@pytest.mark.parametrize(
    ("chunked", "expected"), [(True, 401), (False, 413)], ids=["chunked", "content-length"]
)
async def test_200_mb_without_a_token_is_refused_unread(
    sqlite_url: str, chunked: bool, expected: int
) -> None:
    """Regression: 200 MB to an API route without a token were read whole before the 401
    (the server's memory grew by 600 MB). The token is checked before the body is read
    (401), a declared length over the limit is refused as such (413): either way the app
    reads nothing of the body."""
    meter = Meter()
    async with serve(make_settings(sqlite_url), wrap=meter) as (base, _):
        status, sent = await post_streaming(
            base, "/api/v1/conversations/1/reply", HUGE, chunked=chunked
        )
    assert status == expected
    assert meter.read == 0
    assert sent < HUGE // 4  # the client was stopped early (socket buffers aside)


async def test_200_mb_with_a_token_is_refused_by_its_size(sqlite_url: str) -> None:
    meter = Meter()
    async with serve(make_settings(sqlite_url), wrap=meter) as (base, runtime):
        auth_header = {"Authorization": f"Bearer {await agent_token(runtime)}"}
        path = "/api/v1/conversations/1/reply"
        status, _ = await post_streaming(base, path, HUGE, chunked=False, headers=auth_header)
        assert (status, meter.read) == (413, 0)  # by its Content-Length, nothing read
        status, _ = await post_streaming(base, path, HUGE, chunked=True, headers=auth_header)
        assert status == 413
        assert meter.read <= MB + 2 * len(CHUNK)  # streamed: read up to the limit only


async def test_every_route_has_a_size_limit(sqlite_url: str) -> None:
    """Routes without a token (the unsubscribe link, the page) are limited too (1 MiB by
    default, server.max_body_bytes); CSV imports have their own, larger limit."""
    async with serve(make_settings(sqlite_url)) as (base, runtime):
        supervisor = await agent_token(runtime, AgentRole.SUPERVISOR)
        body = b"a" * (2 * MB)
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
            for path in ("/", "/unsubscribe/some-token", "/healthz", "/api/v1/nowhere"):
                assert (await http.post(path, content=body)).status_code == 413, path
            small = await http.post("/unsubscribe/some-token", content=b"List-Unsubscribe=One")
            assert small.status_code != 413
            too_big = await http.post(
                "/api/v1/conversations/1/reply",
                json={"text": "x" * (2 * MB)},
                headers={"Authorization": f"Bearer {supervisor}"},
            )
            assert too_big.status_code == 413  # refused by its Content-Length
            csv = b"email,name\n" + b"".join(
                b"c%06d@example.com,Name %06d\n" % (n, n) for n in range(80_000)
            )
            assert len(csv) > 2 * MB
            imported = await http.post(
                "/api/v1/import/contacts",
                content=csv,
                headers={"Authorization": f"Bearer {supervisor}", "Content-Type": "text/csv"},
            )
            assert imported.status_code != 413, imported.text


async def test_routes_are_built_before_the_first_request(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI builds a route's models on the first request matched against it: the app
    does that at start, so the first customer's request does not pay for ~60 routes."""
    built: list[str] = []
    original = routing._EffectiveRouteContext.from_api_route

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(kwargs["original_route"].path)
        return original(*args, **kwargs)

    monkeypatch.setattr(routing._EffectiveRouteContext, "from_api_route", counting)
    async with serve(make_settings(sqlite_url)) as (base, _):
        at_start = len(built)
        response = await get_health(base)
        assert response.status_code == 200
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
            assert (await http.get("/api/v1/conversations")).status_code == 401
    assert at_start > 40  # every API route, the agents' and the channels'
    assert len(built) == at_start, built[at_start:]


def test_channel_routes_are_tried_first_and_shadow_no_api_route(sqlite_url: str) -> None:
    """A webhook POST comes once per customer message: its route is the first the app tries
    (the console's and the API's ~60 routes were matched before it on every message), and
    putting the channels first changes no other route's match: no channel serves a path and
    method the app serves too."""
    from bot.web.app import create_app
    from channels.telegram.settings import TelegramSettings
    from channels.webhook.settings import WebhookSettings

    settings = make_settings(
        sqlite_url,
        telegram=TelegramSettings(token="1:x", webhook_secret="s" * 32, mode="webhook"),
        webhook=WebhookSettings(secret="w" * 32, outbound_url="http://127.0.0.1:9/out"),  # type: ignore[arg-type]
    )
    rt = Runtime(settings, channels=["telegram", "webhook", "webchat"])
    app = create_app(rt)
    routers = [router for router, _ in rt.routes]
    channel_routes = [r for router in routers for r in router.routes]
    assert any(getattr(r, "path", "") == "/webhooks/telegram" for r in channel_routes)
    # an included router is one entry of app.routes (FastAPI matches through it)
    own = [
        i
        for i, r in enumerate(app.routes)
        if r in channel_routes or getattr(r, "original_router", None) in routers
    ]
    assert own, [type(r).__name__ for r in app.routes]
    # before them only FastAPI's own schema route, there before anything is added
    assert [getattr(r, "path", None) for r in app.routes[: own[0]]] == ["/openapi.json"]
    assert own == list(range(own[0], own[0] + len(own)))
    served = {
        (path, m) for r in app.routes[own[-1] + 1 :] for path, methods in _paths(r) for m in methods
    }
    for r in channel_routes:
        for m in getattr(r, "methods", None) or ():
            assert (r.path, m) not in served, (r.path, m)  # type: ignore[attr-defined]


def _paths(route: object) -> list[tuple[str, set[str]]]:
    """(path, methods) of a route, or of every route an included router serves."""
    inner = getattr(route, "original_router", None)
    if inner is not None:
        prefix = getattr(route, "prefix", "") or ""
        return [(prefix + p, m) for r in inner.routes for p, m in _paths(r)]
    methods = getattr(route, "methods", None)
    return [(route.path, set(methods))] if methods else []  # type: ignore[attr-defined]

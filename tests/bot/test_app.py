"""The FastAPI application under a real uvicorn server: /healthz."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bot.config import DispatcherSettings
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

"""What counts as "the database is away" (retry later) rather than a failed piece of work."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from storage.db import create_engine, is_unavailable, json_text


class _DriverError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "unavailable"),
    [
        ("08006", True),  # connection failure
        ("53300", True),  # too many connections
        ("57P01", True),  # admin shutdown (a restart)
        ("57P03", True),  # the database system is starting up
        ("57014", False),  # query cancelled: the work, not the server
        ("23505", False),  # unique violation
        ("42P01", False),  # undefined table: a bug, retrying will not help
        (None, False),
    ],
)
def test_sqlstate_decides_for_plain_driver_errors(sqlstate: str | None, unavailable: bool) -> None:
    exc = DBAPIError("SELECT 1", None, _DriverError(sqlstate))
    assert is_unavailable(exc) is unavailable


def test_network_errors_and_bugs() -> None:
    assert is_unavailable(ConnectionRefusedError())
    assert is_unavailable(TimeoutError())
    assert not is_unavailable(IntegrityError("INSERT", None, _DriverError("23505")))
    assert not is_unavailable(ValueError("a bug"))


def test_asyncpg_errors_that_escape_unwrapped() -> None:
    """Regression: a connection dropped while SQLAlchemy set it up (its JSON codec) raised
    asyncpg's bare InterfaceError; the Slack webhook answered 500 instead of 503."""
    assert is_unavailable(asyncpg.exceptions.InterfaceError("connection is closed"))
    assert is_unavailable(asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-way"))
    assert not is_unavailable(asyncpg.exceptions.DataError("invalid input for query argument"))
    assert not is_unavailable(asyncpg.exceptions.InterfaceError("another operation in progress"))


@pytest.mark.postgres
async def test_terminated_backend_is_unavailable(pg_url: str) -> None:
    """What a PostgreSQL restart does to an open connection (57P01)."""
    engine = create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(Exception) as caught:
                await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        assert is_unavailable(caught.value), repr(caught.value)
        async with engine.connect() as conn:  # and the pool recovers
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_connection_lost_while_being_set_up(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops after PostgreSQL accepted it, before SQLAlchemy has set it up
    (deterministic version of what tests/reliability's flapping database meets)."""
    engine = create_engine(pg_url)
    setup = engine.dialect.setup_asyncpg_json_codec  # type: ignore[attr-defined]

    async def dropped_first(conn: Any) -> None:
        await conn._connection.close()  # as a reset by the network would leave it
        await setup(conn)

    monkeypatch.setattr(engine.dialect, "setup_asyncpg_json_codec", dropped_first)
    try:
        with pytest.raises(Exception) as caught:
            async with engine.connect():
                pass
        assert is_unavailable(caught.value), repr(caught.value)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_after_a_restart_one_statement_fails_and_the_pool_is_renewed(pg_url: str) -> None:
    """No pre-ping at checkout (a round trip per transaction): when the server dropped the
    pooled connections, the first statement fails as unavailable and the disconnect renews
    the whole pool, so the next checkouts get fresh connections instead of failing too."""
    engine = create_engine(pg_url)
    admin = create_engine(pg_url)
    try:
        held = [await engine.connect() for _ in range(3)]
        pids = [(await c.execute(text("SELECT pg_backend_pid()"))).scalar() for c in held]
        for conn in held:
            await conn.close()  # back into the pool, alive
        async with admin.connect() as conn:
            for pid in pids:
                await conn.execute(text(f"SELECT pg_terminate_backend({int(pid)})"))
        with pytest.raises(Exception) as caught:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        assert is_unavailable(caught.value), repr(caught.value)
        fresh = [await engine.connect() for _ in range(3)]
        try:
            for conn in fresh:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        finally:
            for conn in fresh:
                await conn.close()
    finally:
        await engine.dispose()
        await admin.dispose()


def test_json_text_is_what_the_stdlib_reads_back() -> None:
    values: list[Any] = [
        {"text": "Grüße, 你好 😀", "n": [1, 2.5, -3e-7, True, None], "nested": {"a": {}}},
        {"big": 2**70, "key": "int keys and huge numbers go to the stdlib"},
        {1: "an integer key"},
        ["lone \ud800 surrogate"],
    ]
    for value in values:
        assert json.loads(json_text(value)) == json.loads(json.dumps(value))
    with pytest.raises(TypeError):  # as the stdlib: no silent text for a date
        json_text({"at": datetime.now()})

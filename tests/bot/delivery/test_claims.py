"""Two workers on one PostgreSQL: a claim's pick of heads is read from its statement's
snapshot, so a row another worker leased and committed just after it is still among the
picked; the lock re-checks the row itself, and it must not be taken again. (Seen: 448 of
10,000 campaign messages sent twice by two `cicbot serve` workers, bench/campaign.py
--workers 2, when the due check was only in the pick.) SQLite has one writer at a time:
there a pick is never stale."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import column, text

from bot.delivery import dispatcher, inbox
from bot.runtime import Runtime
from storage.models import InboxStatus, OutboxStatus
from tests.bot.delivery.test_dispatcher import outbox
from tests.bot.delivery.test_inbox import parse, rows
from tests.conftest import inbound


def stale(ids: list[int]) -> Any:
    """The pick as the snapshot before the other worker's commit had it."""
    return lambda *args, **kwargs: text(
        " UNION ALL ".join(f"SELECT {int(i)} AS id" for i in ids)
    ).columns(column("id"))


def postgres_only(rt: Runtime) -> None:
    if rt.db.dialect.name != "postgresql":
        pytest.skip("one writer at a time: a pick is never stale")


async def test_an_outbox_row_leased_after_the_pick_is_not_claimed_again(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    postgres_only(runtime)
    await runtime.engine.handle(inbound("hello"))
    [row] = await outbox(runtime)
    first = await runtime.dispatcher._claim()  # the other worker: leased and committed
    assert [r.id for r in first] == [row.id]
    monkeypatch.setattr(dispatcher.queries, "heads", stale([row.id]))
    assert await runtime.dispatcher._claim() == []
    assert [r.status for r in await outbox(runtime)] == [OutboxStatus.SENDING]


async def test_an_inbox_row_leased_after_the_pick_is_not_claimed_again(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    postgres_only(runtime)
    runtime.inbox.register("test", parse)
    assert await runtime.inbox.accept("test", "1", "u", {"id": 1, "user": "u", "text": "hi"})
    [row] = await rows(runtime)
    first = await runtime.inbox._claim(4)
    assert [r.id for r in first] == [row.id]
    monkeypatch.setattr(inbox.queries, "heads", stale([row.id]))
    assert await runtime.inbox._claim(4) == []
    assert [r.status for r in await rows(runtime)] == [InboxStatus.PROCESSING]

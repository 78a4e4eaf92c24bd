"""A group commit's new customers created together (bot/conversation/onboarding.py): the
rows the ORM's way makes one customer at a time, in one INSERT per table, and only for the
customers that way would create from nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, select, update

from bot.channel.messages import InboundMessage
from bot.conversation import onboarding
from bot.runtime import Runtime
from storage import queries
from storage.models import (
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Identity,
    InboxStatus,
    InboxUpdate,
    OutboxMessage,
    Touchpoint,
    utcnow,
)
from tests.conftest import inbound

TEXT = "hi"


@contextmanager
def recorded(runtime: Runtime) -> Iterator[list[str]]:
    """The SQL statements run meanwhile."""
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        statements.append(sql)

    event.listen(runtime.db.sync_engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(runtime.db.sync_engine, "before_cursor_execute", seen)


async def delivered(runtime: Runtime, payloads: list[dict[str, Any]]) -> None:
    """The payloads accepted at once (they share group commits), then handled."""
    await asyncio.gather(
        *(runtime.inbox.accept("test", str(p["id"]), p["user"], p) for p in payloads)
    )
    await runtime.inbox.drain()


def parse(payload: dict[str, Any]) -> list[InboundMessage]:
    return [
        InboundMessage(
            channel="test",
            sender_id=payload["user"],
            platform_message_id=f"msg-{payload['id']}",
            thread_key=payload["user"],
            text=payload["text"],
            sender_name=payload["name"],
            locale_hint=payload["locale"],
        )
    ]


async def _customer(runtime: Runtime, user: str) -> dict[str, Any]:
    """What a customer's rows hold, without ids and times."""
    async with runtime.sessions() as s:
        identity = (
            await s.execute(select(Identity).where(Identity.external_id == user))
        ).scalar_one()
        contact = await s.get(Contact, identity.contact_id)
        assert contact is not None
        conv = (
            await s.execute(select(Conversation).where(Conversation.thread_key == user))
        ).scalar_one()
        touchpoints = (
            await s.execute(
                select(Touchpoint.direction, Touchpoint.kind, Touchpoint.text)
                .where(Touchpoint.contact_id == contact.id)
                .order_by(Touchpoint.id)
            )
        ).all()
        sent = (
            await s.execute(
                select(OutboxMessage.body)
                .where(OutboxMessage.recipient_id == user)
                .order_by(OutboxMessage.id)
            )
        ).scalars()
        assert conv.contact_id == contact.id and conv.identity_id == identity.id
        assert identity.last_seen_at is not None and contact.last_contact_at is not None
        return {
            "contact": (
                contact.name,
                contact.locale,
                contact.lifecycle_phase,
                contact.source,
                contact.attributes,
                contact.email,
            ),
            "identity": (identity.channel, identity.display_name, identity.reachable),
            "conversation": (conv.channel, conv.status, conv.flow_state, conv.priority),
            "touchpoints": [tuple(t) for t in touchpoints],
            "sent": [b["text"] for b in sent],
        }


async def test_a_groups_new_customers_are_created_together_as_one_by_one(
    runtime: Runtime,
) -> None:
    # the reference: each new customer alone, the ORM's way
    for locale in ("en", "de"):
        msg = inbound(TEXT, user=f"ref-{locale}", locale=locale, sender_name="Alex")
        await runtime.engine.handle(msg)
    runtime.inbox.register("test", parse)
    n = 8
    with recorded(runtime) as statements:
        await delivered(
            runtime,
            [
                {
                    "id": i,
                    "user": f"u{i}",
                    "text": TEXT,
                    "name": "Alex",
                    "locale": ("en", "de")[i % 2],
                }
                for i in range(n)
            ],
        )
    groups = runtime.inbox._group.batches
    assert groups < n  # some rows shared a group
    assert not [q for q in statements if "SAVEPOINT" in q]  # no group ran again
    for table in ("contacts", "identities", "conversations"):
        made = [q for q in statements if q.startswith(f"INSERT INTO {table}")]
        assert len(made) <= groups, (table, made)  # was: one per customer
    # and each first turn went the plain way: no step by step read of the ORM's way
    assert not [q for q in statements if q.startswith("SELECT identities.id")], statements
    refs = {locale: await _customer(runtime, f"ref-{locale}") for locale in ("en", "de")}
    for i in range(n):
        got = await _customer(runtime, f"u{i}")
        want = refs[("en", "de")[i % 2]]
        assert got["contact"] == want["contact"]
        assert got["identity"] == want["identity"] == ("test", "Alex", True)
        assert got["conversation"] == want["conversation"]
        assert got["touchpoints"] == want["touchpoints"]
        assert got["sent"] == want["sent"] and got["sent"]
    assert want["conversation"][1] == ConversationStatus.BOT
    async with runtime.sessions() as s:
        statuses = (await s.execute(select(InboxUpdate.status))).scalars().all()
    assert statuses == [InboxStatus.DONE] * n


async def test_only_customers_made_from_nothing_are_created_here(runtime: Runtime) -> None:
    # a known sender (a new thread of theirs), a thread with a conversation (closed: the ORM's
    # way may reopen it), a message taken in before, a sender whose channel told us facts,
    # an edit, and one sender twice: all left to the ORM's way; two new customers with one
    # external id on two channels each get their own rows
    await runtime.engine.handle(inbound("hi", user="known", mid="dup"))
    await runtime.engine.handle(inbound("hi", user="closed"))
    async with runtime.sessions() as s, s.begin():
        await s.execute(
            update(Conversation)
            .where(Conversation.thread_key == "closed")
            .values(status=ConversationStatus.CLOSED)
        )

    def msg(user: str, thread: str, mid: str, channel: str = "test", **kw: Any) -> InboundMessage:
        return InboundMessage(
            channel=channel, sender_id=user, platform_message_id=mid, thread_key=thread, **kw
        )

    firsts = [
        msg("known", "known-2", "a"),
        msg("other", "closed", "b"),
        msg("fresh-dup", "fresh-dup", "dup"),  # the platform id "known"'s message had
        msg("shared", "shared", "c", contact_updates={"phone": "+491701234567"}),
        msg("edited", "edited", "d", kind="edit"),
        msg("twice", "twice-1", "e", sender_name="Anna Müller"),
        msg("twice", "twice-2", "f"),
        msg("same", "same", "g"),
        msg("same", "same", "g", channel="other"),
    ]
    async with runtime.sessions() as s, s.begin():
        made = await onboarding.onboard(s, firsts, default_locale="de", now=utcnow())
    assert sorted(made) == [
        ("other", "same", "same", "g"),
        ("test", "same", "same", "g"),
        ("test", "twice", "twice-1", "e"),
    ]
    # what the group keeps for each turn instead of reading it back: what a read finds
    async with runtime.sessions() as s, s.begin():
        for key, row in made.items():
            assert await queries.turn_row(s, *key) == row
    async with runtime.sessions() as s:
        rows = (
            await s.execute(
                select(Identity.channel, Identity.external_id, Contact.locale, Conversation)
                .join(Contact, Contact.id == Identity.contact_id)
                .join(Conversation, Conversation.identity_id == Identity.id)
                .where(Identity.external_id.in_(["twice", "same"]))
                .order_by(Identity.channel, Identity.external_id)
            )
        ).all()
        others = (
            await s.execute(
                select(Identity.external_id).where(
                    Identity.external_id.in_(["other", "fresh-dup", "shared", "edited"])
                )
            )
        ).scalars()
        threads = (
            await s.execute(
                select(Conversation.thread_key).where(Conversation.thread_key == "known-2")
            )
        ).scalars()
        inbound_rows = (
            await s.execute(select(Touchpoint.id).where(Touchpoint.direction == Direction.IN))
        ).scalars()
    assert not list(others) and not list(threads)
    assert len(list(inbound_rows)) == 2  # created, not taken in: the turns do that
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("other", "same", "de"),
        ("test", "same", "de"),
        ("test", "twice", "de"),
    ]
    for channel, external, _, conv in rows:
        assert (conv.channel, conv.status, conv.flow_state) == (channel, "bot", {})
        assert conv.thread_key == ("twice-1" if external == "twice" else "same")


async def test_known_customers_cost_no_statement_more(runtime: Runtime) -> None:
    # a group reads its chats' rows first (the turns need them anyway): only the chats it
    # found no row for are looked at again, so known customers cost no statement more
    for i in range(6):
        await runtime.engine.handle(inbound("hi", user=f"u{i}", mid=f"first-{i}"))
    runtime.inbox.register("test", parse)
    with recorded(runtime) as statements:
        await delivered(
            runtime,
            [
                {"id": i, "user": f"u{i}", "text": "1", "name": None, "locale": "en"}
                for i in range(6)
            ],
        )
    assert not [q for q in statements if q.startswith("SELECT identities.external_id")]
    assert not [q for q in statements if q.startswith("INSERT INTO contacts")]

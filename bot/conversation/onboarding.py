"""A group commit's new customers created together.

A new customer's first message went the ORM's way alone: its contact, identity and
conversation each inserted and flushed by itself, then the ORM's turn (nine statements
against two for a known customer's message; under load, when every customer of a run is
new at once, a quarter of the process's time). Here the group's new customers get their
three rows in one multi-row INSERT per table, with the values the ORM's way would give
them (`Engine._take_in`, `Engine._identity`, `queries.create_contact_with_identity`,
`queries.create_conversation`); each turn then finds a known customer in an open
conversation and goes the plain way, or the ORM's way if its decision asks for it.

Only the plain case is taken: a message or button, nothing learnt about the sender
(`contact_updates`, which the ORM's way writes into a new profile), a sender with no
identity on the channel, a thread with no conversation at all (none to reopen) and a
message not taken in before. Anything else is left to the ORM's way, as before. A
concurrent creator of the same identity makes the INSERT fail: the group rolls back and
runs again row by row, where the ORM's way finds the other's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.channel.messages import InboundMessage
from flows.catalog import normalize_locale
from storage import queries
from storage.models import (
    Contact,
    Conversation,
    ConversationStatus,
    Identity,
    LifecyclePhase,
    Touchpoint,
)

_CONTACTS: Table = Contact.__table__  # type: ignore[assignment]
_IDENTITIES: Table = Identity.__table__  # type: ignore[assignment]
_CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]
_TOUCHPOINTS: Table = Touchpoint.__table__  # type: ignore[assignment]

_KNOWN_SENDERS = select(_IDENTITIES.c.external_id).where(
    _IDENTITIES.c.channel == bindparam("channel"),
    _IDENTITIES.c.external_id.in_(bindparam("keys", expanding=True)),
)
_KNOWN_THREADS = select(_CONVERSATIONS.c.thread_key).where(  # ix_conversations_thread
    _CONVERSATIONS.c.channel == bindparam("channel"),
    _CONVERSATIONS.c.thread_key.in_(bindparam("keys", expanding=True)),
)
_TAKEN_IN = select(_TOUCHPOINTS.c.platform_message_id).where(  # the dedupe index
    _TOUCHPOINTS.c.channel == bindparam("channel"),
    _TOUCHPOINTS.c.platform_message_id.in_(bindparam("keys", expanding=True)),
    _TOUCHPOINTS.c.direction == queries.INBOUND,
)
# the ids in the rows' order: PostgreSQL returns them so (SQLAlchemy's insertmanyvalues
# sorts them); SQLite would insert one row at a time for that, but numbers the rows of its
# INSERT in their order, and the transaction holds the write lock: there the ids, sorted,
# are in the rows' order
_ORDERED = {
    "postgresql": {
        t.name: insert(t).returning(t.c.id, sort_by_parameter_order=True)
        for t in (_CONTACTS, _IDENTITIES, _CONVERSATIONS)
    },
    "sqlite": {
        t.name: insert(t).returning(t.c.id) for t in (_CONTACTS, _IDENTITIES, _CONVERSATIONS)
    },
}


def candidates(firsts: Sequence[InboundMessage]) -> list[InboundMessage]:
    """The chats' first messages that may be a new customer's plain first turn: one per
    sender and channel (a sender's second thread finds the identity the first made)."""
    chosen: list[InboundMessage] = []
    senders: set[tuple[str, str]] = set()
    for m in firsts:
        sender = (m.channel, m.sender_id)
        if m.kind in ("message", "button") and not m.contact_updates and sender not in senders:
            senders.add(sender)
            chosen.append(m)
    return chosen


async def _found(
    s: AsyncSession, stmt: Any, pairs: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which (channel, key) pairs the statement finds, one statement per channel."""
    found: set[tuple[str, str]] = set()
    for channel, keys in queries.by_channel(pairs):
        rows = await s.execute(stmt, {"channel": channel, "keys": keys})
        found.update((channel, key) for (key,) in rows)
    return found


async def onboard(
    s: AsyncSession, firsts: Sequence[InboundMessage], *, default_locale: str, now: datetime
) -> dict[queries.TurnKey, queries.TurnRow]:
    """Create the new customers among the chats' first messages (`candidates`) in one
    INSERT per table; for each one made, by its message's key, the row `queries.turn_row`
    would now read (the values written: no statement to read them back)."""
    chosen = candidates(firsts)
    if not chosen:
        return {}
    known = await _found(s, _KNOWN_SENDERS, [(m.channel, m.sender_id) for m in chosen])
    chosen = [m for m in chosen if (m.channel, m.sender_id) not in known]
    if chosen:
        threads = await _found(s, _KNOWN_THREADS, [(m.channel, m.thread_key) for m in chosen])
        chosen = [m for m in chosen if (m.channel, m.thread_key) not in threads]
    if chosen:
        pairs = [(m.channel, m.platform_message_id) for m in chosen]
        taken = await _found(s, _TAKEN_IN, pairs)
        chosen = [m for m in chosen if (m.channel, m.platform_message_id) not in taken]
    if not chosen:
        return {}
    contacts: list[dict[str, Any]] = [
        {
            "name": queries.scrub(m.sender_name),
            "locale": normalize_locale(m.locale_hint, default_locale),
            "lifecycle_phase": LifecyclePhase.ACTIVE.value,
            "source": None,
            "attributes": {},
            "created_at": now,
            "updated_at": now,
        }
        for m in chosen
    ]
    contact_ids = await _insert(s, _CONTACTS, contacts)
    identities: list[dict[str, Any]] = [
        {
            "contact_id": contact_id,
            "channel": m.channel,
            "external_id": m.sender_id,
            "display_name": contact["name"],
            "reachable": True,
            "created_at": now,
        }
        for m, contact_id, contact in zip(chosen, contact_ids, contacts, strict=True)
    ]
    identity_ids = await _insert(s, _IDENTITIES, identities)
    conversations: list[dict[str, Any]] = [
        {
            "contact_id": contact_id,
            "identity_id": identity_id,
            "channel": m.channel,
            "thread_key": m.thread_key,
            "status": ConversationStatus.BOT.value,
            "flow_state": {},
            "priority": 0,
            "created_at": now,
            "updated_at": now,
        }
        for m, contact_id, identity_id in zip(chosen, contact_ids, identity_ids, strict=True)
    ]
    conversation_ids = await _insert(s, _CONVERSATIONS, conversations)
    # the turn rows from the values just written (the columns not written are NULL)
    made = zip(chosen, contacts, identities, conversations, conversation_ids, strict=True)
    return {
        (m.channel, m.sender_id, m.thread_key, m.platform_message_id): queries.TurnRow(
            duplicate=False,  # _TAKEN_IN found none
            identity_id=conversation["identity_id"],
            contact_id=conversation["contact_id"],
            external_id=identity["external_id"],
            display_name=identity["display_name"],
            reachable=identity["reachable"],
            unreachable_reason=None,
            name=contact["name"],
            locale=contact["locale"],
            value_segment=None,
            lifecycle_phase=contact["lifecycle_phase"],
            timezone=None,
            conversation_id=conversation_id,
            status=conversation["status"],
            flow_state=conversation["flow_state"],
        )
        for m, contact, identity, conversation, conversation_id in made
    }


async def _insert(s: AsyncSession, table: Table, values: list[dict[str, Any]]) -> list[int]:
    """Rows in one multi-row INSERT; their ids in the rows' order."""
    dialect = s.get_bind().dialect.name
    ids = [int(i) for i in (await s.execute(_ORDERED[dialect][table.name], values)).scalars()]
    return ids if dialect != "sqlite" else sorted(ids)

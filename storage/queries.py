"""The queries the rest of the application uses. Callers own the transaction."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    Exists,
    Integer,
    String,
    Table,
    TextualSelect,
    and_,
    any_,
    bindparam,
    case,
    column,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnClause, ColumnElement

from storage import case_ids
from storage.models import (
    Case,
    CaseStatus,
    Consent,
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Identity,
    InboxStatus,
    InboxUpdate,
    OutboxMessage,
    OutboxStatus,
    Touchpoint,
    UTCDateTime,
    utcnow,
)

# The conditions of the partial indexes the hot path reads, written as SQL literals: a
# planner can use a partial index only when the query implies its WHERE, and `direction =
# ?` (a bound parameter) implies nothing, so the dedupe check scanned every touchpoint and
# the open-conversation lookup every conversation (SQLite; PostgreSQL's generic plans too).
INBOUND: ColumnClause[str] = literal_column(
    f"'{Direction.IN.value}'"
)  # uq_touchpoints_inbound_platform_id
CLOSED: ColumnClause[str] = literal_column(
    f"'{ConversationStatus.CLOSED.value}'"
)  # uq_conversations_open_thread


def _literals(*values: str) -> list[ColumnClause[str]]:
    return [literal_column(f"'{v}'") for v in values]


# ix_inbox_unfinished and ix_outbox_unfinished: `status IN (?, ?)` implied nothing, so the
# claims read every row of the channel (ix_*_partition), done ones too: a cost that grew
# with the table
INBOX_UNFINISHED = _literals(InboxStatus.PENDING.value, InboxStatus.PROCESSING.value)
OUTBOX_UNFINISHED = _literals(OutboxStatus.PENDING.value, OutboxStatus.SENDING.value)


# what makes an unfinished row claimable now, per table (as SQL; {t}: a table's prefix)
_DUE = {
    "inbox": "({t}status = 'pending' OR ({t}status = 'processing' AND {t}leased_until < :now))",
    "outbox": "(({t}status = 'pending' AND {t}next_attempt_at <= :now) "
    "OR ({t}status = 'sending' AND {t}leased_until < :now))",
}


def due_now(table: str, now: datetime) -> ColumnElement[bool]:
    """_DUE of `table` for a row itself: what a claim on PostgreSQL re-checks when it
    locks a row (the pick's ids come from the statement's snapshot)."""
    if table == "inbox":
        return or_(
            InboxUpdate.status == InboxStatus.PENDING,
            and_(InboxUpdate.status == InboxStatus.PROCESSING, InboxUpdate.leased_until < now),
        )
    return or_(
        and_(OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.next_attempt_at <= now),
        and_(OutboxMessage.status == OutboxStatus.SENDING, OutboxMessage.leased_until < now),
    )


_PARTITIONS = {
    ("inbox", "partition_key"): ("ix_inbox_unfinished", INBOX_UNFINISHED),
    ("outbox", "recipient_id"): ("ix_outbox_unfinished", OUTBOX_UNFINISHED),
}
WINDOW_PER_CLAIM = 4  # the oldest unfinished rows read per row a claim takes, beyond ...
# ... the rows other claims hold: the oldest unfinished rows are those in flight (up to 256
# per worker, bot/delivery/settings.IN_FLIGHT; two workers), which fill a claim's window of
# a few free slots, so that each claim read every partition's head
WINDOW_IN_FLIGHT = 512
HEADS_PER_CLAIM = 2  # heads offered per row: rows another worker locks are skipped
_ALL = 1_000_000_000  # LIMIT "all" that both databases accept


def heads(
    dialect: str,
    table: str,
    key: str,
    channels: Sequence[str],
    *,
    now: datetime,
    limit: int,
    partition: str | None = None,
) -> TextualSelect:
    """The ids of the oldest partition heads that may be claimed now, enough for a claim
    of `limit` rows: a head is a partition's oldest unfinished row (`key`: the inbox's
    partition_key, the outbox's recipient_id), in `channels` (not empty), optionally of
    one `partition`.
    The caller orders and limits (`WHERE id IN (this) ORDER BY id LIMIT limit`): with no
    other condition beside, SQLite looks the few rows up by id instead of reading every
    due row through ix_outbox_due and testing each.

    The window: the `WINDOW_IN_FLIGHT + WINDOW_PER_CLAIM * limit` oldest unfinished rows
    (ix_*_unfinished_id; the rows in flight, not due, are passed over without a probe);
    each due one, oldest first, is checked against its partition's oldest (ix_*_unfinished,
    one index probe) until twice `limit` heads are found (a claim skips the rows another
    worker's claim has locked and takes the next ones). Any head older than the window's
    newest row is in it; so when the window holds `limit` claimable heads, or all
    unfinished rows, they are the answer. Otherwise (a busy partition's or not-yet-due
    rows fill it) every partition's head is read too, the
    GROUP BY over all unfinished rows that once was the only way: a cost that grew with
    the backlog (bench/claim.py), now paid only in that case. The fallback's LIMIT is 0
    unless needed: both databases then skip its scan (a WHERE with subqueries was still
    scanned by SQLite). SQLite is told the indexes (INDEXED BY): without statistics it
    preferred the full index on (channel, key, status, id) and read every row the channel
    ever had."""
    index, unfinished = _PARTITIONS[(table, key)]
    statuses = ", ".join(str(v) for v in unfinished)  # the literals, as the index has them
    # one partition's window is a range of ix_*_unfinished (already in id order for one
    # channel); every partition's, the oldest rows by id
    window_index = index if partition is not None else f"{index}_id"
    window_hint = f" INDEXED BY {window_index}" if dialect == "sqlite" else ""
    hint = f" INDEXED BY {index}" if dialect == "sqlite" else ""
    one = f" AND {key} = :partition" if partition is not None else ""
    due = _DUE[table].format(t="")
    oldest = (  # the window: the oldest unfinished rows
        f"FROM {table}{window_hint} WHERE status IN ({statuses}) AND channel IN :channels{one} "
        "ORDER BY id LIMIT :window"
    )
    columns = f"id, channel, {key}, status, {'next_attempt_at, ' if table == 'outbox' else ''}"
    if dialect == "sqlite":  # the partition's oldest, from the index it is told
        head_of_w = (
            f"SELECT min(p.id) FROM {table} p{hint} WHERE p.channel = w.channel "  # noqa: S608
            f"AND p.{key} = w.{key} AND p.status IN ({statuses})"
        )
    else:  # the same: the first unfinished row at or after w's partition in the order of
        # ix_*_unfinished, which only that index gives. Asked for the min(id) of a
        # partition, PostgreSQL may read the id index from its start and filter by
        # partition, as it did for small tables (bench/claim.py, 300 recipients: a claim
        # 10 ms against 2; SQLite, told INDEXED BY, then read every row: not for it)
        head_of_w = (
            f"SELECT p.id FROM {table} p WHERE (p.channel, p.{key}) >= (w.channel, w.{key}) "  # noqa: S608
            f"AND p.status IN ({statuses}) ORDER BY p.channel, p.{key}, p.id LIMIT 1"
        )
    sql = (
        # the window's heads due now, in its order (oldest first), until enough are found
        f"WITH h AS (SELECT w.id FROM (SELECT {columns}leased_until {oldest}) w "  # noqa: S608
        f"WHERE {due} AND w.id = ({head_of_w}) "
        "LIMIT :offer) "  # (no ORDER BY: the window comes in id order, and SQLite sorted it all)
        "SELECT id FROM h UNION ALL "
        # every partition's head, when too few were found in a full window
        f"SELECT t.id FROM (SELECT min(id) AS id FROM {table}{hint} "
        f"WHERE status IN ({statuses}) AND channel IN :channels{one} GROUP BY channel, {key} "
        "LIMIT CASE WHEN (SELECT count(*) FROM h) < :limit "
        f"AND (SELECT count(*) FROM (SELECT 1 {oldest}) x) >= :window "
        f"THEN {_ALL} ELSE 0 END) f JOIN {table} t ON t.id = f.id "
        f"WHERE {_DUE[table].format(t='t.')}"
    )
    params: list[BindParameter[Any]] = [
        bindparam("channels", list(channels), expanding=True),
        bindparam("now", now, type_=UTCDateTime()),
        bindparam("window", WINDOW_IN_FLIGHT + WINDOW_PER_CLAIM * limit, type_=Integer()),
        bindparam("limit", limit, type_=Integer()),
        bindparam("offer", HEADS_PER_CLAIM * limit, type_=Integer()),
    ]
    if partition is not None:
        params.append(bindparam("partition", partition, type_=String()))
    return text(sql).bindparams(*params).columns(column("id"))


def claimable(
    dialect: str, table: str, heads: TextualSelect, now: datetime
) -> list[ColumnElement[bool]]:
    """The WHERE of a claim of `heads`. SQLite looks `id IN (heads)` up by id (told of a
    status, it read every due row). On PostgreSQL the ids are collected first (an InitPlan)
    and looked up by primary key, and the row's own due check (re-checked when a row is
    locked: a row another worker leased after the statement's snapshot, which the heads
    were read from) is a CASE, which no index can serve: planned on estimates, `IN` became
    a nested loop checking each of 99,000 due rows against the heads after statistics of
    a quiet table (3 s; 25 s with 10,000 waiting), and an indexable due check a scan of
    every due row (tests/bot/delivery/test_backlog.py, bench/claim.py)."""
    model = InboxUpdate if table == "inbox" else OutboxMessage
    if dialect != "postgresql":
        return [model.id.in_(heads)]
    return [
        model.id == any_(func.array(heads.scalar_subquery())),
        case((due_now(table, now), true())),
    ]


# what PostgreSQL refuses in text or JSON: NUL, and lone surrogates (a JSON escape such
# as \ud800 parses in Python); both become U+FFFD
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


# what json.dumps (ensure_ascii) writes for what `scrub` changes: NUL and lone surrogates
# as escapes, NaN and infinities as bare words (a false alarm, such as a customer's "NaN"
# or an escaped backslash before "u0000", only costs the walk)
_MAY_NEED_SCRUB = re.compile(r"\\u(?:0000|d[89a-f])|NaN|Infinity")


def scrub(value: Any) -> Any:
    """What PostgreSQL stores: unstorable characters replaced, NaN and infinities (which
    Python's JSON parser accepts) as null; the rest of the data kept. A payload with none
    of them is given back as it is: encoding it in C and searching the text costs less
    than half of walking it in Python (every webhook's payload, every touchpoint's)."""
    if isinstance(value, dict | list):
        try:
            encoded = json.dumps(value)
        except (TypeError, ValueError):  # not plain JSON data (a date, say): walked
            encoded = None
        if encoded is not None and _MAY_NEED_SCRUB.search(encoded) is None:
            return value
    return _scrub(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def by_channel(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """(channel, sorted distinct keys) per channel, channels sorted: one `IN` list each."""
    found: dict[str, set[str]] = {}
    for channel, key in pairs:
        found.setdefault(channel, set()).add(key)
    return [(channel, sorted(keys)) for channel, keys in sorted(found.items())]


async def inbound_exists(s: AsyncSession, channel: str, platform_message_id: str) -> bool:
    q = select(Touchpoint.id).where(
        Touchpoint.channel == channel,
        Touchpoint.platform_message_id == platform_message_id,
        Touchpoint.direction == INBOUND,
    )
    return (await s.execute(q.limit(1))).first() is not None


# A known customer writing in an open conversation (nearly every message): the dedupe check,
# the identity with its contact and the row-locked conversation in one statement. Built
# once, with bound parameters: its compiled form is cached, nothing is rebuilt per message.
_DUPLICATE = (
    select(Touchpoint.id)
    .where(
        Touchpoint.channel == bindparam("channel"),
        Touchpoint.platform_message_id == bindparam("message_id"),
        Touchpoint.direction == INBOUND,
    )
    .exists()
)
_TURN_ROWS = (
    select(Identity, Contact, Conversation, _DUPLICATE.label("duplicate"))
    .join(Contact, Contact.id == Identity.contact_id)
    .join(
        Conversation,
        (Conversation.channel == Identity.channel)
        & (Conversation.thread_key == bindparam("thread_key"))
        & (Conversation.status != CLOSED),
    )
    .where(Identity.channel == bindparam("channel"), Identity.external_id == bindparam("sender"))
    .with_for_update(of=Conversation)
    .execution_options(populate_existing=True)
)


async def turn_rows(
    s: AsyncSession, channel: str, sender_id: str, thread_key: str, platform_message_id: str
) -> tuple[bool, Identity, Conversation] | None:
    """(duplicate, identity, open conversation row-locked and freshly read, as
    `open_conversation_locked` reads it) in one statement; the identity's contact is loaded
    with it (`s.get(Contact, ...)` answers from the session). None when the sender has no
    identity or the thread no open conversation: then the step by step way."""
    params = {
        "channel": channel,
        "sender": sender_id,
        "thread_key": thread_key,
        "message_id": platform_message_id,
    }
    row = (await s.execute(_TURN_ROWS, params)).first()
    if row is None:
        return None
    s.info.setdefault("kept", []).append(row[1])  # the identity map holds objects weakly
    return bool(row[3]), row[0], row[2]


# the tables of the Core statements below (one name each)
_IDENTITIES: Table = Identity.__table__  # type: ignore[assignment]
_CONTACTS: Table = Contact.__table__  # type: ignore[assignment]
_CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]
_TOUCHPOINT_TABLE: Table = Touchpoint.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class TurnRow:
    """What `turn_row` reads: plain values, no ORM objects (the order is the SELECT's)."""

    duplicate: bool
    identity_id: int
    contact_id: int
    external_id: str
    display_name: str | None
    reachable: bool
    unreachable_reason: str | None
    name: str | None
    locale: str | None
    value_segment: str | None
    lifecycle_phase: str
    timezone: str | None
    conversation_id: int
    status: str
    flow_state: dict[str, Any] | None


# `_TURN_ROWS` in Core: table columns only, so that the session neither builds ORM objects
# nor refreshes its identity map (the ORM's loading was a tenth of a turn's CPU)
_TURN_ROW = (
    select(
        select(_TOUCHPOINT_TABLE.c.id)
        .where(
            _TOUCHPOINT_TABLE.c.channel == bindparam("channel"),
            _TOUCHPOINT_TABLE.c.platform_message_id == bindparam("message_id"),
            _TOUCHPOINT_TABLE.c.direction == INBOUND,
        )
        .exists()
        .label("duplicate"),
        _IDENTITIES.c.id,
        _IDENTITIES.c.contact_id,
        _IDENTITIES.c.external_id,
        _IDENTITIES.c.display_name,
        _IDENTITIES.c.reachable,
        _IDENTITIES.c.unreachable_reason,
        _CONTACTS.c.name,
        _CONTACTS.c.locale,
        _CONTACTS.c.value_segment,
        _CONTACTS.c.lifecycle_phase,
        _CONTACTS.c.timezone,
        _CONVERSATIONS.c.id,
        _CONVERSATIONS.c.status,
        _CONVERSATIONS.c.flow_state,
    )
    .join_from(_IDENTITIES, _CONTACTS, _CONTACTS.c.id == _IDENTITIES.c.contact_id)
    .join(
        _CONVERSATIONS,
        (_CONVERSATIONS.c.channel == _IDENTITIES.c.channel)
        & (_CONVERSATIONS.c.thread_key == bindparam("thread_key"))
        & (_CONVERSATIONS.c.status != CLOSED),
    )
    .where(
        _IDENTITIES.c.channel == bindparam("channel"),
        _IDENTITIES.c.external_id == bindparam("sender"),
    )
    .with_for_update(of=_CONVERSATIONS)
)


# `_TURN_ROW` for many messages at once (PostgreSQL): their keys as arrays, unnested
_KEYS = (
    func.unnest(
        bindparam("k_channels", type_=ARRAY(String)),
        bindparam("k_senders", type_=ARRAY(String)),
        bindparam("k_threads", type_=ARRAY(String)),
        bindparam("k_mids", type_=ARRAY(String)),
        bindparam("k_ns", type_=ARRAY(Integer)),
    )
    .table_valued(
        column("channel", String),
        column("sender", String),
        column("thread", String),
        column("mid", String),
        column("n", Integer),
    )
    .render_derived(name="k")
)
# each key's open conversation, looked up by its channel and thread: a lateral subquery
# kept apart from the join (OFFSET 0), so that both are its index's bounds. Joined on the
# identity's channel, PostgreSQL bounded the index by the channel alone and filtered the
# thread (its estimates tie when the table was never analysed, as in a new database or
# with autovacuum off): every open conversation read for each key, 3.6 ms of server time
# for a group of 25 among 205 chats, growing with the chats (tests/storage/test_queries.py)
_THREADS = _CONVERSATIONS.alias("c")
_OPEN = (
    select(_THREADS.c.id)
    .where(
        _THREADS.c.channel == _KEYS.c.channel,
        _THREADS.c.thread_key == _KEYS.c.thread,
        _THREADS.c.status != CLOSED,
    )
    .offset(literal_column("0"))  # kept apart: not flattened into the join
    .lateral("open")
)
_TURN_ROWS_MANY = (
    select(
        _KEYS.c.n,
        select(_TOUCHPOINT_TABLE.c.id)
        .where(
            _TOUCHPOINT_TABLE.c.channel == _KEYS.c.channel,
            _TOUCHPOINT_TABLE.c.platform_message_id == _KEYS.c.mid,
            _TOUCHPOINT_TABLE.c.direction == INBOUND,
        )
        .exists()
        .label("duplicate"),
        *list(_TURN_ROW.selected_columns)[1:],
    )
    .select_from(_KEYS)
    .join(
        _IDENTITIES,
        (_IDENTITIES.c.channel == _KEYS.c.channel) & (_IDENTITIES.c.external_id == _KEYS.c.sender),
    )
    .join(_CONTACTS, _CONTACTS.c.id == _IDENTITIES.c.contact_id)
    .join(_OPEN, true())
    .join(_CONVERSATIONS, (_CONVERSATIONS.c.id == _OPEN.c.id) & (_CONVERSATIONS.c.status != CLOSED))
    .order_by(_CONVERSATIONS.c.id)  # the rows locked in one order, as every caller does
    .with_for_update(of=_CONVERSATIONS)
)
_PREFETCHED = "prefetched_turn_rows"  # session.info: what turn_row answers without a read

TurnKey = tuple[str, str, str, str]  # channel, sender, thread key, platform message id


async def prefetch_turn_rows(s: AsyncSession, keys: Sequence[TurnKey]) -> None:
    """`turn_row` for many messages (the group commit of bot/delivery/inbox.py, one message
    per chat), each answer kept for the first `turn_row` that asks for it: on PostgreSQL
    in one statement; on SQLite, whose inline statements cost microseconds, and for one
    key, one by one, as `turn_row` would read them. A key with no row is kept as None (a
    new customer or conversation). Only for messages whose chats nothing in the
    transaction has touched yet: the rows are read now."""
    if not keys:
        return
    if len(keys) == 1 or s.get_bind().dialect.name != "postgresql":
        read = {key: await _read_turn_row(s, key) for key in keys}
        s.info.setdefault(_PREFETCHED, {}).update(read)
        return
    params = {
        "k_channels": [k[0] for k in keys],
        "k_senders": [k[1] for k in keys],
        "k_threads": [k[2] for k in keys],
        "k_mids": [k[3] for k in keys],
        "k_ns": list(range(len(keys))),
    }
    found: dict[TurnKey, TurnRow | None] = dict.fromkeys(keys)
    for n, *values in await s.execute(_TURN_ROWS_MANY, params):
        if found[keys[n]] is None:  # the first, as turn_row's .first()
            found[keys[n]] = TurnRow(*values)
    s.info.setdefault(_PREFETCHED, {}).update(found)


def prefetched(s: AsyncSession, rows: Mapping[TurnKey, TurnRow]) -> None:
    """Rows known without a read (the customers a group just made) kept for `turn_row`, as
    `prefetch_turn_rows` keeps what it reads."""
    s.info.setdefault(_PREFETCHED, {}).update(rows)


def prefetched_unknown(s: AsyncSession, keys: Sequence[TurnKey]) -> list[TurnKey]:
    """The keys `prefetch_turn_rows` read no row for (a new customer or conversation)."""
    prefetched: dict[TurnKey, TurnRow | None] = s.info.get(_PREFETCHED) or {}
    return [k for k in keys if k in prefetched and prefetched[k] is None]


async def turn_row(
    s: AsyncSession, channel: str, sender_id: str, thread_key: str, platform_message_id: str
) -> TurnRow | None:
    """`turn_rows` as plain values: the same statement (the conversation row-locked) in
    Core. What the session holds unflushed is flushed first (SQLAlchemy autoflushes before
    Core statements too), so the row is what the ORM would read; ORM objects of these rows
    the session holds are not refreshed (`turn_rows` refreshes them). Answered from
    `prefetch_turn_rows` once, if it read the row."""
    prefetched: dict[TurnKey, TurnRow | None] | None = s.info.get(_PREFETCHED)
    if prefetched:
        key = (channel, sender_id, thread_key, platform_message_id)
        if key in prefetched:
            return prefetched.pop(key)
    return await _read_turn_row(s, (channel, sender_id, thread_key, platform_message_id))


async def _read_turn_row(s: AsyncSession, key: TurnKey) -> TurnRow | None:
    channel, sender_id, thread_key, platform_message_id = key
    params = {
        "channel": channel,
        "sender": sender_id,
        "thread_key": thread_key,
        "message_id": platform_message_id,
    }
    row = (await s.execute(_TURN_ROW, params)).first()
    return None if row is None else TurnRow(*row)


_SET_FLOW_STATE = (
    update(_CONVERSATIONS)
    .where(_CONVERSATIONS.c.id == bindparam("b_id"))
    .values(flow_state=bindparam("b_state"), updated_at=bindparam("b_now"))
)


_FLOW_STATES = "deferred_flow_states"  # session.info: the states flush_deferred writes


async def set_flow_state(s: AsyncSession, conversation_id: int, state: Mapping[str, Any]) -> None:
    """A conversation's new flow state, as the ORM writes it (updated_at: now), in one
    UPDATE whose compilation is cached; kept for `flush_deferred` after `defer_group`."""
    params = {"b_id": conversation_id, "b_state": state, "b_now": utcnow()}
    deferred: dict[int, dict[str, Any]] | None = s.info.get(_FLOW_STATES)
    if deferred is None:
        await s.execute(_SET_FLOW_STATE, params)
    else:
        deferred[conversation_id] = params


async def get_identity(s: AsyncSession, channel: str, external_id: str) -> Identity | None:
    """The identity, its contact loaded with it (one statement: `s.get(Contact, ...)` after
    it is answered from the session, as the engine does for every message)."""
    q = (
        select(Identity, Contact)
        .join(Contact, Contact.id == Identity.contact_id)
        .where(Identity.channel == channel, Identity.external_id == external_id)
    )
    row = (await s.execute(q)).first()
    if row is None:
        return None
    # the session's identity map holds objects weakly: kept alive here for the session's life
    s.info.setdefault("kept", []).append(row[1])
    identity: Identity = row[0]
    return identity


async def create_contact_with_identity(
    s: AsyncSession,
    channel: str,
    external_id: str,
    *,
    name: str | None,
    locale: str,
    source: str | None = None,
) -> Identity:
    contact = Contact(name=scrub(name), locale=locale, source=scrub(source), attributes={})
    s.add(contact)
    await s.flush()
    identity = Identity(
        contact_id=contact.id, channel=channel, external_id=external_id, display_name=scrub(name)
    )
    s.add(identity)
    await s.flush()  # a concurrent creator makes this raise IntegrityError; callers retry
    # the identity map holds objects weakly: kept, so `s.get(Contact, ...)` needs no SELECT
    s.info.setdefault("kept", []).append(contact)
    return identity


async def open_conversation_locked(
    s: AsyncSession, channel: str, thread_key: str
) -> Conversation | None:
    """The open conversation of a thread, row-locked (PostgreSQL) and freshly read."""
    q = (
        select(Conversation)
        .where(
            Conversation.channel == channel,
            Conversation.thread_key == thread_key,
            Conversation.status != CLOSED,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await s.execute(q)).scalar_one_or_none()


async def create_conversation(
    s: AsyncSession, contact_id: int, identity_id: int, channel: str, thread_key: str
) -> Conversation:
    conv = Conversation(
        contact_id=contact_id,
        identity_id=identity_id,
        channel=channel,
        thread_key=thread_key,
        status=ConversationStatus.BOT,
        flow_state={},
    )
    s.add(conv)
    await s.flush()
    return conv


_SEEN = "deferred_seen"  # session.info: the seen marks a group commit writes at its end
_IDENTITY_SEEN = (
    update(_IDENTITIES)
    .where(_IDENTITIES.c.id == bindparam("identity_id"))
    .values(last_seen_at=bindparam("now"))
)
_CONTACT_SEEN = (
    update(_CONTACTS)
    .where(_CONTACTS.c.id == bindparam("contact_id"))
    .values(last_contact_at=bindparam("now"), updated_at=bindparam("updated"))
)


def defer_seen(s: AsyncSession) -> list[tuple[int, int, datetime]]:
    """From now on in `s`, a message's sender is marked seen (identity.last_seen_at,
    contact.last_contact_at) by `mark_seen`, for all senders at once, instead of by two
    UPDATEs per message. The list (identity id, contact id, when) is the caller's to trim
    when a savepoint rolls back."""
    seen: list[tuple[int, int, datetime]] = s.info.setdefault(_SEEN, [])
    return seen


def deferred_seen(s: AsyncSession) -> list[tuple[int, int, datetime]] | None:
    """The list `defer_seen` made for `s`, or None: mark the sender seen on the rows."""
    return s.info.get(_SEEN)


def latest_seen(
    seen: Sequence[tuple[int, int, datetime]],
) -> tuple[dict[int, datetime], dict[int, datetime]]:
    """The latest seen mark of each identity and of each contact, from `defer_seen`'s list."""
    return {i: now for i, _, now in seen}, {c: now for _, c, now in seen}


async def mark_seen(
    s: AsyncSession,
    seen: Sequence[tuple[int, int, datetime]],
    *,
    updated_at: datetime | None = None,
) -> None:
    """The deferred seen marks: one executemany per table (the latest mark per row).
    `updated_at`: the contacts' (default: the mark's time)."""
    identities, contacts = latest_seen(seen)
    if identities:
        await s.execute(
            _IDENTITY_SEEN, [{"identity_id": i, "now": t} for i, t in identities.items()]
        )
    if contacts:
        await s.execute(
            _CONTACT_SEEN,
            [{"contact_id": c, "now": t, "updated": updated_at or t} for c, t in contacts.items()],
        )


def add_touchpoint(
    s: AsyncSession,
    *,
    contact_id: int,
    conversation_id: int | None,
    channel: str,
    direction: Direction,
    kind: str,
    actor: str,
    text: str | None = None,
    payload: dict[str, Any] | None = None,
    platform_message_id: str | None = None,
    outbox_id: int | None = None,
    created_at: datetime | None = None,
) -> dict[str, Any] | None:
    """A touchpoint of the contact's history; `created_at` for one dated in the past (an
    import, a test), else now. Its values when they are kept for `flush_touchpoints`."""
    values = {
        "contact_id": contact_id,
        "conversation_id": conversation_id,
        "channel": channel,
        "direction": direction,
        "kind": kind,
        "actor": actor,
        "text": scrub(text),
        "payload": scrub(payload or {}),
        "platform_message_id": scrub(platform_message_id),
        "outbox_id": outbox_id,
        "created_at": created_at or utcnow(),
    }
    deferred = s.info.get(_TOUCHPOINTS)
    if deferred is None:
        s.add(Touchpoint(**values))
    else:  # written by flush_touchpoints, with the others of the turn (see defer_touchpoints)
        deferred.append(values)  # no ORM object: the hot path needs only the row
        return values
    return None


_TOUCHPOINTS = "deferred_touchpoints"  # session.info: rows flush_touchpoints writes


def defer_touchpoints(s: AsyncSession) -> None:
    """From now on in `s`, `add_touchpoint` keeps its rows for `flush_touchpoints`, which
    writes them in one executemany INSERT. The ORM wrote a turn's touchpoints one INSERT
    each on SQLite (RETURNING the ids in order is not batched there), and nobody needs
    their ids: the object `add_touchpoint` returns is then not in the session and has no
    id. The caller flushes before the transaction (or its savepoint) ends, and before
    anything reads touchpoints in it (Engine.notify_observers does)."""
    s.info.setdefault(_TOUCHPOINTS, [])


async def flush_touchpoints(s: AsyncSession) -> None:
    """Write the touchpoints `defer_touchpoints` kept (no-op otherwise), after the outbox
    rows `enqueue_later` kept (the replies' touchpoints carry their ids)."""
    await _flush_outbox(s)
    rows = s.info.get(_TOUCHPOINTS)
    if rows:
        batch = rows[:]
        rows.clear()
        await s.execute(insert(_TOUCHPOINT_TABLE), batch)


def drop_touchpoints(s: AsyncSession) -> None:
    """Forget the kept touchpoints (their savepoint rolled back)."""
    rows = s.info.get(_TOUCHPOINTS)
    if rows:
        rows.clear()


def defer_writes(s: AsyncSession) -> None:
    """From now on in `s`, the touchpoints (`defer_touchpoints`), the flow states
    `set_flow_state` writes and the case rows `insert_case` makes on PostgreSQL are kept
    for the group's end (storage/group_end.py, which writes them with the done marks on
    PostgreSQL), the replies still written at once: a group of one row, whose turn writes
    nothing else that it reads again."""
    defer_touchpoints(s)
    s.info.setdefault(_FLOW_STATES, {})
    s.info.setdefault(_CASES_LATER, [])


@dataclass
class Deferred:
    """What a group's turns kept for its end (`take_deferred`)."""

    touchpoints: list[dict[str, Any]]  # Touchpoint rows
    states: list[dict[str, Any]]  # _SET_FLOW_STATE's parameters
    cases: list[dict[str, Any]]  # Case rows, CASE_COLUMNS each (PostgreSQL)

    def __bool__(self) -> bool:
        return bool(self.touchpoints or self.states or self.cases)


async def take_deferred(s: AsyncSession) -> Deferred:
    """The replies `enqueue_later` kept are written (the touchpoints carry their ids); the
    kept touchpoints' values, flow states' parameters (in conversation id order: the rows
    are locked already, but a stable order keeps PostgreSQL's executemany deterministic)
    and case rows are handed to the caller to write, and forgotten here."""
    await _flush_outbox(s)
    states: dict[int, dict[str, Any]] | None = s.info.get(_FLOW_STATES)
    taken = Deferred(
        touchpoints=_take(s.info.get(_TOUCHPOINTS)),
        states=[states[k] for k in sorted(states)] if states else [],
        cases=_take(s.info.get(_CASES_LATER)),
    )
    if states:
        states.clear()
    return taken


def _take(kept: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if not kept:
        return []
    taken = kept[:]
    kept.clear()
    return taken


def defer_group(s: AsyncSession) -> None:
    """A group commit without savepoints (bot/delivery/inbox.py): from now on in `s`, the
    touchpoints (`defer_touchpoints`), the flow states `set_flow_state` writes and the
    replies `enqueue_later` queues are kept for `flush_deferred`, which writes all of the
    group's turns' rows in one statement per table (the replies in two): four statements
    per group, not three or more per message. Nothing in a turn reads another
    conversation's flow state; the caller flushes before a second message of a chat (its
    turn reads its conversation's row and dedupes on the touchpoints)."""
    defer_writes(s)
    s.info.setdefault(_OUTBOX_LATER, [])


async def flush_deferred(s: AsyncSession) -> None:
    """Write what `defer_group` kept (the touchpoints only after `defer_touchpoints`):
    the replies, then one statement per table."""
    taken = await take_deferred(s)
    if taken.cases:
        await s.execute(insert(_CASES), taken.cases)
    if taken.touchpoints:
        await s.execute(insert(_TOUCHPOINT_TABLE), taken.touchpoints)
    if taken.states:
        await s.execute(_SET_FLOW_STATE, taken.states)


# an outbox body's text to keep once the message is sent (bot/conversation/linking.py's code
# mail; the dispatcher swaps it in, bot/delivery/dispatcher.py)
MASKED_TEXT = "masked_text"


def masked(body: Mapping[str, Any]) -> dict[str, Any]:
    """An outbox body with its masked text in place of the text (see MASKED_TEXT)."""
    kept = {k: v for k, v in body.items() if k != MASKED_TEXT}
    return {**kept, "text": body[MASKED_TEXT]}


_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[assignment]
_ENQUEUE = insert(_OUTBOX).returning(_OUTBOX.c.id)  # built once; the values are parameters


def unfinished_exists(table: Table, key: str, channel: Any, value: Any) -> Exists:
    """EXISTS an unfinished row (inbox: pending or processing; outbox: pending or sending)
    of this partition (`key`: partition_key or recipient_id): read from the partial index
    of unfinished rows (its condition as literals, see INBOX_UNFINISHED)."""
    statuses = INBOX_UNFINISHED if table.name == "inbox" else OUTBOX_UNFINISHED
    return exists().where(
        table.c.channel == channel, table.c[key] == value, table.c.status.in_(statuses)
    )


# an outbox row born leased to the dispatcher (`OutboxBirth`) unless its recipient already
# has an unsent row (then pending, as `_ENQUEUE`: the dispatcher's claim keeps the order)
_BUSY = unfinished_exists(_OUTBOX, "recipient_id", bindparam("b_channel"), bindparam("b_recipient"))
_BORN_VALUES = {
    "status": case((_BUSY, OutboxStatus.PENDING.value), else_=OutboxStatus.SENDING.value),
    "attempts": case((_BUSY, 0), else_=1),
    "leased_by": case((_BUSY, None), else_=bindparam("b_owner", type_=_OUTBOX.c.leased_by.type)),
    "leased_until": case(
        (_BUSY, None), else_=bindparam("b_until", type_=_OUTBOX.c.leased_until.type)
    ),
}
_ENQUEUE_BORN = insert(_OUTBOX).values(_BORN_VALUES).returning(_OUTBOX.c.id, _OUTBOX.c.status)
_BIRTH = "outbox_birth"  # session.info: the OutboxBirth of this transaction


@dataclass
class OutboxBirth:
    """Outbox rows born leased to a dispatcher (bot/delivery/dispatcher.py) by `enqueue` in
    one transaction (the inbox's group commit), handed to it in memory after the commit:
    no claim transaction. A row is born leased only while `slots` last and only when its
    recipient has no unsent row already (or only rows born leased in this transaction, sent
    in order after it); otherwise it is pending, for the dispatcher's claim."""

    owner: str  # the lease's holder (the boot id)
    until: datetime  # the lease's end
    slots: int  # rows that may still be born leased
    born: list[dict[str, Any]] = field(default_factory=list)  # their columns, with id
    pending: int = 0  # rows queued pending instead (the dispatcher must claim them)
    recipients: set[tuple[str, str]] = field(default_factory=set)  # of born rows

    def mark(self) -> tuple[int, int]:
        """Where a savepoint begins (see `rollback`)."""
        return len(self.born), self.pending

    def rollback(self, mark: tuple[int, int]) -> None:
        """Forget the rows written after `mark` (their savepoint rolled back)."""
        self.slots += len(self.born) - mark[0]
        del self.born[mark[0] :]
        self.pending = mark[1]
        self.recipients = {(r["channel"], r["recipient_id"]) for r in self.born}


def lease_at_birth(s: AsyncSession, birth: OutboxBirth | None) -> None:
    """From now on in this session's transaction, `enqueue` writes its rows as `birth` says
    (None: pending, as without it)."""
    if birth is None:
        s.info.pop(_BIRTH, None)
    else:
        s.info[_BIRTH] = birth


def _outbox_values(
    channel: str,
    recipient_id: str,
    thread_key: str,
    body: dict[str, Any],
    conversation_id: int | None,
    identity_id: int | None,
) -> dict[str, Any]:
    """A new outbox row's columns, but its status and lease (due now)."""
    now = utcnow()
    return {
        "channel": channel,
        "recipient_id": recipient_id,
        "thread_key": thread_key,
        "body": scrub(body),
        "conversation_id": conversation_id,
        "identity_id": identity_id,
        "next_attempt_at": now,
        "created_at": now,
    }


async def enqueue(
    s: AsyncSession,
    *,
    channel: str,
    recipient_id: str,
    thread_key: str,
    body: dict[str, Any],
    conversation_id: int | None,
    identity_id: int | None,
) -> int:
    """A pending outbox row, as one INSERT ... RETURNING id without flushing the session
    first (what the session holds is written at its next flush: a turn's touchpoints then
    go in one multi-row INSERT). The conversation and identity rows must exist already.
    Inside `lease_at_birth`, the row may be born leased instead (`OutboxBirth`)."""
    params = _outbox_values(channel, recipient_id, thread_key, body, conversation_id, identity_id)
    birth: OutboxBirth | None = s.info.get(_BIRTH)
    with s.no_autoflush:
        if birth is None or birth.slots <= 0:
            params |= {"status": OutboxStatus.PENDING, "attempts": 0}
            if birth is not None:
                birth.pending += 1  # for the dispatcher's claim: it must be woken
            return int((await s.execute(_ENQUEUE, params)).scalar_one())
        key = (channel, recipient_id)
        if key in birth.recipients:  # behind a row born leased in this transaction
            leased = {
                "status": OutboxStatus.SENDING.value,
                "attempts": 1,
                "leased_by": birth.owner,
                "leased_until": birth.until,
            }
            row_id = int((await s.execute(_ENQUEUE, params | leased)).scalar_one())
            status = OutboxStatus.SENDING.value
        else:
            binds = {
                "b_channel": channel,
                "b_recipient": recipient_id,
                "b_owner": birth.owner,
                "b_until": birth.until,
            }
            row_id, status = (await s.execute(_ENQUEUE_BORN, params | binds)).one()
            row_id = int(row_id)
    if status != OutboxStatus.SENDING:
        birth.pending += 1
        return row_id
    birth.slots -= 1
    birth.recipients.add(key)
    birth.born.append(
        params
        | {
            "id": row_id,
            "status": OutboxStatus.SENDING.value,
            "attempts": 1,
            "leased_by": birth.owner,
            "leased_until": birth.until,
        }
    )
    return row_id


_OUTBOX_LATER = "deferred_outbox"  # session.info: the rows enqueue_later keeps


@dataclass
class _Later:
    params: dict[str, Any]  # enqueue's columns
    ids: list[int]  # the row's id is appended here once it is written
    touchpoint: dict[str, Any] | None = None  # its outbox_id is filled in then


def outbox_deferred(s: AsyncSession) -> bool:
    """Whether `enqueue_later` may keep rows in `s` (inside `defer_group`)."""
    return _OUTBOX_LATER in s.info


def enqueue_later(
    s: AsyncSession,
    *,
    channel: str,
    recipient_id: str,
    thread_key: str,
    body: dict[str, Any],
    conversation_id: int | None,
    identity_id: int | None,
    ids: list[int],
) -> _Later:
    """`enqueue`, written at `flush_touchpoints` (inside `defer_group`) with the group's
    other replies: the id is appended to `ids` then, and set on the touchpoint the caller
    attaches to the returned record. Born leased as `enqueue` would have it, row by row in
    the order queued."""
    params = _outbox_values(channel, recipient_id, thread_key, body, conversation_id, identity_id)
    later = _Later(params, ids)
    s.info[_OUTBOX_LATER].append(later)
    return later


# which of these recipients have an unsent row (the partial index of unsent rows)
_BUSY_MANY = (
    select(_OUTBOX.c.channel, _OUTBOX.c.recipient_id)
    .where(
        tuple_(_OUTBOX.c.channel, _OUTBOX.c.recipient_id).in_(bindparam("keys", expanding=True)),
        _OUTBOX.c.status.in_(OUTBOX_UNFINISHED),
    )
    .distinct()
)
# PostgreSQL: the ids in the parameters' order (SQLAlchemy's insertmanyvalues sorts them).
# SQLite would run that one row at a time (its id column is a variant type, no sentinel):
# there the rows are written in order under the transaction's write lock (the only writer),
# so their ids ascend in the parameters' order
_ENQUEUE_MANY = {
    "postgresql": insert(_OUTBOX).returning(_OUTBOX.c.id, sort_by_parameter_order=True),
    "sqlite": insert(_OUTBOX).returning(_OUTBOX.c.id),
}


async def _flush_outbox(s: AsyncSession) -> None:
    """Write the rows `enqueue_later` kept: which recipients are busy in one SELECT, then
    one multi-row INSERT (each row born leased or pending as `enqueue` decides it)."""
    later: list[_Later] | None = s.info.get(_OUTBOX_LATER)
    if not later:
        return
    rows = later[:]
    later.clear()
    birth: OutboxBirth | None = s.info.get(_BIRTH)
    busy: set[tuple[str, str]] = set()
    if birth is not None and birth.slots > 0:
        keys = {(r.params["channel"], r.params["recipient_id"]) for r in rows}
        asked = sorted(keys - birth.recipients)
        if asked:
            found = await s.execute(_BUSY_MANY, {"keys": asked})
            busy = {(channel, recipient) for channel, recipient in found}
    values: list[dict[str, Any]] = []
    for r in rows:
        key = (r.params["channel"], r.params["recipient_id"])
        leased = (
            birth is not None and birth.slots > 0 and (key in birth.recipients or key not in busy)
        )
        if leased:
            assert birth is not None
            birth.slots -= 1
            birth.recipients.add(key)
            values.append(
                r.params
                | {
                    "status": OutboxStatus.SENDING.value,
                    "attempts": 1,
                    "leased_by": birth.owner,
                    "leased_until": birth.until,
                }
            )
        else:
            if birth is not None:
                birth.pending += 1  # for the dispatcher's claim: it must be woken
            values.append(
                r.params
                | {
                    "status": OutboxStatus.PENDING.value,
                    "attempts": 0,
                    "leased_by": None,
                    "leased_until": None,
                }
            )
    dialect = s.get_bind().dialect.name
    with s.no_autoflush:
        ids = [int(i) for i in (await s.execute(_ENQUEUE_MANY[dialect], values)).scalars()]
    if dialect == "sqlite":
        ids.sort()
    for r, row_id, v in zip(rows, ids, values, strict=True):
        r.ids.append(row_id)
        if r.touchpoint is not None:
            r.touchpoint["outbox_id"] = row_id
        if birth is not None and v["status"] == OutboxStatus.SENDING.value:
            birth.born.append(v | {"id": row_id})


async def create_case(s: AsyncSession, case: Case) -> Case:
    """Insert a case and give it its reference C-YYYY-NNNNNN from its id."""
    s.add(case)
    await s.flush()
    case.reference = f"C-{case.created_at.year}-{case.id:06d}"
    await s.flush()
    return case


_CASES: Table = Case.__table__  # type: ignore[assignment]
_NEW_CASE = insert(_CASES).returning(_CASES.c.id)
_CASE_REFERENCE = (
    update(_CASES)
    .where(_CASES.c.id == bindparam("b_id"))
    .values(reference=bindparam("b_reference"), updated_at=bindparam("b_now"))
)

_CASES_LATER = "deferred_cases"  # session.info: the case rows the group's end writes
# the columns of a case row insert_case makes (the group's end writes them from arrays)
CASE_COLUMNS = (
    "id",
    "reference",
    "contact_id",
    "conversation_id",
    "category",
    "description",
    "order_reference",
    "severity",
    "desired_resolution",
    "status",
    "priority",
    "sla_due_at",
    "created_at",
    "updated_at",
)


async def insert_case(
    s: AsyncSession,
    *,
    contact_id: int,
    conversation_id: int | None,
    category: str,
    description: str,
    order_reference: str | None,
    severity: str,
    desired_resolution: str | None,
    priority: int,
    sla_due_at: datetime | None,
    created_at: datetime,
) -> str:
    """`create_case` in Core statements, no ORM object; the case's reference. On
    PostgreSQL the id is one drawn ahead (storage/case_ids.py) and the row, reference
    and all, is kept for the group's end where `defer_writes` is in force (else one
    INSERT); elsewhere two statements, as `create_case`: the row, then its reference."""
    values: dict[str, Any] = {
        "contact_id": contact_id,
        "conversation_id": conversation_id,
        "category": category,
        "description": description,
        "order_reference": order_reference,
        "severity": severity,
        "desired_resolution": desired_resolution,
        "status": CaseStatus.NEW.value,
        "priority": priority,
        "sla_due_at": sla_due_at,
        "created_at": created_at,
        "updated_at": created_at,
    }
    if s.get_bind().dialect.name == "postgresql":
        values["id"] = await case_ids.next_case_id(s)
        values["reference"] = f"C-{created_at.year}-{values['id']:06d}"
        later: list[dict[str, Any]] | None = s.info.get(_CASES_LATER)
        if later is None:
            await s.execute(insert(_CASES), values)
        else:
            later.append(values)
        return str(values["reference"])
    case_id = int((await s.execute(_NEW_CASE, values)).scalar_one())
    reference = f"C-{created_at.year}-{case_id:06d}"
    await s.execute(_CASE_REFERENCE, {"b_id": case_id, "b_reference": reference, "b_now": utcnow()})
    return reference


async def cases_of_contact(
    s: AsyncSession, contact_id: int, *, reference: str | None = None, open_only: bool = False
) -> Sequence[Case]:
    kept = s.info.get(_CASES_LATER)
    if kept:  # opened earlier in this group, kept for its end (`defer_writes`): read too
        await s.execute(insert(_CASES), _take(kept))
    q = select(Case).where(Case.contact_id == contact_id)
    if reference:
        q = q.where(Case.reference == reference)
    if open_only:
        q = q.where(Case.status.not_in([CaseStatus.RESOLVED, CaseStatus.CLOSED]))
    return (await s.execute(q.order_by(Case.id))).scalars().all()


async def list_cases(
    s: AsyncSession, status: str | None = None, limit: int = 100
) -> Sequence[Case]:
    q = select(Case)
    if status:
        q = q.where(Case.status == status)
    return (await s.execute(q.order_by(Case.id.desc()).limit(limit))).scalars().all()


async def find_contact(s: AsyncSession, ref: str) -> Contact | None:
    """REF is a contact id or `channel:external_id`."""
    if ref.isdigit():
        return await s.get(Contact, int(ref))
    channel, sep, external = ref.partition(":")
    if not sep:
        return None
    identity = await get_identity(s, channel, external)
    return await s.get(Contact, identity.contact_id) if identity else None


async def timeline(
    s: AsyncSession, contact_id: int, *, limit: int | None = None, newest_first: bool = False
) -> Sequence[Touchpoint]:
    order = Touchpoint.id.desc() if newest_first else Touchpoint.id
    q = select(Touchpoint).where(Touchpoint.contact_id == contact_id).order_by(order)
    if limit:
        q = q.limit(limit)
    return (await s.execute(q)).scalars().all()


async def identities_of(s: AsyncSession, contact_id: int) -> Sequence[Identity]:
    q = select(Identity).where(Identity.contact_id == contact_id).order_by(Identity.id)
    return (await s.execute(q)).scalars().all()


async def add_consent(
    s: AsyncSession,
    *,
    contact_id: int,
    purpose: str,
    channel: str | None,
    granted: bool,
    source: str,
    text_shown: str | None,
) -> Consent:
    row = Consent(
        contact_id=contact_id,
        purpose=purpose,
        channel=channel,
        granted=granted,
        source=source,
        text_shown=text_shown,
        created_at=utcnow(),
    )
    s.add(row)
    await s.flush()
    return row


async def consent_granted(s: AsyncSession, contact_id: int, purpose: str) -> bool:
    q = (
        select(Consent.granted)
        .where(Consent.contact_id == contact_id, Consent.purpose == purpose)
        .order_by(Consent.id.desc())
        .limit(1)
    )
    return bool((await s.execute(q)).scalar_one_or_none())


async def set_reachable(
    s: AsyncSession, identity_id: int, reachable: bool, reason: str | None
) -> None:
    await s.execute(
        update(Identity)
        .where(Identity.id == identity_id)
        .values(reachable=reachable, unreachable_reason=reason)
    )

"""The end of an inbox group commit (bot/delivery/inbox.py): what its turns kept for the
end, written in as few round trips as the database allows.

On PostgreSQL one statement from arrays (data-modifying CTEs run to completion whether
read or not): the turns' cases, touchpoints and flow states (`queries.defer_writes`), the rows'
done marks and the senders' seen marks (`queries.defer_seen`). As three statements they
were three of a lone message's seven round trips in its transaction (BEGIN, turn row,
reply, touchpoints, flow state, end, COMMIT), each a wait for the server and a turn of the
event loop. No table is written twice in it, so the CTEs cannot see each other's rows. The
replies are written before it (the touchpoints carry their ids). Elsewhere (SQLite) one
statement per table, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage import queries
from storage.db import json_text
from storage.models import InboxUpdate

_INBOX: Table = InboxUpdate.__table__  # type: ignore[assignment]
# Core, built once: the values are parameters
FINISHED = (
    update(_INBOX)
    .where(_INBOX.c.id == bindparam("row_id"))
    .values(
        status=bindparam("status"),
        error=bindparam("error"),
        leased_until=None,
        leased_by=None,
        processed_at=bindparam("processed_at"),
    )
)

# the arrays each in a subquery: the server keeps one generic plan for the statement
# rather than planning anew for every group's array lengths
_END_PG = text(
    """
    WITH cases_made AS (
        INSERT INTO cases (id, reference, contact_id, conversation_id, category, description,
                           order_reference, severity, desired_resolution, status, priority,
                           sla_due_at, created_at, updated_at)
        SELECT * FROM unnest(
            (SELECT CAST(:case_id AS bigint[])), (SELECT CAST(:case_reference AS varchar[])),
            (SELECT CAST(:case_contact_id AS bigint[])),
            (SELECT CAST(:case_conversation_id AS bigint[])),
            (SELECT CAST(:case_category AS varchar[])),
            (SELECT CAST(:case_description AS text[])),
            (SELECT CAST(:case_order_reference AS varchar[])),
            (SELECT CAST(:case_severity AS varchar[])),
            (SELECT CAST(:case_desired_resolution AS varchar[])),
            (SELECT CAST(:case_status AS varchar[])), (SELECT CAST(:case_priority AS integer[])),
            (SELECT CAST(:case_sla_due_at AS timestamptz[])),
            (SELECT CAST(:case_created_at AS timestamptz[])),
            (SELECT CAST(:case_updated_at AS timestamptz[]))
        )
    ), written AS (
        INSERT INTO touchpoints (contact_id, conversation_id, channel, direction, kind, text,
                                 payload, actor, platform_message_id, outbox_id, created_at)
        SELECT * FROM unnest(
            (SELECT CAST(:tp_contact AS bigint[])), (SELECT CAST(:tp_conversation AS bigint[])),
            (SELECT CAST(:tp_channel AS varchar[])), (SELECT CAST(:tp_direction AS varchar[])),
            (SELECT CAST(:tp_kind AS varchar[])), (SELECT CAST(:tp_text AS text[])),
            (SELECT CAST(:tp_payload AS jsonb[])), (SELECT CAST(:tp_actor AS varchar[])),
            (SELECT CAST(:tp_platform AS varchar[])), (SELECT CAST(:tp_outbox AS bigint[])),
            (SELECT CAST(:tp_created AS timestamptz[]))
        )
    ), states AS (
        UPDATE conversations SET flow_state = f.state, updated_at = f.at
        FROM unnest(
            (SELECT CAST(:fs_ids AS bigint[])), (SELECT CAST(:fs_states AS jsonb[])),
            (SELECT CAST(:fs_at AS timestamptz[]))
        ) AS f(id, state, at)
        WHERE conversations.id = f.id
    ), done AS (
        UPDATE inbox SET status = f.status, error = f.error, leased_until = NULL,
                         leased_by = NULL, processed_at = f.processed_at
        FROM unnest(
            (SELECT CAST(:row_ids AS bigint[])), (SELECT CAST(:statuses AS varchar[])),
            (SELECT CAST(:errors AS varchar[])), (SELECT CAST(:processed AS timestamptz[]))
        ) AS f(id, status, error, processed_at)
        WHERE inbox.id = f.id
    ), identities_seen AS (
        UPDATE identities SET last_seen_at = i.seen
        FROM unnest(
            (SELECT CAST(:identity_ids AS bigint[])), (SELECT CAST(:identity_seen AS timestamptz[]))
        ) AS i(id, seen)
        WHERE identities.id = i.id
    )
    UPDATE contacts SET last_contact_at = c.seen, updated_at = c.seen
    FROM unnest(
        (SELECT CAST(:contact_ids AS bigint[])), (SELECT CAST(:contact_seen AS timestamptz[]))
    ) AS c(id, seen)
    WHERE contacts.id = c.id
    """
)


async def end_group(
    s: AsyncSession, finished: list[dict[str, Any]], seen: Sequence[tuple[int, int, datetime]]
) -> None:
    """Write what the group's turns kept for its end (the replies first), its rows' done
    marks (`finished`: FINISHED's parameters) and its senders' seen marks."""
    # in id order, as the heartbeat's renewal locks the rows (bot/delivery/leases.py): in
    # the group's order (as its rows were parsed) the two could wait for each other
    finished = sorted(finished, key=lambda f: int(f["row_id"]))
    if s.get_bind().dialect.name != "postgresql":
        await queries.flush_deferred(s)
        if finished:
            await s.execute(FINISHED, finished)
        await queries.mark_seen(s, seen)
        return
    taken = await queries.take_deferred(s)
    if not (finished or seen or taken):
        return
    touchpoints, states, cases = taken.touchpoints, taken.states, taken.cases
    identities, contacts = queries.latest_seen(seen)
    await s.execute(
        _END_PG,
        {
            # one array per column, named after it (queries.CASE_COLUMNS)
            **{f"case_{column}": [c[column] for c in cases] for column in queries.CASE_COLUMNS},
            "tp_contact": [t["contact_id"] for t in touchpoints],
            "tp_conversation": [t["conversation_id"] for t in touchpoints],
            "tp_channel": [t["channel"] for t in touchpoints],
            "tp_direction": [str(t["direction"]) for t in touchpoints],
            "tp_kind": [t["kind"] for t in touchpoints],
            "tp_text": [t["text"] for t in touchpoints],
            "tp_payload": [json_text(t["payload"]) for t in touchpoints],
            "tp_actor": [t["actor"] for t in touchpoints],
            "tp_platform": [t["platform_message_id"] for t in touchpoints],
            "tp_outbox": [t["outbox_id"] for t in touchpoints],
            "tp_created": [t["created_at"] for t in touchpoints],
            "fs_ids": [p["b_id"] for p in states],
            "fs_states": [json_text(p["b_state"]) for p in states],
            "fs_at": [p["b_now"] for p in states],
            "row_ids": [f["row_id"] for f in finished],
            "statuses": [str(f["status"]) for f in finished],
            "errors": [f["error"] for f in finished],
            "processed": [f["processed_at"] for f in finished],
            "identity_ids": list(identities),
            "identity_seen": list(identities.values()),
            "contact_ids": list(contacts),
            "contact_seen": list(contacts.values()),
        },
    )

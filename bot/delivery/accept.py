"""The webhook's accept: one INSERT of many rows, deduped on the platform's update id, each
row born claimed (`processing`, leased to this process) if it is its chat's head and the
worker asked for it, else pending (bot/delivery/inbox.py's text: "Claimed at birth").

One statement whatever the batch's size, its text always the same: PostgreSQL prepares and
plans it once per connection, SQLite compiles it once; the rows go as arrays (PostgreSQL)
or as one JSON array (SQLite).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, TextClause, bindparam, text

from bot.delivery import flood
from bot.delivery.flood import SharedFloodControl, row_key
from storage.db import json_text
from storage.models import UTCDateTime

# PostgreSQL's accept: the rows as arrays, so the statement's text is the same whatever the
# batch's size: prepared once per connection, its plan kept. Rows as VALUES, one text per
# size, were parsed and planned again and again (their four EXISTS each): in a 200 x 10
# bench run 730 of the server's 2,000 ms of statements, a third of it planning at bind
# (log_min_duration_statement, outside bench/). Each array is read through a scalar
# subquery: given the arrays themselves, PostgreSQL sees their lengths, finds a custom plan
# cheaper than the generic one and plans again at every call (0.5 ms of its CPU per
# webhook, most of the accept's server time at light load; tests/bot/delivery/
# test_inbox.py). Rows are inserted in their order (ids ascending within a chat, as the
# worker's pick needs); the born check is computed once per row (the CTE is materialized;
# flattened, the four CASEs below would each probe the index again), as a scalar
# subquery: written NOT EXISTS, a plan made while the table was small (a new database, or
# never analysed) hashed every unfinished row once per statement, and the connection kept
# that plan: 26-37 ms per accept once 100,000 rows were pending, against
# ~1 ms (a script outside bench/; the rows it reads: tests/bot/delivery/test_inbox.py).
# A row that may be born claimed is admitted by the shared flood control here too (its
# sender's `flood_key`; NULL without one): admitted, it is born; over the rate, it is
# inserted pending, and its claim asks the flood control as any pending row's does. As a
# statement of its own, the admission was a fifth of the statements and transactions of
# bench/telegram.py's closed loop, and one round trip more on a lone message's way.
POSTGRESQL = text(  # built from constants only
    f"""
    WITH a AS MATERIALIZED (
        SELECT a.*, a.asked AND (
            SELECT u.id FROM inbox u
            WHERE u.channel = a.channel AND u.partition_key = a.partition_key
              AND u.status IN ('pending', 'processing')  -- ix_inbox_unfinished
            ORDER BY u.id LIMIT 1
        ) IS NULL AS head
        FROM unnest(
            (SELECT CAST(:channels AS varchar[])), (SELECT CAST(:dedupe_keys AS varchar[])),
            (SELECT CAST(:partitions AS varchar[])), (SELECT CAST(:payloads AS text[])),
            (SELECT CAST(:born AS boolean[])), (SELECT CAST(:flood_keys AS varchar[]))
        ) WITH ORDINALITY AS a(channel, dedupe_key, partition_key, payload, asked, flood_key, n)
    ), {flood.CLOCK},
    admitted AS ({
        flood.GCRA_UPSERT.format(
            key="a.flood_key", source="a", where="WHERE a.head AND a.flood_key IS NOT NULL"
        )
    })
    INSERT INTO inbox (channel, dedupe_key, partition_key, payload, status, attempts,
                       leased_until, leased_by, created_at)
    SELECT r.channel, r.dedupe_key, r.partition_key, CAST(r.payload AS jsonb),
           CASE WHEN r.born THEN 'processing' ELSE 'pending' END,
           CASE WHEN r.born THEN 1 ELSE 0 END,
           CASE WHEN r.born THEN CAST(:until AS timestamptz) END,
           CASE WHEN r.born THEN CAST(:owner AS varchar) END,
           CAST(:now AS timestamptz)
    FROM (
        SELECT a.*, a.head AND (
            a.flood_key IS NULL OR a.flood_key IN (SELECT key FROM admitted)
        ) AS born
        FROM a
    ) AS r
    ORDER BY r.n
    ON CONFLICT (channel, dedupe_key) DO NOTHING
    RETURNING id, channel, dedupe_key, status
    """  # noqa: S608
)


# SQLite's: the rows as one JSON array (orjson) read by json_each, so the statement's text
# never changes (sqlite3 keeps it compiled) and SQLAlchemy processes three parameters, not
# twenty per row; as one row each through insertmanyvalues (four EXISTS and twenty
# parameters a row, the text, and so SQLite's compilation, new for each batch size) the
# accept was about a tenth of the process's CPU in bench/telegram.py's profile. The born
# check is made once per row and for all rows before any is inserted (`r` materialized),
# so it sees the rows committed before, as the PostgreSQL one; a partition's later rows in the
# same batch are never asked to be born (`Inbox._born_candidates`). NOT EXISTS here: SQLite
# runs it as a search of the partial index by chat for each row (INDEXED BY pins the
# index; tests/bot/delivery/test_inbox.py reads the plan with 20,000 rows pending).
# `WHERE true`: SQLite's upsert after a SELECT needs a WHERE to parse.
SQLITE = text(  # built from constants only
    """
    WITH a AS MATERIALIZED (
        SELECT j.key AS n, json_extract(j.value, '$[0]') AS channel,
               json_extract(j.value, '$[1]') AS dedupe_key,
               json_extract(j.value, '$[2]') AS partition_key,
               json_extract(j.value, '$[3]') AS payload,
               json_extract(j.value, '$[4]') AS asked
        FROM json_each(:rows) AS j
    ), r AS MATERIALIZED (
        SELECT a.*, a.asked AND NOT EXISTS (
            SELECT 1 FROM inbox u INDEXED BY ix_inbox_unfinished
            WHERE u.channel = a.channel AND u.partition_key = a.partition_key
              AND u.status IN ('pending', 'processing')
        ) AS born
        FROM a
    )
    INSERT INTO inbox (channel, dedupe_key, partition_key, payload, status, attempts,
                       leased_until, leased_by, created_at)
    SELECT r.channel, r.dedupe_key, r.partition_key, r.payload,
           CASE WHEN r.born THEN 'processing' ELSE 'pending' END,
           CASE WHEN r.born THEN 1 ELSE 0 END,
           CASE WHEN r.born THEN :until END,
           CASE WHEN r.born THEN :owner END,
           :now
    FROM r WHERE true ORDER BY r.n
    ON CONFLICT (channel, dedupe_key) DO NOTHING
    RETURNING id, channel, dedupe_key, status
    """
).bindparams(
    bindparam("until", type_=UTCDateTime()),
    bindparam("now", type_=UTCDateTime()),
    bindparam("owner", type_=String()),
)


def statement(dialect: str) -> TextClause:
    return POSTGRESQL if dialect == "postgresql" else SQLITE


def params(
    dialect: str,
    rows: list[dict[str, Any]],
    born: list[bool],
    now: datetime,
    until: datetime,
    owner: str,
    shared: SharedFloodControl | None,
) -> dict[str, Any]:
    """The statement's parameters for `rows` (channel, dedupe_key, partition_key, payload)
    and which of them may be born claimed; `shared`: the flood control PostgreSQL's
    statement admits the born rows' senders with (None: admitted when processed)."""
    if dialect == "postgresql":
        keys = [row_key(r["channel"], r["partition_key"]) for r in rows]
        return {
            "channels": [r["channel"] for r in rows],
            "dedupe_keys": [r["dedupe_key"] for r in rows],
            "partitions": [r["partition_key"] for r in rows],
            "payloads": [json_text(r["payload"]) for r in rows],
            "born": born,
            # the senders the shared flood control admits as their rows are born
            "flood_keys": [
                flood.digest(k) if shared and k is not None and b else None
                for k, b in zip(keys, born, strict=True)
            ],
            "interval": shared.interval if shared else 0.0,
            "tolerance": shared.tolerance if shared else 0.0,
            "owner": owner,
            "until": until,
            "now": now,
        }
    return {
        "rows": json_text(
            [
                [r["channel"], r["dedupe_key"], r["partition_key"], json_text(r["payload"]), b]
                for r, b in zip(rows, born, strict=True)
            ]
        ),
        "owner": owner,
        "until": until,
        "now": now,
    }

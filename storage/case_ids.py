"""Case ids drawn ahead from the table's sequence on PostgreSQL, a block at a time.

A case's reference is made from its id (C-2026-000123) and goes into the reply of the turn
that opened it, so the id is needed in the middle of a group commit's turns. Drawn one at
a time it cost a round trip per case, inside the group: its turns run one after another,
and each wait for the server is a turn of the busy event loop for all of them (customers
who complained together confirm together: bench/telegram.py's confirming turn was the
slowest, p99 467-471 ms where the others had 280-440). Drawn in blocks, the ids are at hand,
and the case rows are written with the group's other rows at its end
(storage/group_end.py).

What it costs is what PostgreSQL's own sequence cache costs (CREATE SEQUENCE ... CACHE):
ids drawn and not used are skipped (up to a block's worth when a process stops, as ids of
a rolled back transaction always were), and two processes open their cases from different
blocks, so references are unique but not in the order the cases were opened across
workers. Ids are drawn per database engine (a process's pool of connections).
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

BLOCK = 16  # ids drawn at once: one round trip per sixteen cases, at most 15 skipped at a stop

_DRAW = select(func.nextval(func.pg_get_serial_sequence("cases", "id"))).select_from(
    func.generate_series(1, literal_column(str(BLOCK)))
)
_DRAWN: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()


async def next_case_id(s: AsyncSession) -> int:
    """The next case id for `s`'s database (PostgreSQL): from the ids drawn ahead, a new
    block first if none is left. Two callers finding none both draw: the ids are kept."""
    engine = s.get_bind().engine
    drawn = _DRAWN.setdefault(engine, [])
    if not drawn:
        drawn.extend(int(i) for i in (await s.execute(_DRAW)).scalars())
        drawn.sort(reverse=True)  # taken from the end: the smallest first
    return drawn.pop()


def forget(s: AsyncSession) -> None:
    """Drop the ids drawn for `s`'s database (after its sequence was reset: tests)."""
    _DRAWN.pop(s.get_bind().engine, None)

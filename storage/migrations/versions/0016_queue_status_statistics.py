"""no planner statistics on the inbox's and outbox's status (PostgreSQL): statistics taken
while nearly every row was done told the planner that the unfinished rows' partial indexes
were empty, and a claim planned on that belief ran for minutes once 100,000 rows were
pending (nested loops over those indexes): the claim of bot/delivery/inbox.py went from
0.03 s to over 20 s (tests/bot/delivery/test_backlog.py). A queue's status changes faster
than ANALYZE runs (autovacuum analyses after a tenth of the table changed: a backlog of
100,000 on an inbox of millions of done rows never triggers it), so the column is left
without statistics and the planner uses its default estimates, which keep the plans on the
indexes. Statistics already taken are dropped (a same-type ALTER ... TYPE removes them;
ANALYZE with a target of 0 keeps the old ones).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 09:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUES = ("inbox", "outbox")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite keeps no statistics unless told to (ANALYZE), and is told the indexes
    for table in QUEUES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN status SET STATISTICS 0")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN status TYPE varchar(16)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in QUEUES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN status SET STATISTICS -1")

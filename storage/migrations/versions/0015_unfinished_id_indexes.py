"""partial indexes of unfinished inbox and outbox rows by id: a claim reads the oldest
unfinished rows as a window instead of every partition's head (a cost that grew with the
number of waiting chats or recipients)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 12:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INBOX = sa.text("status IN ('pending', 'processing')")
OUTBOX = sa.text("status IN ('pending', 'sending')")


def upgrade() -> None:
    op.create_index(
        "ix_inbox_unfinished_id", "inbox", ["id"], postgresql_where=INBOX, sqlite_where=INBOX
    )
    op.create_index(
        "ix_outbox_unfinished_id", "outbox", ["id"], postgresql_where=OUTBOX, sqlite_where=OUTBOX
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_unfinished_id", table_name="outbox")
    op.drop_index("ix_inbox_unfinished_id", table_name="inbox")

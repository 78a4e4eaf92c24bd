"""partial indexes of unfinished inbox and outbox rows: the oldest unfinished row per chat
(the one a worker may claim) is found without reading the finished history

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INBOX = sa.text("status IN ('pending', 'processing')")
OUTBOX = sa.text("status IN ('pending', 'sending')")


def upgrade() -> None:
    op.create_index(
        "ix_inbox_unfinished",
        "inbox",
        ["channel", "partition_key", "id"],
        postgresql_where=INBOX,
        sqlite_where=INBOX,
    )
    op.create_index(
        "ix_outbox_unfinished",
        "outbox",
        ["channel", "recipient_id", "id"],
        postgresql_where=OUTBOX,
        sqlite_where=OUTBOX,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_unfinished", table_name="outbox")
    op.drop_index("ix_inbox_unfinished", table_name="inbox")

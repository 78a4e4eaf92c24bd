"""lease owner: the boot id of the process holding an inbox or outbox row

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("inbox", "outbox"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("leased_by", sa.String(length=32), nullable=True))


def downgrade() -> None:
    for table in ("outbox", "inbox"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("leased_by")

"""flood marks: the per-sender rate shared by the workers on PostgreSQL

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 23:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "flood_marks",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("tat", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_flood_marks")),
    )
    with op.batch_alter_table("flood_marks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_flood_marks_tat"), ["tat"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("flood_marks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_flood_marks_tat"))
    op.drop_table("flood_marks")

"""a thread's newest conversation by index: reopen after resolve read the whole table for
every new thread's first message

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 05:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_conversations_thread", "conversations", ["channel", "thread_key", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_conversations_thread", table_name="conversations")

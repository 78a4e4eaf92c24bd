"""agent card messages (erasure reaches Slack threads), identity link addresses (the
per-address cap on wrong codes and the lock)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "agent_card_messages",
        sa.Column("id", ID, nullable=False),
        sa.Column("card_id", ID, nullable=False),
        sa.Column("message_ref", sa.String(length=200), nullable=False),
        sa.Column("created_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["card_id"],
            ["agent_cards.id"],
            name=op.f("fk_agent_card_messages_card_id_agent_cards"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_card_messages")),
    )
    with op.batch_alter_table("agent_card_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_agent_card_messages_card_id"), ["card_id"], unique=False
        )
    op.create_table(
        "identity_link_addresses",
        sa.Column("id", ID, nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_at", storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_link_addresses")),
        sa.UniqueConstraint("email", name=op.f("uq_identity_link_addresses_email")),
    )


def downgrade() -> None:
    op.drop_table("identity_link_addresses")
    with op.batch_alter_table("agent_card_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agent_card_messages_card_id"))
    op.drop_table("agent_card_messages")

"""console sign-in attempts in the database: the throttle counts them across workers

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.models import UTCDateTime

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sign_in_attempts",
        sa.Column("id", BigId, nullable=False),
        sa.Column("address_hash", sa.String(length=64), nullable=False),
        sa.Column("attempted_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_in_attempts")),
    )
    op.create_index(
        op.f("ix_sign_in_attempts_address_hash"), "sign_in_attempts", ["address_hash"]
    )
    op.create_index(
        op.f("ix_sign_in_attempts_attempted_at"), "sign_in_attempts", ["attempted_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sign_in_attempts_attempted_at"), table_name="sign_in_attempts")
    op.drop_index(op.f("ix_sign_in_attempts_address_hash"), table_name="sign_in_attempts")
    op.drop_table("sign_in_attempts")

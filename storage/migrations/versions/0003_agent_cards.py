"""agent cards

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 17:58:42.065072
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('agent_cards',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('conversation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('container', sa.String(length=200), nullable=False),
    sa.Column('message_ref', sa.String(length=200), nullable=False),
    sa.Column('created_at', storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], name=op.f('fk_agent_cards_conversation_id_conversations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agent_cards')),
    sa.UniqueConstraint('channel', 'container', 'message_ref', name=op.f('uq_agent_cards_channel'))
    )
    with op.batch_alter_table('agent_cards', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_agent_cards_conversation_id'), ['conversation_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('agent_cards', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_agent_cards_conversation_id'))

    op.drop_table('agent_cards')

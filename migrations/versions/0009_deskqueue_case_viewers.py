"""case_viewers: who has a case open right now (the case page's presence)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "case_viewers",
        sa.Column("queue_item_id", sa.String(length=32), nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("queue_item_id", "username", name=op.f("pk_case_viewers")),
    )
    with op.batch_alter_table("case_viewers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_case_viewers_seen_at"), ["seen_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("case_viewers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_case_viewers_seen_at"))
    op.drop_table("case_viewers")

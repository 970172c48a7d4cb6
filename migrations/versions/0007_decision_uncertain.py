"""decisions.uncertain, decisions.uncertain_reason: the cases the guard could not judge

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("uncertain", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("uncertain_reason", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_column("uncertain_reason")
        batch_op.drop_column("uncertain")

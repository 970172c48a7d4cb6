"""audit items (queue_items.audit_verdict, audit_grade) and per-channel score maps (score_maps)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("queue_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("audit_verdict", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("audit_grade", sa.Integer(), nullable=True))
    op.create_table(
        "score_maps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("document", sa.Text(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("author", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_by", sa.String(length=100), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_maps")),
        sa.UniqueConstraint("channel", "version", name=op.f("uq_score_maps_channel")),
    )
    with op.batch_alter_table("score_maps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_score_maps_channel"), ["channel"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("score_maps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_score_maps_channel"))
    op.drop_table("score_maps")
    with op.batch_alter_table("queue_items", schema=None) as batch_op:
        batch_op.drop_column("audit_grade")
        batch_op.drop_column("audit_verdict")

"""policy_versions.note / rollback_of / preview_summary and audit_log.note / channel: change notes,
rollbacks labelled as such, and an audit log that can be filtered by channel

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("policy_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("rollback_of", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("preview_summary", sa.Text(), nullable=True))
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("channel", sa.String(length=100), nullable=True))
        batch_op.create_index(batch_op.f("ix_audit_log_channel"), ["channel"], unique=False)
    _backfill_channels()


def _backfill_channels() -> None:
    """The channel of the entries written before: from a policy entry's target ("policy NAME vN"),
    from a case entry's queue item ("case ID")."""
    conn = op.get_bind()
    audit = sa.table(
        "audit_log",
        sa.column("id", sa.Integer),
        sa.column("target", sa.String),
        sa.column("channel", sa.String),
    )
    items = sa.table("queue_items", sa.column("id", sa.String), sa.column("channel", sa.String))
    rows = conn.execute(sa.select(audit.c.id, audit.c.target)).all()
    for entry_id, target in rows:
        kind, _, rest = str(target).partition(" ")
        channel = None
        if kind == "policy":
            channel = rest.rsplit(" v", 1)[0] or None
        elif kind == "case":
            channel = conn.execute(sa.select(items.c.channel).where(items.c.id == rest)).scalar()
        if channel:
            conn.execute(sa.update(audit).where(audit.c.id == entry_id).values(channel=channel))


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_channel"))
        batch_op.drop_column("channel")
        batch_op.drop_column("note")
    with op.batch_alter_table("policy_versions", schema=None) as batch_op:
        batch_op.drop_column("preview_summary")
        batch_op.drop_column("rollback_of")
        batch_op.drop_column("note")

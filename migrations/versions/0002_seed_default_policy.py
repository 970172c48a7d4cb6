"""seed the default channel's policy (DESIGN §1) as version 1

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# A literal copy, not an import: a migration must keep meaning what it meant when written.
DEFAULT_POLICY = {
    "channel": "default",
    "on_error": "escalate",
    "instruction": (
        "Judge whether the response directly addresses the issue shown in the image "
        "and described in the query."
    ),
    "bands": [
        {"lo": 0.0, "hi": 0.4, "action": "escalate"},
        {"lo": 0.4, "hi": 0.5, "action": "review"},
        {"lo": 0.5, "hi": 0.6, "action": "follow_up"},
        {"lo": 0.6, "hi": 0.7, "action": "follow_up"},
        {"lo": 0.7, "hi": 1.0, "action": "send"},
    ],
}

policy_versions = sa.table(
    "policy_versions",
    sa.column("channel", sa.String),
    sa.column("version", sa.Integer),
    sa.column("document", sa.JSON),
    sa.column("author", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    op.bulk_insert(
        policy_versions,
        [
            {
                "channel": "default",
                "version": 1,
                "document": DEFAULT_POLICY,
                "author": "migration",
                "created_at": datetime.now(UTC),
            }
        ],
    )


def downgrade() -> None:
    op.execute(
        policy_versions.delete().where(
            sa.and_(policy_versions.c.channel == "default", policy_versions.c.version == 1)
        )
    )

"""The migrations and the models agree: one head, a linear history, and after ``guard migrate`` an
autogenerate comparison finds nothing to add, drop or change (on SQLite and PostgreSQL). A branch
that changes guard/tables.py without a migration, or two migrations with the same parent, fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from guard.store import migrate
from guard.tables import Base

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def test_one_head_and_a_linear_history() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    assert scripts.get_heads() == [max(r.revision for r in scripts.walk_revisions())]
    revisions = list(scripts.walk_revisions())
    assert all(len(r._all_down_revisions) <= 1 for r in revisions), "no merge points"
    numbers = sorted(int(r.revision) for r in revisions)
    assert numbers == list(range(1, len(numbers) + 1)), "0001, 0002, ... each after the one before"
    for r in revisions:
        assert r.down_revision == (None if r.revision == "0001" else f"{int(r.revision) - 1:04d}")
        assert Path(r.path).name.startswith(r.revision + "_"), "the file name starts with its revision"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


def test_the_migrated_schema_is_the_models(db_url: str) -> None:
    migrate(db_url)
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], diff

"""Alembic environment: the URL comes from the Config built by guard.store.alembic_config."""

from __future__ import annotations

from alembic import context

from guard.database import create_db_engine
from guard.tables import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None, "sqlalchemy.url must be set"
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                # One replica migrates at a time; the others wait, then find nothing to do.
                connection.exec_driver_sql("SELECT pg_advisory_lock(727271)")
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SELECT pg_advisory_unlock(727271)")
                connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

"""Alembic's environment: the URL comes from the caller (`payouts db upgrade`), never a file."""

from alembic import context
from sqlalchemy import create_engine, pool

url = context.config.get_main_option("sqlalchemy.url")
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, version_table="ledger_schema_version")
    with context.begin_transaction():
        # One migrator at a time: two deployers running `payouts db upgrade` together queue here.
        context.execute("SELECT pg_advisory_xact_lock(726354)")
        # Read under the lock, so a run that queued reports what it found, not what was there
        # before the first run migrated (three concurrent runs all said "none -> 0001").
        migration = context.get_context()
        context.config.attributes["revision_before"] = migration.get_current_revision()
        context.run_migrations()
        context.config.attributes["revision_after"] = migration.get_current_revision()
engine.dispose()

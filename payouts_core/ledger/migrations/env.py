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
        context.run_migrations()
engine.dispose()

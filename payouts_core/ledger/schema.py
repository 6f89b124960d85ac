"""The ledger's schema: Alembic migrations applied by `payouts db upgrade`, and the check that
the API, workers and archiver run at start (an older schema refuses them, naming the command)."""

from __future__ import annotations

from importlib.resources import files

import psycopg
from alembic.config import Config
from alembic.script import ScriptDirectory

UPGRADE_COMMAND = "payouts db upgrade"


class SchemaOutdated(RuntimeError):
    """The database's schema is older than this code's (or absent)."""


def _config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("payouts_core.ledger") / "migrations"))
    if url is not None:
        config.set_main_option("sqlalchemy.url", sqlalchemy_url(url))
    return config


def sqlalchemy_url(url: str) -> str:
    """`postgresql://...` as SQLAlchemy names psycopg 3 (its default driver is psycopg2)."""
    scheme, _, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme in ("postgres", "postgresql") else url


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(url: str) -> str | None:
    with psycopg.connect(url, connect_timeout=5) as conn:
        exists = conn.execute("SELECT to_regclass('ledger_schema_version')").fetchone()[0]
        if exists is None:
            return None
        row = conn.execute("SELECT version_num FROM ledger_schema_version").fetchone()
        return row[0] if row else None


def upgrade(url: str) -> tuple[str | None, str]:
    """Migrate to the newest schema (idempotent; concurrent runs queue on a lock).
    Returns (revision before, revision after), both read under the lock (migrations/env.py)."""
    from alembic import command  # noqa: PLC0415 - only the migrating command needs it

    config = _config(url)
    command.upgrade(config, "head")
    return config.attributes["revision_before"], config.attributes["revision_after"]


def check_schema(url: str) -> None:
    """Raise SchemaOutdated unless the database holds this code's newest schema."""
    current, head = current_revision(url), head_revision()
    if current != head:
        raise SchemaOutdated(
            f"the ledger database is at schema {current or 'none'}, this code needs {head}: "
            f"run `{UPGRADE_COMMAND}`")


def check_schema_at_start(url: str) -> bool:
    """The API's and the workers' start: raise SchemaOutdated for an older schema, so a deploy
    that skipped `payouts db upgrade` stops at once, saying so. A ledger that cannot be reached
    returns False instead: settlement never waits on PostgreSQL (SPEC §10), and the archiver
    checks again before it writes."""
    try:
        check_schema(url)
    except psycopg.OperationalError:
        return False
    return True

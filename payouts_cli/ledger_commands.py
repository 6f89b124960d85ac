"""`payouts db ...` and `payouts archiver`: the ledger's schema and the process that fills it."""

from __future__ import annotations

import importlib
import logging
import signal
import time

import click

from payouts_cli.local_redis import redact_url


def _settings():
    from payouts_core.settings import SettingsError, get_settings

    try:
        return get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def db() -> None:
    """The ledger database (PostgreSQL at DATABASE_URL): its schema."""


@db.command()
def upgrade() -> None:
    """Migrate the ledger to this code's schema (idempotent; safe to run twice or together)."""
    import psycopg

    from payouts_core.ledger.schema import upgrade as migrate

    url = _settings().ledger.database_url
    try:
        before, after = migrate(url)
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"cannot reach the ledger at {redact_url(url)} ({exc})") from None
    if before == after:
        click.echo(f"ledger schema already at {after}")
    else:
        click.echo(f"ledger schema upgraded: {before or 'none'} -> {after}")


@db.command("status")
def db_status() -> None:
    """The ledger's schema revision and this code's; exit 1 when they differ."""
    from payouts_core.ledger.schema import current_revision, head_revision

    current, head = current_revision(_settings().ledger.database_url), head_revision()
    click.echo(f"ledger schema: {current or 'none'}; this code: {head}")
    if current != head:
        raise SystemExit(1)


@click.command()
def archiver() -> None:
    """Copy the outbox's events into the ledger, until SIGTERM (one active per deployment)."""
    import psycopg
    from prometheus_client import start_http_server

    from payouts_core.ledger.archiver import Archiver
    from payouts_core.ledger.faults import archiver_redis
    from payouts_core.ledger.schema import SchemaOutdated, check_schema
    from payouts_core.logs import configure_logging
    from payouts_core.resources import store_client

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    log = logging.getLogger("payouts.archiver")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    if settings.ledger.archiver_metrics_port:
        # Registered now, so a scrape before the first archived event already shows them (at 0).
        importlib.import_module("payouts_core.ledger.metrics")
        start_http_server(settings.ledger.archiver_metrics_port, addr=settings.worker_metrics_addr)
    # PostgreSQL down at start is an outage like any other (the backlog waits in the outbox), not
    # a reason to exit: honcho would stop every process with it. An older schema is.
    backoff = 0.5
    while not stopping:
        try:
            check_schema(settings.ledger.database_url)
            break
        except SchemaOutdated as exc:
            raise click.ClickException(str(exc)) from None
        except psycopg.OperationalError as exc:
            log.warning("archiver: PostgreSQL unavailable at start; retrying in %.1f s", backoff,
                        extra={"error": type(exc).__name__})
            time.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
    log.info("archiver started", extra={"database": redact_url(settings.ledger.database_url)})
    Archiver(archiver_redis(store_client(), settings), settings.ledger.database_url) \
        .run(stop=lambda: bool(stopping))
    log.info("archiver stopped")

"""Shared fixtures: a private Redis on a free port, a real Celery worker, the real Flask app.

The Redis is started in `pytest_configure`, before any test module imports the service, so
the environment the settings read once already points at it. Tests never touch a Redis they
did not start, and use unique ids instead of flushing.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

from payouts_devstack import Process, Stack, free_port, start_redis
from payouts_devstack.postgres_server import database_url, start_postgres

TEST_ENV = {
    "PIX_SIM_LATENCY_MS": "0-20",
    "PIX_SIM_SEED": "tests",
    # The provider's final deadline: an unanswered call is unknown (not failed) this long.
    "PIX_SIM_SETTLEMENT_TIMEOUT_S": "4",
    "PAYOUTS_RETRY_BACKOFF_BASE_S": "0.05",
    "PAYOUTS_RETRY_BACKOFF_MAX_S": "0.4",
    "PAYOUTS_RATELIMIT_ENABLED": "false",
    "WORKER_CONCURRENCY": "50",
    "PAYOUTS_WORKER_METRICS_PORT": "0",
    "PAYOUTS_ENV": "test",
    # Two clients (tenants): `tests` holds two keys (rotation), `other` is a second platform.
    "PAYOUTS_API_KEYS": ("tests:tests-key-0123456789,tests:rotated-key-0123456789,"
                         "other:other-key-0123456789"),
    "PAYOUTS_API_KEY": "tests-key-0123456789",  # what the CLI sends
    "PAYOUTS_METRICS_TOKEN": "operator-token-0123456789",  # /metrics: the operator's, no client's
    # Local receivers listen on free ports; production allows 443 only (README "Webhooks").
    "PAYOUTS_WEBHOOK_PORTS": "*",
}
API_KEY = TEST_ENV["PAYOUTS_API_KEY"]
ROTATED_KEY = "rotated-key-0123456789"
OTHER_KEY = "other-key-0123456789"
METRICS_TOKEN = TEST_ENV["PAYOUTS_METRICS_TOKEN"]


class FixedRemoteAddr:
    """WSGI middleware: every request comes from one address (a fresh one per test keeps the
    per-address rate-limit budgets of tests apart)."""

    def __init__(self, wsgi_app, addr: str):
        self.wsgi_app, self.addr = wsgi_app, addr

    def __call__(self, environ, start_response):
        environ["REMOTE_ADDR"] = self.addr
        return self.wsgi_app(environ, start_response)


class KeyedClient(FlaskClient):
    """A test client that sends the tests' API key unless a test sets Authorization itself."""

    def open(self, *args, **kwargs):
        headers = kwargs.setdefault("headers", {})
        if not any(k.lower() in ("authorization", "x-api-key") for k in headers):
            headers["Authorization"] = f"Bearer {API_KEY}"
        return super().open(*args, **kwargs)

_redis_proc: Process | None = None
_postgres_proc: Process | None = None


def pytest_configure(config):
    global _redis_proc, _postgres_proc
    data_dir = Path(tempfile.mkdtemp(prefix="payouts-test-redis-"))
    port = free_port()
    _redis_proc = start_redis(port, data_dir)
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    # The ledger: a PostgreSQL server of the session's own, migrated to this code's schema.
    pg_port = free_port()
    _postgres_proc = start_postgres(pg_port, Path(tempfile.mkdtemp(prefix="payouts-test-pg-")))
    os.environ["DATABASE_URL"] = database_url(pg_port)
    from payouts_core.ledger.schema import upgrade

    upgrade(os.environ["DATABASE_URL"])
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "PAYOUTS_STORE_URL",
                 "RATELIMIT_STORAGE_URI"):
        os.environ.pop(name, None)
    os.environ.update(TEST_ENV)


def pytest_unconfigure(config):
    if _postgres_proc is not None:
        _postgres_proc.stop(grace=10)
    if _redis_proc is not None:
        _redis_proc.stop(grace=10)


@pytest.fixture(scope="session")
def redis_server() -> str:
    """URL of the Redis this test session started."""
    return os.environ["REDIS_URL"]


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def ledger_url() -> str:
    """URL of the ledger database this test session started."""
    return os.environ["DATABASE_URL"]


@pytest.fixture
def uid() -> str:
    """A short unique suffix so tests sharing the session Redis never collide."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def worker(tmp_path_factory):
    """One real worker (the Procfile's) on the session Redis, and the Procfile's webhook worker
    beside it; the fault suite starts its own."""
    with Stack(tmp_path_factory.mktemp("worker")) as stack:
        settlement = stack.start_worker(wait=False)
        webhooks = stack.start_webhook_worker(wait=False)
        stack.wait_for_workers([settlement, webhooks])
        yield settlement


@pytest.fixture(scope="session")
def archiver(tmp_path_factory):
    """The Procfile's archiver on the session Redis and ledger: the outbox drains into it."""
    with Stack(tmp_path_factory.mktemp("archiver")) as stack:
        yield stack.start_archiver()


@pytest.fixture(scope="module")
def own_redis_url(tmp_path_factory) -> str:
    """A Redis of the module's own (its outbox holds only that module's events)."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("own-redis"), appendonly=False)
    yield f"redis://127.0.0.1:{port}/0"
    proc.stop(grace=5)


@pytest.fixture(scope="module")
def own_redis(own_redis_url):
    client = redis.Redis.from_url(own_redis_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def ledger_db(ledger_url) -> str:
    """A ledger database of the module's own on the session's PostgreSQL, migrated, dropped after."""
    import psycopg

    from payouts_core.ledger.schema import upgrade

    name = f"ledger_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ledger_url.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    yield url
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def ledger_rows(sql: str, *params) -> list[tuple]:
    """Rows of the session's ledger database."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def make_app():
    """Build an app with some settings changed (`make_app(ratelimit_enabled=True)`).

    The settings stay one object (dataclasses.replace); its test client sends the tests' key
    unless a request sets Authorization itself.
    """
    from payouts_api import create_app
    from payouts_core.settings import get_settings

    def make(**changes):
        app = create_app({"TESTING": True}, settings=replace(get_settings(), **changes))
        app.test_client_class = KeyedClient
        return app

    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def store():
    from payouts_core.resources import get_store

    return get_store()


@pytest.fixture
def provider():
    from payouts_core.resources import get_provider

    return get_provider()


def wait_for(check, timeout: float, what: str):
    """Poll `check` until it returns something true (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout} s")


def wait_for_report(client, batch_id: str, timeout: float = 120.0) -> dict:
    """Poll GET until the batch is completed; returns the final report."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/api/payouts/{batch_id}")
        assert response.status_code == 200, response.get_data(as_text=True)
        report = response.get_json()
        if report["status"] == "completed":
            return report
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} not completed after {timeout} s: {report}")

"""The ledger seen from the API: its archive backlog in /metrics and /readyz, new batches refused
(503, Retry-After) past PAYOUTS_OUTBOX_MAX while accepted ones settle, and the start refused
against an older ledger schema. Real Flask app, real Redis and PostgreSQL."""

from __future__ import annotations

import uuid
from dataclasses import replace

import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from payouts_core.ledger.schema import SchemaOutdated
from payouts_core.settings import get_settings
from payouts_core.store import OUTBOX
from payouts_devstack import free_port
from tests.api.test_bad_input import assert_problem
from tests.conftest import METRICS_TOKEN, OTHER_KEY, wait_for_report


@pytest.fixture
def ledger_app(make_app, own_redis_url):
    """An app on the module's Redis with PAYOUTS_OUTBOX_MAX (and other settings) of the test's."""
    def make(outbox_max: int = 1_000_000, **changes):
        settings = get_settings()
        return make_app(store_url=own_redis_url,
                        ledger=replace(settings.ledger, outbox_max=outbox_max, **changes))
    return make


def batch(batch_id: str, n: int = 2) -> dict:
    return {"batch_id": batch_id, "items": [
        {"external_id": f"{batch_id}-{i}", "user_id": "u", "amount_cents": 100, "pix_key": "a@b.com"}
        for i in range(n)]}


def sample(client, name: str) -> float | None:
    scrape = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    for family in text_string_to_metric_families(scrape.get_data(as_text=True)):
        for s in family.samples:
            if s.name == name:
                return s.value
    return None


def written(r: redis.Redis) -> tuple:
    return sorted(r.scan_iter("payouts:batch:*")), r.zcard("payouts:batches"), r.xlen(OUTBOX)


# --- /metrics ---------------------------------------------------------------------------------

def test_metrics_show_the_outbox_backlog_and_its_age(ledger_app, own_redis, uid):
    client = ledger_app().test_client()
    own_redis.delete(OUTBOX)
    assert sample(client, "payouts_outbox_backlog_events") == 0
    assert sample(client, "payouts_outbox_oldest_age_seconds") == 0

    # The oldest event's id, dated by Redis, made 2 s older than now: the age must say so.
    own_redis.xadd(OUTBOX, {"e": "{}"}, id=f"{int(own_redis.time()[0]) * 1000 - 2000}-0")
    assert client.post("/api/payouts", json=batch(f"m-{uid}")).status_code == 202
    waiting = own_redis.xlen(OUTBOX)

    assert waiting >= 2
    assert sample(client, "payouts_outbox_backlog_events") == waiting
    assert 2 <= sample(client, "payouts_outbox_oldest_age_seconds") < 60
    assert sample(client, "payouts_outbox_max_events") == 1_000_000
    own_redis.delete(OUTBOX)


# --- /readyz ----------------------------------------------------------------------------------

@pytest.mark.usefixtures("worker")
def test_readyz_shows_the_ledger_and_stays_ready_while_its_database_is_down(make_app):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/payouts"
    app = make_app(ledger=replace(get_settings().ledger, database_url=dead))  # starts anyway
    response = app.test_client().get("/readyz")
    body = response.get_json()

    assert response.status_code == 200, body
    ledger = body["checks"]["ledger"]
    assert ledger["ok"] is True and ledger["database"].startswith("unreachable")
    assert ledger["backlog"] >= 0 and ledger["oldest_s"] >= 0


@pytest.mark.usefixtures("worker")
def test_readyz_reaches_the_database_when_it_is_up(client):
    assert client.get("/readyz").get_json()["checks"]["ledger"]["database"] == "reachable"


def test_readyz_is_503_once_the_backlog_passes_the_limit(ledger_app, own_redis, uid):
    assert ledger_app().test_client().post("/api/payouts", json=batch(f"r-{uid}")).status_code == 202
    waiting = own_redis.xlen(OUTBOX)

    at_limit = ledger_app(outbox_max=waiting).test_client().get("/readyz").get_json()
    over = ledger_app(outbox_max=waiting - 1).test_client().get("/readyz")

    assert at_limit["checks"]["ledger"]["ok"] is True
    assert over.status_code == 503
    ledger = over.get_json()["checks"]["ledger"]
    assert ledger["ok"] is False and ledger["backlog"] == waiting and "OUTBOX_MAX" in ledger["error"]
    own_redis.delete(OUTBOX)


# --- backpressure -------------------------------------------------------------------------------

def test_a_new_batch_is_refused_past_the_limit_and_nothing_is_written(ledger_app, own_redis, uid):
    accepted = batch(f"a-{uid}")
    assert ledger_app().test_client().post("/api/payouts", json=accepted).status_code == 202
    full = ledger_app(outbox_max=own_redis.xlen(OUTBOX) - 1).test_client()
    before = written(own_redis)

    refused = full.post("/api/payouts", json=batch(f"b-{uid}"))
    replay = full.post("/api/payouts", json=accepted)
    # A second client naming the first one's batch id: for it a new batch, refused the same way.
    other = full.post("/api/payouts", json=accepted, headers={"Authorization": f"Bearer {OTHER_KEY}"})

    body = assert_problem(refused, 503)
    assert "Retry-After" not in refused.headers  # only a 429 carries one (SPEC §9)
    assert "nothing was accepted" in body["detail"]
    assert replay.status_code == 200  # an accepted batch still answers (nothing re-enqueued)
    assert_problem(other, 503)
    assert written(own_redis) == before
    assert full.get(f"/api/payouts/b-{uid}").status_code == 404
    documented = full.get("/openapi.json").get_json()["paths"]["/api/payouts"]["post"]["responses"]
    assert "Retry-After" not in documented["503"].get("headers", {})
    own_redis.delete(OUTBOX)


@pytest.mark.usefixtures("worker")
def test_accepted_batches_keep_settling_while_new_ones_are_refused(make_app, uid):
    """On the session's Redis and worker, with a limit every backlog passes (-1)."""
    settings = get_settings()
    assert make_app().test_client().post("/api/payouts", json=batch(f"s-{uid}", 5)).status_code == 202
    full = make_app(ledger=replace(settings.ledger, outbox_max=-1)).test_client()

    assert_problem(full.post("/api/payouts", json=batch(f"t-{uid}")), 503)
    report = wait_for_report(full, f"s-{uid}")
    assert report["processed"] == 5 and report["successful"] == 5


# --- schema at start ------------------------------------------------------------------------------

@pytest.fixture
def unmigrated_url(ledger_url):
    """An empty database of the test's own on the session's PostgreSQL (no schema at all)."""
    name = f"unmigrated_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield ledger_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_the_api_refuses_to_start_against_an_older_schema(make_app, unmigrated_url):
    with pytest.raises(SchemaOutdated, match="payouts db upgrade"):
        make_app(ledger=replace(get_settings().ledger, database_url=unmigrated_url))


def test_the_api_starts_on_the_migrated_session_database(make_app):
    assert make_app().test_client().get("/healthz").status_code == 200

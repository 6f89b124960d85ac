"""Reads through the real API once Redis no longer holds a batch: a real worker settles it, the
session's archiver process copies it into PostgreSQL, the test deletes its Redis keys as
retention will, and every view answers as before. A second client reads none of it (SPEC §9)."""

from __future__ import annotations

import csv
import io
import json
import threading
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from payouts_cli.main import cli
from payouts_core.settings import key_digest
from payouts_core.store import BatchRef
from tests.conftest import API_KEY, OTHER_KEY, wait_for_report
from tests.ledger_helpers import forget_in_redis, wait_archived

pytestmark = pytest.mark.usefixtures("worker", "archiver")

B = {"Authorization": f"Bearer {OTHER_KEY}"}
CSV = {"Accept": "text/csv"}  # copied into each request: KeyedClient adds the key to the dict


@pytest.fixture
def tenant(uid) -> str:
    return f"l{uid}"


@pytest.fixture
def app(make_app, tenant):
    """The tests' key names a fresh client; OTHER_KEY names another fresh one."""
    return make_app(api_keys=((tenant, key_digest(API_KEY)), (f"o{tenant}", key_digest(OTHER_KEY))))


@pytest.fixture
def client(app):
    return app.test_client()


def settled(client, store, tenant: str, batch_id: str) -> tuple[dict, BatchRef]:
    """A batch with a paid item, a retried one, a failed one and a duplicate, completed and
    wholly archived."""
    item = {"user_id": "u", "amount_cents": 1500}
    batch = {"batch_id": batch_id, "items": [
        {**item, "external_id": f"{batch_id}-ok", "pix_key": "+55 11 91234-5678"},
        {**item, "external_id": f"{batch_id}-slow", "pix_key": "timeout.twice@pix.test"},
        {**item, "external_id": f"{batch_id}-no", "pix_key": "fail.ac03@pix.test", "amount_cents": 700},
        {**item, "external_id": f"{batch_id}-ok", "pix_key": "+5511912345678"},
    ]}
    assert client.post("/api/payouts", json=batch).status_code == 202
    report = wait_for_report(client, batch_id)
    ref = BatchRef(tenant, batch_id)
    wait_archived(store, ref)
    return report, ref


def views(client, batch_id: str) -> dict:
    """Every read of one batch, as the client sees it."""
    return {
        "report": client.get(f"/api/payouts/{batch_id}").get_json(),
        "failed": client.get(f"/api/payouts/{batch_id}/items?status=failed").get_json(),
        "pages": [client.get(f"/api/payouts/{batch_id}/items?limit=3").get_json(),
                  client.get(f"/api/payouts/{batch_id}/items?limit=3&cursor=WzNd").get_json()],
        "csv": client.get(f"/api/payouts/{batch_id}", headers={**CSV}).get_data(),
        "story": client.get(f"/api/payouts/{batch_id}/items/{batch_id}-slow").get_json(),
    }


def test_an_archived_batch_reads_the_same_from_the_ledger(client, store, tenant, uid):
    report, ref = settled(client, store, tenant, f"arch-{uid}")
    held = views(client, ref.batch_id)

    forget_in_redis(store, ref)
    archived = views(client, ref.batch_id)

    assert archived == held
    assert archived["report"] == report
    assert [d["status"] for d in report["details"]] == ["paid", "paid", "failed", "duplicate"]
    assert [i["index"] for i in archived["failed"]["items"]] == [2]
    assert archived["pages"][0]["next_cursor"] == "WzNd" and archived["pages"][1]["next_cursor"] is None
    rows = list(csv.DictReader(io.StringIO(archived["csv"].decode())))
    assert [(r["index"], r["status"], r["pix_key"]) for r in rows] == [
        ("0", "paid", "+55*******5678"), ("1", "paid", "t***@pix.test"),
        ("2", "failed", "f***@pix.test"), ("3", "duplicate", "+55*******5678")]
    assert rows[3]["duplicate_of_index"] == "0" and rows[2]["failure_code"] == "AC03"
    assert b"91234" not in archived["csv"]  # masked keys only


def test_the_csv_is_a_streamed_attachment(client, store, tenant, uid):
    _, ref = settled(client, store, tenant, f"csv-{uid}")
    forget_in_redis(store, ref)

    response = client.get(f"/api/payouts/{ref.batch_id}", headers={**CSV})

    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.is_streamed
    assert response.headers["Content-Disposition"] == f'attachment; filename="{ref.batch_id}.csv"'
    assert response.get_data().count(b"\n") == 5
    json_by_default = client.get(f"/api/payouts/{ref.batch_id}", headers={"Accept": "*/*"})
    assert json_by_default.mimetype == "application/json"
    assert response.headers["Vary"] == json_by_default.headers["Vary"] == "Accept"


def test_an_items_story_lists_every_provider_call_in_order(client, store, tenant, uid):
    _, ref = settled(client, store, tenant, f"story-{uid}")

    response = client.get(f"/api/payouts/{ref.batch_id}/items/{ref.batch_id}-slow")
    live = response.get_json()
    assert b"timeout.twice@" not in response.get_data()  # masked keys only, events included
    twice = client.get(f"/api/payouts/{ref.batch_id}/items/{ref.batch_id}-ok").get_json()

    (item,) = live["items"]
    assert item["status"] == "paid" and item["attempts"] == 3
    assert [(e["type"], e["attempt"], e["code"]) for e in item["events"]] == [
        ("accepted", None, None), ("provider_call", 1, None), ("provider_error", 1, "AB03"),
        ("provider_call", 2, None), ("provider_error", 2, "AB03"), ("provider_call", 3, None),
        ("paid", 3, None)]
    assert item["events"][-1]["detail"]["e2e_id"] == item["e2e_id"]
    assert all(datetime.fromisoformat(e["at"]).tzinfo == UTC for e in item["events"])
    assert [(i["index"], i["status"]) for i in twice["items"]] == [(0, "paid"), (3, "duplicate")]
    assert client.get(f"/api/payouts/{ref.batch_id}/items/nobody").status_code == 404
    assert client.get(f"/api/payouts/{ref.batch_id}/items/bad%20id").status_code == 422


def test_history_lists_held_and_archived_batches_once(client, store, tenant, uid):
    refs = [settled(client, store, tenant, f"h{i}-{uid}")[1] for i in range(3)]
    forget_in_redis(store, refs[1])

    pages, cursor = [], None
    while True:
        body = client.get("/api/payouts?limit=1" + (f"&cursor={cursor}" if cursor else "")).get_json()
        pages.append([b["batch_id"] for b in body["batches"]])
        if (cursor := body["next_cursor"]) is None:
            break

    assert [b for page in pages for b in page] == [r.batch_id for r in reversed(refs)]
    assert client.get("/api/payouts?status=completed").get_json()["batches"][1]["batch_id"] == \
        refs[1].batch_id


def test_another_client_reads_nothing_of_an_archived_batch(client, store, tenant, uid):
    _, ref = settled(client, store, tenant, f"mine-{uid}")
    forget_in_redis(store, ref)
    today = datetime.now(UTC).date().isoformat()
    daily = f"/api/reports/daily?from={today}&to={today}"

    for path in (f"/api/payouts/{ref.batch_id}", f"/api/payouts/{ref.batch_id}/items",
                 f"/api/payouts/{ref.batch_id}/items/{ref.batch_id}-ok"):
        assert client.get(path).status_code == 200
        assert client.get(path, headers=B).status_code == 404, path
    assert client.get(f"/api/payouts/{ref.batch_id}", headers={**B, **CSV}).status_code == 404
    assert client.get("/api/payouts", headers=B).get_json()["batches"] == []
    mine, theirs = client.get(daily).get_json(), client.get(daily, headers=B).get_json()
    assert mine["days"][0]["paid"] == {"count": 2, "amount_cents": 3000}
    assert mine["days"][0]["failed"]["by_code"] == {"AC03": {"count": 1, "amount_cents": 700}}
    assert mine["days"][0]["duplicates"] == {"count": 1, "amount_cents": 1500}
    assert theirs["days"][0] == {"date": today, "paid": {"count": 0, "amount_cents": 0},
                                 "failed": {"count": 0, "amount_cents": 0, "by_code": {}},
                                 "duplicates": {"count": 0, "amount_cents": 0}}


def test_the_cli_prints_an_items_story(app, store, tenant, uid):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        _, ref = settled(app.test_client(), store, tenant, f"cli-{uid}")
        forget_in_redis(store, ref)
        run = CliRunner().invoke
        table = run(cli, ["--api-url", url, "item", ref.batch_id, f"{ref.batch_id}-slow"],
                    env={"COLUMNS": "200"})
        as_json = run(cli, ["--api-url", url, "item", ref.batch_id, f"{ref.batch_id}-slow", "--json"])
        theirs = run(cli, ["--api-url", url, "--api-key", OTHER_KEY, "item", ref.batch_id,
                           f"{ref.batch_id}-slow"])
    finally:
        server.shutdown()

    assert table.exit_code == 0, table.output
    assert f"Item 1 of batch {ref.batch_id}: {ref.batch_id}-slow paid R$ 15,00" in table.stdout
    assert table.stdout.count("provider_error") == 2 and "AB03" in table.stdout
    assert "t***@pix.test" in table.stdout and "timeout.twice@" not in table.stdout
    assert [e["type"] for e in json.loads(as_json.stdout)["items"][0]["events"]][-1] == "paid"
    assert theirs.exit_code == 1 and "HTTP 404" in theirs.stderr

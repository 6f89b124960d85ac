"""The ledger's read side on the session Redis and PostgreSQL, fed by the session's archiver
process: an archived batch reads exactly as Redis read it, whichever view, once Redis forgot it."""

from __future__ import annotations

import json
import string
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from payouts_core.ledger import reads
from payouts_core.ledger.reads import MEMBER_SQL, LedgerReads, LedgerUnavailable, merged_history
from payouts_core.rules import encode_id
from payouts_core.store import BatchRef, Order, fingerprint
from payouts_devstack import free_port
from tests.conftest import ledger_rows
from tests.ledger_helpers import forget_in_redis, wait_archived

pytestmark = pytest.mark.usefixtures("archiver")

MAX_ATTEMPTS = 6


@pytest.fixture
def ledger(ledger_url):
    reader = LedgerReads(ledger_url)
    yield reader
    reader.close()


def settled_batch(store, client: str, batch_id: str, outcomes: list[str]) -> BatchRef:
    """A completed batch whose items ended as told: paid, failed, retried (AB03 then paid),
    or dup (the same external_id and terms as item 0, after it was paid)."""
    ref = BatchRef(client, batch_id)
    orders = [Order(i, f"{client}-{batch_id}-0" if o == "dup" else f"{client}-{batch_id}-{i}",
                    "u", 100 if o == "dup" else 100 + i, "a@b.com", "a***@b.com", "email")
              for i, o in enumerate(outcomes)]
    assert store.create_batch(ref, fingerprint({"b": batch_id, "c": client}), orders,
                              lease_token="t")[0]
    assert store.open_batch(ref, "t")
    for i, outcome in enumerate(outcomes):
        decision = store.begin_settlement(ref, i, MAX_ATTEMPTS)
        if outcome == "retried":
            store.note_event(ref, i, "provider_error", decision.attempts, "AB03", {"next": "retry"})
            decision = store.begin_settlement(ref, i, MAX_ATTEMPTS)
        if outcome in ("paid", "retried"):
            store.record_paid(ref, i, f"E{i:031d}", decision.claim_generation, {"duration_ms": 3})
        elif outcome == "failed":
            store.record_failed(ref, i, "AC03", "invalid account, closed")  # a comma for the CSV
        else:
            assert decision.action == "duplicate"
    assert store.complete_batch(ref)[0] == "completed"
    return ref


def csv_of(stream) -> bytes:
    return b"".join(stream)


def test_the_member_expression_encodes_and_orders_like_redis(ledger):
    allowed = string.ascii_letters + string.digits + "._:-"
    ids = [f"a{c}" for c in allowed] + ["a:b", "a-b", "a.b", "A:b", "a::", "a:-"]
    with ledger.connection() as conn:
        encoded = conn.execute(
            f"""SELECT batch_id, {MEMBER_SQL} FROM unnest(%s::text[]) AS t(batch_id)
                ORDER BY {MEMBER_SQL} DESC""", (ids,)).fetchall()
    assert all(member == encode_id(batch_id) for batch_id, member in encoded)
    assert [member for _, member in encoded] == sorted((encode_id(i) for i in ids), reverse=True)


def test_an_archived_batch_reads_as_redis_read_it(store, ledger, uid):
    ref = settled_batch(store, f"c{uid}", "b:1", ["paid", "failed", "retried", "dup", "paid"])
    wait_archived(store, ref)
    live_report = json.loads(store.report_json(ref))
    live_pages = [store.batch_items(ref, 2, start, status) for start, status in
                  ((0, None), (2, None), (0, "failed"), (0, "duplicate"), (0, "paid"))]
    live_csv = csv_of(reads.csv_stream(store, ledger, ref))

    forget_in_redis(store, ref)

    assert json.loads(reads.report_json(store, ledger, ref)) == live_report
    assert [reads.batch_items(store, ledger, ref, 2, start, status) for start, status in
            ((0, None), (2, None), (0, "failed"), (0, "duplicate"), (0, "paid"))] == live_pages
    assert csv_of(reads.csv_stream(store, ledger, ref)) == live_csv
    lines = live_csv.decode().splitlines()
    assert lines[0].startswith("index,external_id,user_id,amount_cents,pix_key,")
    assert len(lines) == 6 and '"invalid account, closed"' in lines[2]
    assert "a@b.com" not in live_csv.decode()  # masked keys only
    assert lines[4].endswith(f"{ref.batch_id},0,E{0:031d}")  # the duplicate names its payment


def test_a_csv_read_while_retention_deletes_the_batch_continues_from_the_ledger(store, ledger, uid):
    ref = settled_batch(store, f"c{uid}", "big", ["paid"] * 25)
    wait_archived(store, ref)
    whole = csv_of(reads.csv_stream(store, ledger, ref, chunk=10))

    stream = reads.csv_stream(store, ledger, ref, chunk=10)
    first = next(stream)
    forget_in_redis(store, ref)

    assert first + csv_of(stream) == whole
    assert len(whole.decode().splitlines()) == 26


def test_an_items_story_is_the_same_before_and_after_redis_forgets_it(store, ledger, uid):
    ref = settled_batch(store, f"c{uid}", "story", ["retried", "dup"])
    wait_archived(store, ref)
    held = reads.item_story(store, ledger, ref, f"c{uid}-story-0")

    forget_in_redis(store, ref)
    archived = reads.item_story(store, ledger, ref, f"c{uid}-story-0")

    assert archived == held
    assert [item["index"] for item in held] == [0, 1]
    assert [(e["type"], e["attempt"], e["code"]) for e in held[0]["events"]] == [
        ("accepted", None, None), ("provider_call", 1, None), ("provider_error", 1, "AB03"),
        ("provider_call", 2, None), ("paid", 2, None)]
    assert held[0]["events"][-1]["detail"]["e2e_id"] == held[0]["e2e_id"]
    assert held[1]["status"] == "duplicate" and held[1]["events"][-1]["type"] == "duplicate"
    assert [e["seq"] for e in held[0]["events"]] == sorted(e["seq"] for e in held[0]["events"])
    assert reads.item_story(store, ledger, ref, "nobody") == []
    assert reads.item_story(store, ledger, BatchRef(f"other{uid}", "story"), f"c{uid}-story-0") is None


def test_a_story_of_a_batch_not_yet_archived_has_its_redis_entry(store, ledger, uid):
    ref = BatchRef(f"c{uid}", "fresh")
    orders = [Order(0, "x", "u", 5, "a@b.com", "a***@b.com", "email")]
    store.create_batch(ref, fingerprint({"b": "fresh"}), orders, lease_token="t")

    story = reads.item_story(store, ledger, ref, "x")

    assert [(s["index"], s["status"]) for s in story] == [(0, "pending")]


def walk(store, ledger, client: str, limit: int, **filters) -> list[str]:
    seen, cursor = [], None
    while True:
        page, cursor = merged_history(store, ledger, client, limit, cursor, **filters)
        seen += [summary["batch_id"] for summary in page]
        if cursor is None:
            return seen


def test_history_lists_redis_held_and_archived_batches_once_newest_first(store, ledger, uid):
    client = f"h{uid}"
    refs = [settled_batch(store, client, f"b{i:02d}", ["paid"]) for i in range(12)]
    for ref in refs:
        wait_archived(store, ref)
    running = BatchRef(client, "running")
    store.create_batch(running, fingerprint({"b": "running"}),
                       [Order(0, f"{uid}-r", "u", 5, "a@b.com", "a***@b.com")], lease_token="t")
    expected = ["running"] + [f"b{i:02d}" for i in reversed(range(12))]
    assert walk(store, ledger, client, 100) == expected

    for ref in refs[::3] + refs[1::3]:  # Redis forgets two thirds: b00, b03, ... and b01, b04, ...
        forget_in_redis(store, ref)

    for limit in (1, 2, 3, 5, 100):
        assert walk(store, ledger, client, limit) == expected
    assert walk(store, ledger, client, 4, status="completed") == expected[1:]
    assert walk(store, ledger, client, 4, status="processing") == ["running"]


def test_history_bounds_by_creation_time_in_both_stores(store, ledger, uid):
    client = f"t{uid}"
    refs = []
    for i in range(4):
        refs.append(settled_batch(store, client, f"b{i}", ["paid"]))
        time.sleep(0.003)  # bounds are in ms: two batches of one ms would both be inside
    for ref in refs:
        wait_archived(store, ref)
    forget_in_redis(store, refs[1])
    forget_in_redis(store, refs[2])
    created = [reads.history_position(json.loads(reads.report_json(store, ledger, r)))[0] for r in refs]

    window = walk(store, ledger, client, 1, newest_ms=created[2], oldest_ms=created[1])

    assert window == ["b2", "b1"]


def test_an_archived_summary_is_the_redis_summary(store, ledger, uid):
    ref = settled_batch(store, f"s{uid}", "one", ["paid", "failed"])
    wait_archived(store, ref)
    live = store.summary(ref)
    forget_in_redis(store, ref)

    page, cursor = merged_history(store, ledger, ref.client, 10)

    assert page == [live] and cursor is None


def test_daily_counts_and_sums_items_by_the_utc_day_they_became_final(store, ledger, uid):
    client = f"d{uid}"
    ref = settled_batch(store, client, "day", ["paid", "failed", "dup", "retried"])
    wait_archived(store, ref)
    today = datetime.now(UTC).date()
    ledger_rows("UPDATE items SET updated_at = updated_at - interval '1 day' "
                "WHERE client = %s AND idx = 3 RETURNING idx", client)

    days = ledger.daily(client, today - timedelta(days=2), today)

    assert [d["date"] for d in days] == [str(today - timedelta(days=n)) for n in (2, 1, 0)]
    assert days[0]["paid"] == {"count": 0, "amount_cents": 0}
    assert days[1]["paid"] == {"count": 1, "amount_cents": 103}
    assert days[2] == {"date": str(today), "paid": {"count": 1, "amount_cents": 100},
                       "failed": {"count": 1, "amount_cents": 101,
                                  "by_code": {"AC03": {"count": 1, "amount_cents": 101}}},
                       "duplicates": {"count": 1, "amount_cents": 100}}
    assert ledger.daily(f"other{uid}", today, today)[0]["paid"]["count"] == 0


def test_a_ledger_that_does_not_answer_is_unavailable_not_empty():
    reader = LedgerReads(f"postgresql://postgres@127.0.0.1:{free_port()}/payouts", timeout_s=1)
    try:
        with pytest.raises(LedgerUnavailable):
            reader.report_json(BatchRef("c", "b"))
        with pytest.raises(LedgerUnavailable):
            reader.daily("c", datetime.now(UTC).date(), datetime.now(UTC).date())
    finally:
        reader.close()
    assert issubclass(LedgerUnavailable, RuntimeError) and not issubclass(LedgerUnavailable, psycopg.Error)


def test_a_walk_goes_on_while_retention_moves_batches_to_the_ledger(store, ledger, uid):
    client = f"w{uid}"
    refs = [settled_batch(store, client, f"b{i}", ["paid"]) for i in range(4)]
    for ref in refs:
        wait_archived(store, ref)
    seen, cursor = [], None
    for step in range(4):
        page, cursor = merged_history(store, ledger, client, 1, cursor)
        seen += [summary["batch_id"] for summary in page]
        if step < 3:
            forget_in_redis(store, refs[2 - step])  # the next one leaves Redis meanwhile

    assert seen == ["b3", "b2", "b1", "b0"] and cursor is None

"""Delivery attempts in-process against a real receiver on 127.0.0.1 (issue 13): signature,
retries, answers that are not retried, timeouts, the SSRF guard, secret rotation, one event per
batch. The Celery task only wraps `attempt_delivery`; tests/e2e/test_webhooks.py runs it."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest
from standardwebhooks import Webhook

from payouts_core.resources import store_client
from payouts_core.settings import get_settings
from payouts_core.store import OUTBOX, BatchRef, Order, batch_keys, fingerprint
from payouts_core.webhooks import DUE, LedgerEvent, WebhookStore
from payouts_tasks.webhooks import attempt_delivery, backoff_s
from tests.conftest import ledger_rows, wait_for
from tests.webhook_receiver import Receiver

LOOPBACK = replace(get_settings(), webhooks_allow_http=True, webhooks_allow_private=True,
                   webhook_timeout_s=0.5, webhook_backoff_base_s=0.01, webhook_backoff_max_s=0.05)


@pytest.fixture
def receiver():
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def hooks():
    return WebhookStore(store_client())


def one_delivery(hooks, uid, url) -> tuple[str, str, str]:
    """(client, secret, delivery id) of a fresh client with one endpoint and one event."""
    client = f"t{uid}"
    endpoint = hooks.add_endpoint(client, url, ["batch.completed"], "")
    created, [delivery_id] = hooks.emit(client, "batch.completed", f"batch:{uid}", {"batch_id": uid}, 0)
    assert created
    return client, endpoint["secret"], delivery_id


def run_until_final(client, delivery_id, settings=LOOPBACK, limit=10) -> list[str]:
    """Attempts as the task makes them (a retry waits its countdown: here, well under a second)."""
    outcomes = []
    for _ in range(limit):
        outcome, countdown = attempt_delivery(settings, client, delivery_id)
        if outcome in ("not-due", "busy"):
            continue
        outcomes.append(outcome)
        if countdown is None:
            return outcomes
        time.sleep(countdown)
    return outcomes


def test_the_signature_verifies_with_the_documented_algorithm(hooks, receiver, uid):
    client, secret, delivery_id = one_delivery(hooks, uid, receiver.url)

    assert run_until_final(client, delivery_id) == ["delivered"]

    [request] = receiver.received
    event = Webhook(secret).verify(request.body, request.headers)
    assert request.headers["webhook-id"] == delivery_id
    assert event["type"] == "batch.completed" and event["data"] == {"batch_id": uid}
    assert set(event) == {"id", "type", "created_at", "data"}
    assert request.headers["webhook-signature"].startswith("v1,")
    assert hooks.delivery(client, delivery_id)["status"] == "delivered"


def test_500_twice_then_200_is_delivered_once_after_three_attempts(hooks, receiver, uid):
    receiver.script = [500, 500, 200]
    client, _, delivery_id = one_delivery(hooks, uid, receiver.url)

    assert run_until_final(client, delivery_id) == ["retry", "retry", "delivered"]

    assert len(receiver.received) == 3
    assert {r.headers["webhook-id"] for r in receiver.received} == {delivery_id}
    assert len({r.body for r in receiver.received}) == 1
    log = hooks.delivery(client, delivery_id)
    assert (log["status"], log["attempts"], log["last_status_code"]) == ("delivered", 3, 200)
    assert attempt_delivery(LOOPBACK, client, delivery_id) == ("done", None)  # never sent again
    assert len(receiver.received) == 3


def test_an_attempt_recorded_twice_counts_once(hooks, receiver, uid):
    """The store client replays a transaction whose answer a Redis restart lost: the replay must
    not count a second attempt (the count is written, not incremented)."""
    receiver.script = [500, 200]
    client, _, delivery_id = one_delivery(hooks, uid, receiver.url)
    assert run_until_final(client, delivery_id, limit=1) == ["retry"]

    now_ms = int(time.time() * 1000)
    hooks.end_attempt(client, delivery_id, "pending", 500, "HTTP 500", now_ms, now_ms,
                      attempts=1)  # the replay

    assert hooks.delivery(client, delivery_id)["attempts"] == 1
    assert run_until_final(client, delivery_id) == ["delivered"]
    assert hooks.delivery(client, delivery_id)["attempts"] == 2 == len(receiver.received)


@pytest.mark.parametrize("status", [410, 400, 404, 301])
def test_other_answers_are_not_retried(hooks, receiver, uid, status):
    receiver.script = [status, 200]
    client, _, delivery_id = one_delivery(hooks, uid, receiver.url)

    assert run_until_final(client, delivery_id) == ["failed"]

    assert len(receiver.received) == 1
    log = hooks.delivery(client, delivery_id)
    assert (log["status"], log["last_status_code"], log["next_attempt_at"]) == ("failed", status, None)


def test_a_timeout_is_retried(hooks, receiver, uid):
    receiver.script = [("sleep", 1.5, 200), 200]
    client, _, delivery_id = one_delivery(hooks, uid, receiver.url)

    assert run_until_final(client, delivery_id) == ["retry", "delivered"]

    log = hooks.delivery(client, delivery_id)
    assert (log["status"], log["attempts"]) == ("delivered", 2)
    assert receiver.received[0].headers["webhook-id"] == receiver.received[1].headers["webhook-id"]


def test_connection_refused_is_retried(hooks, uid):
    closed = Receiver().start()
    url = closed.url
    closed.stop()
    client, _, delivery_id = one_delivery(hooks, uid, url)

    outcome, countdown = attempt_delivery(LOOPBACK, client, delivery_id)

    assert outcome == "retry" and countdown is not None
    assert hooks.delivery(client, delivery_id)["status"] == "pending"


def test_429_honours_retry_after(hooks, receiver, uid):
    receiver.script = [(429, {"Retry-After": "7"})]
    client, _, delivery_id = one_delivery(hooks, uid, receiver.url)

    outcome, countdown = attempt_delivery(LOOPBACK, client, delivery_id)

    assert outcome == "retry" and countdown >= 7
    assert attempt_delivery(LOOPBACK, client, delivery_id) == ("not-due", None)


def test_retries_stop_when_the_window_is_over(hooks, receiver, uid):
    receiver.script = [503]
    client, _, delivery_id = one_delivery(hooks, uid, receiver.url)
    short = replace(LOOPBACK, webhook_retry_window_s=1, webhook_backoff_base_s=2, webhook_backoff_max_s=2)

    assert attempt_delivery(short, client, delivery_id) == ("failed", None)
    assert "retry window over" in hooks.delivery(client, delivery_id)["last_error"]


def test_the_ssrf_guard_refuses_loopback_before_connecting(hooks, receiver, uid):
    client, _, delivery_id = one_delivery(hooks, uid, receiver.url)
    guarded = replace(LOOPBACK, webhooks_allow_private=False)

    assert attempt_delivery(guarded, client, delivery_id) == ("refused", None)

    assert receiver.received == []  # no connection was made
    log = hooks.delivery(client, delivery_id)
    assert log["status"] == "refused" and "loopback" in log["last_error"]


def test_during_a_rotation_both_secrets_sign(hooks, receiver, uid):
    client, old_secret, delivery_id = one_delivery(hooks, uid, receiver.url)
    endpoint_id = hooks.delivery(client, delivery_id)["endpoint_id"]
    new_secret = hooks.rotate_secret(client, endpoint_id, grace_s=60)["secret"]

    assert run_until_final(client, delivery_id) == ["delivered"]

    [request] = receiver.received
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (old_secret, new_secret):
        Webhook(secret).verify(request.body, request.headers)


def test_after_the_grace_period_only_the_new_secret_signs(hooks, receiver, uid):
    client, _, delivery_id = one_delivery(hooks, uid, receiver.url)
    endpoint_id = hooks.delivery(client, delivery_id)["endpoint_id"]
    new_secret = hooks.rotate_secret(client, endpoint_id, grace_s=0)["secret"]

    run_until_final(client, delivery_id)

    [request] = receiver.received
    assert request.headers["webhook-signature"].count("v1,") == 1
    Webhook(new_secret).verify(request.body, request.headers)


def test_an_event_is_emitted_once_per_fact(hooks, uid):
    client = f"t{uid}"
    hooks.add_endpoint(client, "https://a.example/hook", ["batch.completed"], "")
    hooks.add_endpoint(client, "https://b.example/hook", ["batch.completed"], "")

    first = hooks.emit(client, "batch.completed", "batch:x", {"n": 1}, 0)
    again = hooks.emit(client, "batch.completed", "batch:x", {"n": 2}, 0)

    assert first[0] and not again[0]
    assert len(first[1]) == 2 and again[1] == first[1]
    assert hooks.event_body(client, first[1][0]) == hooks.event_body(client, first[1][1])


def test_a_deleted_endpoint_fails_its_pending_deliveries(hooks, receiver, uid):
    client, _, delivery_id = one_delivery(hooks, uid, receiver.url)
    hooks.delete_endpoint(client, hooks.delivery(client, delivery_id)["endpoint_id"])

    assert attempt_delivery(LOOPBACK, client, delivery_id) == ("failed", None)
    assert receiver.received == []


def test_backoff_doubles_with_jitter_and_is_capped():
    settings = replace(LOOPBACK, webhook_backoff_base_s=10, webhook_backoff_max_s=3600)
    for attempt, full in ((1, 10), (2, 20), (5, 160), (20, 3600)):
        assert full / 2 <= backoff_s(settings, attempt) <= full
    assert backoff_s(settings, 1, retry_after=120) == 120


def test_the_sweeper_resends_a_delivery_no_message_carries(hooks, uid, monkeypatch):
    """A lost delivery message (broker wiped, emitter killed before sending) is re-sent once by
    the sweep, then left to that message for the grace period."""
    import payouts_tasks.webhooks as tasks_webhooks

    client = f"t{uid}"
    hooks.add_endpoint(client, "https://example.com/hooks", ["batch.completed"], "")
    _, [delivery_id] = hooks.emit(client, "batch.completed", f"batch:{uid}", {"batch_id": uid}, 0)
    sent = []
    monkeypatch.setattr(tasks_webhooks.deliver, "delay", lambda *args: sent.append(args))

    tasks_webhooks.redrive_due()
    tasks_webhooks.redrive_due()

    assert sent.count((client, delivery_id)) == 1


# --- issue 20: a receiver cannot hold an attempt, every attempt ends with an outcome ----------

def test_a_trickling_receiver_is_cut_at_the_attempts_deadline(hooks, receiver, uid):
    """One byte every 0.2 s never trips a 0.5 s read timeout; the attempt's wall-clock deadline
    (PAYOUTS_WEBHOOK_TIMEOUT_S) ends it anyway, and it is recorded and retried."""
    receiver.script = [("trickle", 0.2), 200]
    client, _, delivery_id = one_delivery(hooks, uid, receiver.url)
    started = time.monotonic()

    outcome, countdown = attempt_delivery(LOOPBACK, client, delivery_id)

    assert (outcome, countdown is not None) == ("retry", True)
    assert time.monotonic() - started < 3 * LOOPBACK.webhook_timeout_s  # not the 400 s trickle
    log = hooks.delivery(client, delivery_id)
    assert (log["status"], log["attempts"]) == ("pending", 1)
    assert "DeadlinePassed" in log["last_error"]
    assert wait_for(lambda: receiver.hung_up, 5, "the sender hanging up")
    assert run_until_final(client, delivery_id) == ["delivered"]


@pytest.mark.parametrize("retry_after", ["9" * 400, "99999999999", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_an_absurd_retry_after_is_clamped_and_the_attempt_recorded(hooks, receiver, uid, retry_after):
    """A 400-digit Retry-After was infinity: int(inf) raised, no outcome was recorded and the
    sweeper re-sent the delivery every sweep for 30 days. Now it asks past the retry window,
    so the delivery fails for good, with its attempt counted."""
    receiver.script = [(503, {"Retry-After": retry_after})]
    client, _, delivery_id = one_delivery(hooks, uid, receiver.url)

    assert attempt_delivery(LOOPBACK, client, delivery_id) == ("failed", None)

    log = hooks.delivery(client, delivery_id)
    assert (log["status"], log["attempts"], log["last_status_code"]) == ("failed", 1, 503)
    assert "retry window over" in log["last_error"]
    assert hooks.client.zscore(DUE, f"{client}:{delivery_id}") is None


def test_an_attempt_that_breaks_still_records_an_outcome(hooks, receiver, uid, monkeypatch):
    """Whatever goes wrong between sending and recording, the attempt ends pending with its
    error and a next attempt, never silently."""
    import payouts_tasks.webhooks as tasks_webhooks

    client, _, delivery_id = one_delivery(hooks, uid, receiver.url)

    def broken(*_args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(tasks_webhooks, "_retry_after_s", broken)
    receiver.script = [503]

    assert attempt_delivery(LOOPBACK, client, delivery_id)[0] == "retry"
    log = hooks.delivery(client, delivery_id)
    assert (log["status"], log["attempts"]) == ("pending", 1)
    assert "ZeroDivisionError" in log["last_error"]


def test_a_done_delivery_leaves_the_due_set(hooks, receiver, uid):
    """A delivery that ended meanwhile (delivered by another message, failed) is removed from
    the sweeper's due set by the next message that finds it done, instead of every sweep."""
    client, _, delivery_id = one_delivery(hooks, uid, receiver.url)
    assert run_until_final(client, delivery_id) == ["delivered"]
    member = f"{client}:{delivery_id}"
    hooks.client.zadd(DUE, {member: 0})  # as a redeliver racing the delivery leaves it

    assert attempt_delivery(LOOPBACK, client, delivery_id) == ("done", None)
    assert hooks.client.zscore(DUE, member) is None
    assert len(receiver.received) == 1


def test_the_previous_secret_is_gone_after_its_grace(hooks, receiver, uid):
    """Redis expires the replaced secret with its grace period: nothing keeps it afterwards."""
    client, old_secret, delivery_id = one_delivery(hooks, uid, receiver.url)
    endpoint_id = hooks.delivery(client, delivery_id)["endpoint_id"]
    hooks.rotate_secret(client, endpoint_id, grace_s=1)
    previous_key = f"payouts:webhook:previous:{client}:{endpoint_id}"
    assert hooks.client.get(previous_key) == old_secret.encode()

    wait_for(lambda: not hooks.client.exists(previous_key), 3, "the previous secret expiring")

    stored = [v.decode() for v in hooks.client.hvals(f"payouts:webhook:endpoints:{client}")]
    assert not any(old_secret in v for v in stored)
    assert run_until_final(client, delivery_id) == ["delivered"]
    assert receiver.received[0].headers["webhook-signature"].count("v1,") == 1


def test_one_clients_slow_receivers_take_at_most_its_in_flight_cap(hooks, uid):
    """With a cap of 2, a client's third concurrent attempt is throttled (asked again shortly,
    no attempt counted) while another client's delivery is sent at once."""
    slow = Receiver(script=[("sleep", 1.0, 200)]).start()
    fast = Receiver().start()
    try:
        capped = replace(LOOPBACK, webhook_timeout_s=3, webhook_inflight_per_client=2)
        client = f"t{uid}"
        hooks.add_endpoint(client, slow.url, ["batch.completed"], "")
        ids = [hooks.emit(client, "batch.completed", f"batch:{uid}-{i}", {}, 0)[1][0] for i in range(3)]
        other, _, other_id = one_delivery(hooks, f"o{uid}", fast.url)
        results = {}
        threads = [threading.Thread(target=lambda d=d: results.setdefault(
            d, attempt_delivery(capped, client, d))) for d in ids[:2]]
        for thread in threads:
            thread.start()
        slow.wait_for(2)

        outcome, countdown = attempt_delivery(capped, client, ids[2])
        assert outcome == "throttled" and 0 < countdown <= 4
        assert hooks.delivery(client, ids[2])["attempts"] == 0
        assert attempt_delivery(capped, other, other_id) == ("delivered", None)

        for thread in threads:
            thread.join()
        assert [results[d][0] for d in ids[:2]] == ["delivered", "delivered"]
        assert attempt_delivery(capped, client, ids[2]) == ("delivered", None)  # slots released
    finally:
        slow.stop()
        fast.stop()


def batch_with_delivery(hooks, store, receiver, uid) -> tuple[BatchRef, str, str]:
    """(batch, client, delivery id): an accepted batch and one delivery of its batch event."""
    client = f"t{uid}"
    ref = BatchRef(client, uid)
    store.create_batch(ref, fingerprint({"u": uid}), [Order(0, f"w-{uid}", "u", 1, "a@b.com", "a***")],
                       lease_token="t")
    _, _, delivery_id = one_delivery(hooks, uid, receiver.url)
    return ref, client, delivery_id


def batch_trail(store, ref) -> list[dict]:
    """The batch's batch-level events, in sequence: those still in the outbox and those the
    session's archiver (started by an earlier test, it drains the session outbox for good) has
    already moved to the ledger, in the outbox's field names. The outbox first: the archiver
    commits before it deletes, so what left the outbox by then is in the ledger when read next
    (read the other way round, an event archived in between was in neither)."""
    waiting = [json.loads(fields[b"e"]) for _, fields in store.client.xrange(OUTBOX)]
    archived = {seq: {"t": kind, "i": idx, "s": seq, "a": attempt, "k": code, "d": detail}
                for seq, idx, kind, attempt, code, detail in ledger_rows(
                    "SELECT seq, idx, type, attempt, code, detail FROM events"
                    " WHERE client = %s AND batch_id = %s AND idx = -1", ref.client, ref.batch_id)}
    trail = archived | {e["s"]: e for e in waiting if e["m"] == ref.member}
    return [trail[seq] for seq in sorted(trail)]


def test_a_batch_events_delivery_outcome_joins_the_batch_trail(hooks, receiver, uid, store):
    """The delivered outcome (after a retry) becomes one batch event in the outbox, in the
    batch's sequence; the retry itself is in the delivery log, not the ledger."""
    receiver.script = [500, 200]
    ref, client, delivery_id = batch_with_delivery(hooks, store, receiver, uid)
    assert run_until_final(client, delivery_id) == ["retry", "delivered"]

    events = batch_trail(store, ref)
    assert [(e["t"], e["i"], e.get("a"), e.get("k")) for e in events] == [
        ("batch.accepted", -1, None, None), ("webhook.delivered", -1, 2, "200")]
    assert events[1]["d"] == {"delivery_id": delivery_id, "event_id": events[1]["d"]["event_id"],
                              "event_type": "batch.completed"}
    assert store.client.hget(batch_keys(ref)[0], "events") == b"2"


class Crash(BaseException):
    """The worker dying: nothing after it runs (BaseException: no handler of the task catches it)."""


@pytest.mark.parametrize(("answer", "status", "event_type"), [(200, "delivered", "webhook.delivered"),
                                                              (410, "failed", "webhook.failed")])
def test_a_crash_right_after_the_outcome_is_recorded_keeps_its_ledger_event(
        hooks, receiver, uid, store, monkeypatch, answer, status, event_type):
    """The worker dies as soon as the delivery's outcome is in Redis: the ledger event is already
    there with it (it was written after it, and lost by such a crash), and the redelivered task
    finds the delivery done and records nothing twice."""
    receiver.script = [answer]
    ref, client, delivery_id = batch_with_delivery(hooks, store, receiver, uid)
    end_attempt = WebhookStore.end_attempt

    def end_then_die(self, *args, **kwargs):
        end_attempt(self, *args, **kwargs)
        raise Crash

    monkeypatch.setattr(WebhookStore, "end_attempt", end_then_die)
    with pytest.raises(Crash):
        attempt_delivery(LOOPBACK, client, delivery_id)
    monkeypatch.undo()

    assert hooks.delivery(client, delivery_id)["status"] == status
    assert [(e["t"], e.get("a")) for e in batch_trail(store, ref)] == [
        ("batch.accepted", None), (event_type, 1)]
    assert attempt_delivery(LOOPBACK, client, delivery_id) == ("done", None)
    assert len(batch_trail(store, ref)) == 2 and len(receiver.received) == 1


def test_an_outcome_recorded_again_adds_no_ledger_event(hooks, receiver, uid, store):
    """The end of an attempt is applied once: the store client's replay of it (a reply lost in a
    Redis restart), or a second worker ending the same attempt (its lease had lapsed), records
    nothing more; the first final outcome stands."""
    ref, client, delivery_id = batch_with_delivery(hooks, store, receiver, uid)
    assert run_until_final(client, delivery_id) == ["delivered"]
    ledger = LedgerEvent(uid, "webhook.delivered", {"delivery_id": delivery_id})

    assert not hooks.end_attempt(client, delivery_id, "delivered", 200, "", attempts=1, ledger=ledger)
    assert not hooks.end_attempt(client, delivery_id, "failed", 503, "HTTP 503 (retry window over)",
                                 attempts=1, ledger=replace(ledger, event_type="webhook.failed"))
    now_ms = int(time.time() * 1000)
    assert not hooks.end_attempt(client, delivery_id, "pending", 503, "HTTP 503", now_ms, now_ms,
                                 attempts=1)

    log = hooks.delivery(client, delivery_id)
    assert (log["status"], log["attempts"], log["last_status_code"]) == ("delivered", 1, 200)
    assert [e["t"] for e in batch_trail(store, ref)] == ["batch.accepted", "webhook.delivered"]
    assert store.client.hget(batch_keys(ref)[0], "events") == b"2"
    assert hooks.client.zscore(DUE, f"{client}:{delivery_id}") is None

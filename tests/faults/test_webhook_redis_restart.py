"""A batch.completed delivery survives a Redis restart (issue 13): real API, worker, beat and Redis
(append-only file on) in subprocesses, real receivers on 127.0.0.1.

Everything a pending delivery needs lives in Redis: the delivery hash, the event body it signs,
the due set the sweeper reads, and (on the Redis broker) the task message of a countdown retry.
Redis is stopped cleanly (SIGTERM flushes the AOF) and started again on its port and data, as
an operator's restart does; the receiver is healed after it; the event must arrive once it is,
under one delivery id, correctly signed, every request counted in the delivery log, and the
other client's receiver must get nothing.

Redis broker only: there the restart takes the broker down with the state, so a retry message
held by the worker is at stake too. On RabbitMQ the message outlives a Redis restart (quorum
queue), which leaves the same state checks with one risk fewer, at twice the run time.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
from standardwebhooks import Webhook

from tests.conftest import API_KEY, OTHER_KEY, wait_for
from tests.faults.stack import items
from tests.webhook_receiver import Receiver

ENV = {
    # Loopback delivery is for development and tests only (refused in production).
    "PAYOUTS_WEBHOOKS_ALLOW_HTTP": "true", "PAYOUTS_WEBHOOKS_ALLOW_PRIVATE": "true",
    "PAYOUTS_WEBHOOK_TIMEOUT_S": "5",
}
# How the retry after the failed first attempt is carried through the restart. The countdown
# limit is half the stack's visibility timeout (10 s): 5 s.
RETRY_PATHS = {
    # 6..12 s: longer than a countdown may be, so no task message carries it, only the due set
    # in Redis, which the sweeper (beat, every second) reads.
    "due-set": {"PAYOUTS_WEBHOOK_BACKOFF_BASE_S": "12", "PAYOUTS_WEBHOOK_BACKOFF_MAX_S": "12"},
    # 2..4 s: a countdown message, taken by the worker (unacked, waiting in its memory) when
    # Redis, its broker, goes away. Celery drops a waiting countdown on a lost connection; the
    # unacked copy survives in Redis, but the worker brought it back late or not at all (still
    # unacked 15 s past the 10 s visibility timeout in one run, redelivered after ~28 s in
    # another), so the due set is the backstop: the sweeper sends it once its grace (next
    # attempt + 60 s + 3 x the 1 s timeout) is over. This case takes 30 to 80 s.
    "countdown": {"PAYOUTS_WEBHOOK_BACKOFF_BASE_S": "4", "PAYOUTS_WEBHOOK_BACKOFF_MAX_S": "4",
                  "PAYOUTS_WEBHOOK_TIMEOUT_S": "1"},
}


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


class HeldAnswer(list):
    """A receiver script whose answers wait for `release`: the receiver records the request
    first, so the test sees it arrive while the delivery is still in flight."""

    def __init__(self, status: int):
        super().__init__([status])
        self.release = threading.Event()
        self.answered = threading.Event()

    def __getitem__(self, index):
        assert self.release.wait(120), "the held answer was never released"
        self.answered.set()
        return super().__getitem__(index)


class Scenario:
    """One client's endpoint on `receiver`, another client's on `bystander`, and a batch of the
    first client's that completes."""

    def __init__(self, stack, receiver: Receiver, bystander: Receiver):
        self.stack, self.receiver, self.bystander = stack, receiver, bystander
        self.hook = self.register(API_KEY, receiver.url)
        self.other_hook = self.register(OTHER_KEY, bystander.url)
        assert stack.post("wh-restart", items("whr", 5)).status_code == 202

    def register(self, key: str, url: str) -> dict:
        answer = requests.post(f"{self.stack.api_url}/api/webhooks", headers=auth(key), timeout=10,
                               json={"url": url, "events": ["batch.completed"]})
        assert answer.status_code == 201, answer.text
        return answer.json()

    def log(self, key: str = API_KEY, endpoint_id: str | None = None) -> requests.Response:
        return requests.get(f"{self.stack.api_url}/api/webhooks/{endpoint_id or self.hook['id']}"
                            "/deliveries", headers=auth(key), timeout=10)

    def delivery(self) -> dict | None:
        answer = self.log()
        answer.raise_for_status()
        found = answer.json()["deliveries"]
        assert len(found) <= 1, found  # one event, one endpoint: one delivery
        return found[0] if found else None

    def restart_redis(self) -> None:
        self.stack.stop_redis()
        self.stack.start_redis_again()

    def assert_delivered_once(self, timeout: float) -> dict:
        delivered = wait_for(lambda: (d := self.delivery()) and d["status"] == "delivered" and d,
                             timeout, "the delivery after the restart")
        assert delivered["last_status_code"] == 200
        received = self.receiver.received
        # Every request, before and after the restart, is one delivery id, and each is counted.
        assert {r.headers["webhook-id"] for r in received} == {delivered["id"]}
        assert delivered["attempts"] == len(received)
        for request in received:
            event = Webhook(self.hook["secret"]).verify(request.body, request.headers)
            assert event["type"] == "batch.completed"
            assert event["data"]["batch_id"] == "wh-restart"
            assert event["data"]["successful"] == 5
        # Tenancy: the other client's receiver got nothing, its log is empty, and our endpoint's
        # log answers it like an unknown one.
        assert self.bystander.received == []
        other_log = self.log(OTHER_KEY, self.other_hook["id"])
        assert other_log.status_code == 200 and other_log.json()["deliveries"] == []
        assert self.log(OTHER_KEY).status_code == 404
        return delivered


@pytest.fixture
def receivers():
    started = [Receiver([500]).start(), Receiver([200]).start()]
    yield started
    for receiver in started:
        receiver.stop()


@pytest.mark.parametrize("retry_path", RETRY_PATHS)
def test_pending_delivery_survives_a_redis_restart(make_stack, receivers, retry_path):
    receiver, bystander = receivers
    stack = make_stack("redis", **{**ENV, **RETRY_PATHS[retry_path]})
    stack.start_service(webhooks=True)
    scenario = Scenario(stack, receiver, bystander)
    failing = wait_for(lambda: (d := scenario.delivery()) and d["attempts"] >= 1 and d, 60,
                       "a failed first attempt")
    assert failing["status"] == "pending" and failing["last_status_code"] == 500

    scenario.restart_redis()
    before = len(receiver.received)
    receiver.script = [200]

    delivered = scenario.assert_delivered_once(timeout=150)
    assert before >= 1 and delivered["attempts"] > before  # failed before, delivered after


def test_delivery_in_flight_when_redis_stops(make_stack, receivers):
    """The worst line: the receiver answers 200 while Redis is down, so the worker cannot
    record it until Redis is back. The store client retries through the restart, so the answer
    is recorded once: one request, one attempt, nothing sent again. (Down for longer than those
    retries, about a minute, the record would be lost and the sweeper would send the delivery
    again under its id: at least once, as documented.)"""
    receiver, bystander = receivers
    held = HeldAnswer(200)
    receiver.script = held
    stack = make_stack("redis", **{**ENV, **RETRY_PATHS["due-set"]})
    stack.start_service(webhooks=True)
    scenario = Scenario(stack, receiver, bystander)
    receiver.wait_for(1, timeout=60)  # in flight: the worker waits for the answer

    stack.stop_redis()
    held.release.set()
    assert held.answered.wait(10)
    time.sleep(1)  # ordering only: the worker reads the answer while Redis is still down
    stack.start_redis_again()

    scenario.assert_delivered_once(timeout=150)

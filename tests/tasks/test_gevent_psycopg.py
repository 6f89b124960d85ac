"""psycopg in a gevent worker: a PostgreSQL query (settle's archived duplicate, the sweeper's
retention check) must let the worker's other greenlets run while it waits on the socket."""

from __future__ import annotations

import json

import redis
from celery import Celery

from payouts_devstack import Stack
from tests.conftest import wait_for


def test_other_greenlets_run_while_a_query_waits_in_a_gevent_worker(tmp_path, uid):
    """The Procfile's worker (`payouts-worker --pool gevent`, Celery's own monkey-patching at its
    start) runs `SELECT pg_sleep(1)` on the ledger pool while a greenlet ticks every 10 ms: about
    100 ticks if psycopg yields to the gevent hub, none if its wait blocks the process.

    The stack has a Redis of its own: on the session's, the session worker (which lacks the probe
    task) would take the message from the default queue and drop it as unregistered."""
    key = f"tests:gevent-probe:{uid}"
    with Stack(tmp_path) as stack:
        stack.start_redis()
        stack.start_worker(extra=["--include", "tests.gevent_probe"])
        store = redis.Redis.from_url(stack.redis_url)
        Celery(broker=stack.redis_url).send_task("tests.gevent_probe.ticks_during_a_slow_query",
                                                 args=[key, 1.0])
        wait_for(lambda: store.exists(key), 60, "the probe task's answer")
        probe = json.loads(store.get(key))
        store.close()

    assert probe["seconds"] >= 1.0
    assert probe["ticks"] >= 50, probe
    assert probe["selector"].startswith("gevent."), probe  # connecting yields too (wait_conn)

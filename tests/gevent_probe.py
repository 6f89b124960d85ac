"""A task that only tests load into a real gevent worker (`--include tests.gevent_probe`): it runs
a slow PostgreSQL query through the ledger pool while another greenlet counts ticks, and leaves
the counts in Redis for the test."""

from __future__ import annotations

import json
import time

import gevent
import psycopg.waiting

from payouts_core.ledger.reads import shared
from payouts_core.resources import store_client
from payouts_core.settings import get_settings
from payouts_tasks.celery_app import app

TICK_S = 0.01


@app.task(name="tests.gevent_probe.ticks_during_a_slow_query", ignore_result=True)
def ticks_during_a_slow_query(key: str, seconds: float) -> None:
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        while True:
            gevent.sleep(TICK_S)
            ticks += 1

    ticker = gevent.spawn(tick)
    gevent.sleep(5 * TICK_S)  # the ticker runs before the query starts
    started, before = time.monotonic(), ticks
    with shared(get_settings().ledger.database_url).pooled() as conn:
        conn.execute("SELECT pg_sleep(%s)", (seconds,))
    during, took = ticks - before, time.monotonic() - started
    ticker.kill()
    store_client().set(key, json.dumps({"ticks": during, "seconds": took,
                                        "wait": psycopg.waiting.wait.__name__,
                                        "selector": psycopg.waiting.DefaultSelector.__module__}),
                       ex=300)

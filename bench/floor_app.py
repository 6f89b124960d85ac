"""The framework's floor: a plain Celery app with Celery's default settings and no-op tasks.

`celery -A bench.floor_app worker` runs it; BENCH_FLOOR_URL is its broker and result backend
(the benchmark points it at another database of the same Redis, so it never meets product queues).
"""

import os

from celery import Celery

_url = os.environ.get("BENCH_FLOOR_URL", "redis://127.0.0.1:6379/1")
app = Celery("bench_floor", broker=_url, backend=_url)


@app.task(name="floor.noop")
def noop() -> None:
    return None


@app.task(name="floor.done")
def done(results: list) -> int:
    return len(results)

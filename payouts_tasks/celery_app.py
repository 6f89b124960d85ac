"""The Celery application: `celery -A payouts_tasks worker` finds it as `payouts_tasks.app`."""

import importlib
import logging
import math
import sys

import psycopg.waiting
from celery import Celery, Task
from celery.signals import (
    celeryd_init,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_shutdown,
)

from payouts_core import tracing
from payouts_core.ledger.schema import SchemaOutdated, check_schema_at_start
from payouts_core.logs import configure_logging, task_context_var
from payouts_core.settings import get_settings
from payouts_tasks.routing import ClientQueues, consume_clients_from_start
from payouts_tasks.tracing import instrument_celery, quiet_outside_tasks


class PayoutsTask(Task):
    """Countdowns rounded up to whole seconds on quorum queues: Celery 5.7's native delayed
    delivery truncates a delay to whole seconds and refuses one under 1 s with ValueError
    (`calculate_routing_key`), which would turn settle's sub-second retries into failures."""

    def apply_async(self, args=None, kwargs=None, task_id=None, producer=None, link=None,
                    link_error=None, shadow=None, **options):
        countdown = options.get("countdown")
        if countdown and countdown > 0 and self.app.conf.task_default_queue_type == "quorum":
            options["countdown"] = max(1, math.ceil(countdown))
        return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow, **options)


app = Celery(
    "payouts_tasks",
    task_cls=PayoutsTask,
    include=["payouts_tasks.settle", "payouts_tasks.aggregate", "payouts_tasks.sweeper",
             "payouts_tasks.batches", "payouts_tasks.metrics", "payouts_tasks.loop_lag",
             "payouts_tasks.webhooks"],
)
app.config_from_object("celeryconfig")
# Settlement workers consume every client's settle queue, a new client's within 1-3 s.
app.steps["consumer"].add(ClientQueues)


@celeryd_init.connect
def _client_queues_from_start(options=None, **_kwargs) -> None:
    consume_clients_from_start(app, options or {})


# Celery's own line per task received and succeeded: two INFO lines per item that say less than
# our `settle outcome` line, at a cost in worker CPU (docs/BENCHMARKS.md). Shown at LOG_LEVEL=debug.
PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


@setup_logging.connect
def _json_logs(**_kwargs) -> None:
    """Workers and beat log JSON lines like the API (connecting here replaces Celery's setup)."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.log_level != "DEBUG":
        for name in PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@task_prerun.connect
def _log_task_context(task_id=None, task=None, **_kwargs) -> None:
    """Every log line of a task carries its id and name."""
    task_context_var.set({"task_id": task_id, "task_name": task.name})


@task_postrun.connect
def _clear_task_context(**_kwargs) -> None:
    task_context_var.set(None)


@worker_init.connect
def _psycopg_yields_to_gevent(**_kwargs) -> None:
    """psycopg chooses how it waits on its socket when psycopg.waiting is imported: the gevent
    hub's way only if gevent has patched `select` by then (psycopg docs, "Gevent support"). A
    gevent worker imports it halfway through Celery's patch_all: gevent's scan for existing
    locks touches Celery's current_app proxy, whose default app loads `celeryconfig`, which
    imports this package. psycopg then chose its C wait, which held every greenlet of the
    worker for the whole of each query (a 1 s query: 0 ticks of a 10 ms ticker, 100 now:
    tests/tasks/test_gevent_psycopg.py). Its choice is made again once the patch is complete."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        importlib.reload(psycopg.waiting)


# The launcher (payouts-worker) does not restart a child that exits with this: only
# `payouts db upgrade` can fix it.
SCHEMA_OUTDATED_EXIT = 64


@worker_init.connect
def _refuse_outdated_ledger(**_kwargs) -> None:
    """A worker against an older ledger schema would append events the archiver cannot write:
    it refuses to start, naming the command. (Celery logs and swallows exceptions from signal
    handlers, so this exits itself.)"""
    try:
        if not check_schema_at_start(get_settings().ledger.database_url):
            logging.getLogger(__name__).warning(
                "the ledger (DATABASE_URL) cannot be reached: starting anyway, the archiver checks "
                "its schema")
    except SchemaOutdated as exc:
        print(f"worker refused to start: {exc}", file=sys.stderr, flush=True)
        sys.exit(SCHEMA_OUTDATED_EXIT)


@worker_init.connect
def _tracing(**_kwargs) -> None:
    """OpenTelemetry when OTEL_TRACES_EXPORTER names an exporter (payouts_core/tracing.py)."""
    if instrument_celery("payouts-worker"):
        quiet_outside_tasks()


@worker_shutdown.connect
def _flush_spans(**_kwargs) -> None:
    tracing.shutdown()

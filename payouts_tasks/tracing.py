"""Celery's part of the batch trace (payouts_core/tracing.py says how tracing is switched on).

The Celery instrumentation puts each task message's trace context in its headers, so the
publish task, the chord's settle runs, the aggregate (published by the last settle) and the
webhook deliveries all belong to the POST's trace. A settle run gets a span of its own only
while its trace's budget in this process lasts (the first 10, trace_sampling.SettleBudget);
past it, the run keeps its parent's context current (log lines carry the trace id, the
aggregate it may publish hangs from a recorded span) and instrumentation is suppressed inside
it: a span per run plus its ~7 Redis calls cost ~0.2 ms of CPU per item (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from contextvars import ContextVar

from celery.signals import task_postrun, task_prerun

from payouts_core import tracing

SETTLE_TASK = "payouts.settle"
_instrumented = False
# The suppression a finished task left in its greenlet or thread (for the ack that follows).
_after_task: ContextVar[object | None] = ContextVar("payouts_after_task", default=None)


def instrument_celery(service_name: str) -> bool:
    """Tracing for a process that publishes or runs tasks, when OTEL_* switch it on."""
    global _instrumented
    if not tracing.setup(service_name):
        return False
    if not _instrumented:
        # Receivers run in the order they were connected: around the instrumentation's own.
        task_prerun.connect(_end_quiet_after_task, weak=False)
        _batch_instrumentor()().instrument()
        task_postrun.connect(_quiet_after_task, weak=False)
        _instrumented = True
    return True


def _quiet_after_task(**_kwargs) -> None:
    """After a task's span ended, its ack and bookkeeping belong to no trace: suppressed until
    the next task starts in this greenlet or thread (each costed a dropped span per command)."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    quiet = suppress_instrumentation()
    quiet.__enter__()
    _after_task.set(quiet)


def _end_quiet_after_task(**_kwargs) -> None:
    quiet = _after_task.get()
    if quiet is not None:
        _after_task.set(None)
        quiet.__exit__(None, None, None)


def quiet_outside_tasks() -> None:
    """In a worker's main greenlet (the consumer: fetching, acking, the chord counter's polling),
    Redis calls belong to no task's trace, so their spans would be dropped anyway; suppressed,
    they cost nothing. Task greenlets start with a context of their own, not this one."""
    if _instrumented:
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        suppress_instrumentation().__enter__()  # for the life of the process: never left


def _batch_instrumentor():
    from opentelemetry import context, propagate, trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor, celery_getter
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    from payouts_core.trace_sampling import SettleBudget

    class BatchCeleryInstrumentor(CeleryInstrumentor):
        """CeleryInstrumentor, with settle runs past their trace's budget left without a span."""

        budget = SettleBudget()
        unrecorded: dict[str, tuple[object, object]] = {}  # task id -> (context token, suppression)

        def _trace_prerun(self, *args, **kwargs):
            task, task_id = kwargs.get("task"), kwargs.get("task_id")
            if task is not None and task_id and task.name == SETTLE_TASK:
                parent = propagate.extract(task.request, getter=celery_getter)
                span_context = trace.get_current_span(parent).get_span_context()
                if span_context.trace_flags.sampled and not self.budget.take(span_context.trace_id):
                    token = context.attach(parent)
                    quiet = suppress_instrumentation()
                    quiet.__enter__()
                    self.unrecorded[task_id] = (token, quiet)
                    return
            super()._trace_prerun(*args, **kwargs)

        def _trace_postrun(self, *args, **kwargs):
            skipped = self.unrecorded.pop(kwargs.get("task_id"), None)
            if skipped is None:
                super()._trace_postrun(*args, **kwargs)
                return
            token, quiet = skipped
            quiet.__exit__(None, None, None)
            context.detach(token)

    return BatchCeleryInstrumentor

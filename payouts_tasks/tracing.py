"""Celery's part of the batch trace (payouts_core/tracing.py says how tracing is switched on).

The Celery instrumentation puts each task message's trace context in its headers. The chord's
callback is published by whichever settle task finishes last, inside that settle's span; most
settle spans are unrecorded (trace_sampling.py), so the aggregate would hang from an unrecorded
parent and be dropped with it. A message published from an unrecorded span is therefore
parented on the running task's own (recorded) parent: aggregate, webhooks and settle retries
stay in the batch's trace, attached to spans that were exported.

Inside an unrecorded task span, instrumentation is suppressed: its Redis and HTTP calls would
only make unrecorded spans, at ~20 us each (7 per settle task), measured as most of tracing's
cost per item (docs/BENCHMARKS.md). The trace id stays current, so log lines keep it.
"""

from __future__ import annotations

from celery import current_task
from celery.signals import before_task_publish, task_postrun, task_prerun

from payouts_core import tracing

_instrumented = False
_suppressed: dict[str, object] = {}  # task id -> the suppress_instrumentation() block it entered


def instrument_celery(service_name: str) -> bool:
    """Tracing for a process that publishes or runs tasks, when OTEL_* switch it on."""
    global _instrumented
    if not tracing.setup(service_name):
        return False
    if not _instrumented:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        # Receivers run in the order they were connected: the suppression is entered after the
        # instrumentation's prerun made the task's span current, and left before its postrun
        # ends it (contexts are detached in the reverse order they were attached).
        task_postrun.connect(_end_suppression, weak=False)
        CeleryInstrumentor().instrument()
        task_prerun.connect(_suppress_if_unrecorded, weak=False)
        # After the instrumentation's own receiver, so it runs after its inject().
        before_task_publish.connect(_publish_under_recorded_parent, weak=False)
        _instrumented = True
    return True


def _publish_under_recorded_parent(headers=None, **_kwargs) -> None:
    from opentelemetry import propagate, trace
    from opentelemetry.instrumentation.celery import celery_getter

    if not headers or trace.get_current_span().get_span_context().trace_flags.sampled:
        return
    request = current_task.request if current_task else None
    if request is None:
        return
    parent = propagate.extract(request, getter=celery_getter)
    if trace.get_current_span(parent).get_span_context().trace_flags.sampled:
        propagate.inject(headers, context=parent)


def _suppress_if_unrecorded(task_id=None, **_kwargs) -> None:
    from opentelemetry import trace
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    if task_id and not trace.get_current_span().is_recording():
        block = suppress_instrumentation()
        block.__enter__()
        _suppressed[task_id] = block


def _end_suppression(task_id=None, **_kwargs) -> None:
    block = _suppressed.pop(task_id, None)
    if block is not None:
        block.__exit__(None, None, None)

"""Celery's part of the batch trace (payouts_core/tracing.py says how tracing is switched on).

The Celery instrumentation puts each task message's trace context in its headers. The chord's
callback is published by whichever settle task finishes last, inside that settle's span; most
settle spans are unrecorded (trace_sampling.py), so the aggregate would hang from an unrecorded
parent and be dropped with it. A message published from an unrecorded span is therefore
parented on the running task's own (recorded) parent: aggregate, webhooks and settle retries
stay in the batch's trace, attached to spans that were exported.
"""

from __future__ import annotations

from celery import current_task
from celery.signals import before_task_publish

from payouts_core import tracing

_instrumented = False


def instrument_celery(service_name: str) -> bool:
    """Tracing for a process that publishes or runs tasks, when OTEL_* switch it on."""
    global _instrumented
    if not tracing.setup(service_name):
        return False
    if not _instrumented:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()
        # Connected after the instrumentation's own receiver, so it runs after its inject().
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

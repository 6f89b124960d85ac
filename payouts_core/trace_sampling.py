"""The sampler that keeps a 10,000-item batch one readable trace (imported only with tracing on)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

SETTLE_SPAN = "run/payouts.settle"  # the Celery instrumentation's name for a settle task run
SETTLE_SPANS_PER_TRACE = 10
TRACES_REMEMBERED = 4096  # traces whose settle budget a process keeps (least recently used go)


class SettleBudgetSampler(Sampler):
    """Records at most SETTLE_SPANS_PER_TRACE settle runs of a sampled trace per process (their
    Redis and provider calls follow them), and drops Redis calls made outside any span (the
    broker's polling, /metrics' reads). Everything else is the configured sampler's decision.

    A dropped settle span keeps the trace id (its log lines carry it) but is not exported.
    """

    def __init__(self, delegate: Sampler):
        self.delegate = delegate
        self._used: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                      trace_state=None) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and kind == trace.SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        if name == SETTLE_SPAN and parent.is_valid and parent.trace_flags.sampled \
                and not self._take(trace_id):
            return SamplingResult(Decision.DROP, trace_state=parent.trace_state)
        return self.delegate.should_sample(parent_context, trace_id, name, kind, attributes, links,
                                           trace_state)

    def _take(self, trace_id: int) -> bool:
        """One of this trace's settle spans, if its budget in this process is not spent."""
        with self._lock:
            used = self._used.pop(trace_id, 0)
            self._used[trace_id] = used + 1
            if len(self._used) > TRACES_REMEMBERED:
                self._used.popitem(last=False)
            return used < SETTLE_SPANS_PER_TRACE

    def get_description(self) -> str:
        return f"SettleBudget{{{SETTLE_SPANS_PER_TRACE},{self.delegate.get_description()}}}"

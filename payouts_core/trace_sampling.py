"""What keeps a 10,000-item batch one readable trace (imported only with tracing on)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

SETTLE_SPANS_PER_TRACE = 10
TRACES_REMEMBERED = 4096  # traces whose settle budget a process keeps (least recently used go)


class SettleBudget:
    """How many settle runs of each trace this process has recorded: the first
    SETTLE_SPANS_PER_TRACE are, the others run without a span of their own (tracing.py)."""

    def __init__(self, per_trace: int = SETTLE_SPANS_PER_TRACE):
        self.per_trace = per_trace
        self._used: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, trace_id: int) -> bool:
        """One of this trace's recorded settle runs, if its budget in this process is not spent."""
        with self._lock:
            used = self._used.pop(trace_id, 0)
            self._used[trace_id] = used + 1
            if len(self._used) > TRACES_REMEMBERED:
                self._used.popitem(last=False)
            return used < self.per_trace


class DropStrayClientSpans(Sampler):
    """Drops client calls made outside any span (the broker's polling, a scrape's Redis reads:
    a trace each, every few milliseconds); everything else is the configured sampler's call."""

    def __init__(self, delegate: Sampler):
        self.delegate = delegate

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                      trace_state=None) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if kind == trace.SpanKind.CLIENT and not parent.is_valid:
            return SamplingResult(Decision.DROP)
        return self.delegate.should_sample(parent_context, trace_id, name, kind, attributes, links,
                                           trace_state)

    def get_description(self) -> str:
        return f"DropStrayClientSpans{{{self.delegate.get_description()}}}"

"""A batch's wall time against its critical path (issue 20 item 4), from the product's own events.

The end of a seed-profile batch is set by its slowest item, not by a rate: an item's critical
path is the sum of its provider calls (`duration_ms` of each paid / failed / `provider_error`
event) and of its backoffs (`retry_in_s` of each `provider_error` with next=retry); the batch's
is the largest over its items. Everything else on an item's way (its wait for a greenlet, a
retry's wait in the queue beyond its countdown, Redis round trips, the chord callback) is what
scheduling adds, and the ratio wall / critical path measures it. The events are the outbox's
(`payouts:outbox`, written by the Lua scripts with each state change): the bench's product rows
run without the archiver, so a batch's events are all still there when it completes.

Not on the path because the events do not carry it: a lookup's own call (after the attempts ran
out: the simulator's lookup is one Redis GET), the countdown before asking again about an
`unknown` outcome, and a call that never answered (worker killed, time limit). They are counted
(`lookups`, `unknown_lookups`, `unanswered_calls`) so a row where they occur says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import redis

from bench.report import percentile
from payouts_core.store import OUTBOX, BatchRef, batch_keys

FINAL_EVENTS = ("paid", "failed", "duplicate")
_CHUNK = 5000


@dataclass
class ItemPath:
    """One item's provider time and backoffs, and when (server ms) it started and ended."""

    index: int
    attempts: int = 0
    provider_ms: float = 0.0
    backoff_ms: float = 0.0
    calls: int = 0  # provider_call events
    answers: int = 0  # calls whose answer recorded a duration
    lookups: int = 0  # answers from a lookup (attempts used up)
    unknown_lookups: int = 0
    first_call_at: int | None = None
    final_at: int | None = None
    outcome: str | None = None
    retry_wait_ms: float = 0.0  # retries' wait beyond their backoff: error -> next call - backoff
    _retry_from: list[tuple[int, float]] = field(default_factory=list, repr=False)

    @property
    def path_ms(self) -> float:
        return self.provider_ms + self.backoff_ms


def outbox_tail(client: redis.Redis) -> str:
    """The outbox's newest entry id ("-" when empty): read before a POST, the batch's events
    are the entries after it."""
    newest = client.xrevrange(OUTBOX, count=1)
    if not newest:
        return "-"
    entry_id = newest[0][0]
    return "(" + (entry_id.decode() if isinstance(entry_id, bytes) else entry_id)


def batch_events(client: redis.Redis, ref: BatchRef, after: str = "-") -> list[dict]:
    """The batch's events in the outbox after entry `after` (see outbox_tail), in stream order."""
    member, start, found = ref.member, after, []
    while True:
        entries = client.xrange(OUTBOX, min=start, max="+", count=_CHUNK)
        for _, fields in entries:
            event = json.loads(fields.get(b"e", fields.get("e")))
            if event.get("m") == member:
                found.append(event)
        if len(entries) < _CHUNK:
            return found
        last = entries[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else last)


def item_paths(events: list[dict]) -> dict[int, ItemPath]:
    """Each item's path from its events (batch events, index -1, are left out)."""
    items: dict[int, ItemPath] = {}
    for event in events:
        index = event.get("i", -1)
        if index is None or index < 0:
            continue
        item = items.setdefault(index, ItemPath(index))
        kind, at = event["t"], event["at"]
        detail = event.get("d") if isinstance(event.get("d"), dict) else {}
        if kind == "provider_call":
            item.calls += 1
            item.attempts = max(item.attempts, event.get("a") or 0)
            item.first_call_at = at if item.first_call_at is None else min(item.first_call_at, at)
            for error_at, backoff_ms in item._retry_from:
                item.retry_wait_ms += max(0.0, at - error_at - backoff_ms)
            item._retry_from.clear()
        if "duration_ms" in detail and kind in ("provider_error", *FINAL_EVENTS):
            item.answers += 1
            item.provider_ms += float(detail["duration_ms"])
        if kind == "provider_error" and detail.get("next") == "retry":
            backoff_ms = 1000.0 * float(detail.get("retry_in_s") or 0)
            item.backoff_ms += backoff_ms
            item._retry_from.append((at, backoff_ms))
        if kind == "lookup":
            item.unknown_lookups += 1
        if kind in FINAL_EVENTS:
            item.lookups += detail.get("via") == "lookup"
            item.final_at, item.outcome = at, kind
    return items


def _batch_at(events: list[dict], kind: str) -> int | None:
    return next((e["at"] for e in events if e.get("i") == -1 and e["t"] == kind), None)


def _s(ms: float | None, digits: int = 3) -> float | None:
    return None if ms is None else round(ms / 1000, digits)


def _describe(item: ItemPath, accepted: int) -> dict:
    return {"index": item.index, "outcome": item.outcome, "attempts": item.attempts,
            "provider_ms": round(item.provider_ms), "backoff_ms": round(item.backoff_ms),
            "path_s": _s(item.path_ms),
            "first_call_s": _s(item.first_call_at - accepted) if item.first_call_at else None,
            "final_s": _s(item.final_at - accepted) if item.final_at else None,
            # final - first call - path: Redis round trips and retries' queue wait on its way
            "own_overhead_s": _s(item.final_at - item.first_call_at - item.path_ms)
            if item.final_at and item.first_call_at else None,
            "retry_wait_s": _s(item.retry_wait_ms)}


def _in_flight_peak(items: list[ItemPath]) -> int:
    """The most items at once between their first call and their final event."""
    edges = sorted([(p.first_call_at, 1) for p in items] + [(p.final_at, -1) for p in items],
                   key=lambda e: (e[0], e[1]))
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def _broker_series(samples: list[tuple[float, int, int]], paths: list[ItemPath], accepted: int,
                   every_s: float = 0.5) -> list[list]:
    """[s after accepted, messages queued in the broker, unacknowledged (taken by a worker),
    items started, items in flight] at the harness's samples, about every `every_s`: whether
    items that had not started waited in the broker or inside a worker."""
    series, last = [], None
    for at, queued, unacked in samples:
        at_ms = at * 1000
        if last is not None and at_ms - last < every_s * 1000:
            continue
        last = at_ms
        started = sum(1 for p in paths if p.first_call_at is not None and p.first_call_at <= at_ms)
        running = sum(1 for p in paths if p.first_call_at is not None and p.first_call_at <= at_ms
                      and (p.final_at is None or p.final_at > at_ms))
        series.append([round((at_ms - accepted) / 1000, 2), queued, unacked, started, running])
    return series


def summarise(events: list[dict], items: int, slots: int, expected_events: int | None = None,
              samples: list[tuple[float, int, int]] | None = None) -> dict:
    """The batch's critical path and where its wall time went, in server-side times (ms from
    Redis, or the API's clock for `batch.accepted`: the same host). `slots` = greenlets of the
    workers that ran it, for the capacity bound (provider time of every item / slots).
    `samples`: (epoch s, queued, unacknowledged) broker depths the harness read while it ran."""
    accepted, published = _batch_at(events, "batch.accepted"), _batch_at(events, "batch.published")
    completed = _batch_at(events, "batch.completed")
    paths = item_paths(events)
    problems = []
    if expected_events is not None and len(events) != expected_events:
        problems.append(f"{len(events)} of the batch's {expected_events} events in the outbox "
                        "(archived meanwhile?)")
    if accepted is None or completed is None:
        problems.append("no batch.accepted or batch.completed event in the outbox")
    final = [p for p in paths.values() if p.final_at is not None]
    if len(final) != items:
        problems.append(f"{len(final)} of {items} items have a final event")
    if problems or not final:
        return {"complete": False, "problems": problems, "events": len(events)}

    critical = max(final, key=lambda p: (p.path_ms, -p.index))
    last = max(final, key=lambda p: (p.final_at, -p.index))
    finals = sorted(p.final_at - accepted for p in final)
    starts = sorted(p.first_call_at - accepted for p in final if p.first_call_at is not None)
    wall_ms = completed - accepted
    provider_ms = sum(p.provider_ms for p in paths.values())
    capacity_ms = provider_ms / slots if slots else None
    retried = [p for p in paths.values() if p.retry_wait_ms]
    worst_retry = max(retried, key=lambda p: p.retry_wait_ms, default=None)
    # Had every item, once its first call started, run nothing but its own path, the batch
    # would have ended with this one: wall / this is what retries' queue waits and the rest
    # added; this / critical path is what late starts (items waiting for a greenlet) added.
    started = [p for p in final if p.first_call_at is not None]
    late = max(started, key=lambda p: (p.first_call_at + p.path_ms, -p.index), default=None)
    return {
        "complete": True, "events": len(events), "accepted_at_ms": accepted,
        "accepted_to_completed_s": _s(wall_ms),
        "accepted_to_published_s": _s(published - accepted) if published else None,
        "critical_path_s": _s(critical.path_ms),
        "ratio": round(wall_ms / critical.path_ms, 3) if critical.path_ms else None,
        "set_by": _describe(critical, accepted),
        "start_bound_s": _s(late.first_call_at - accepted + late.path_ms) if late else None,
        "start_bound_by": _describe(late, accepted) if late else None,
        "last_final": _describe(last, accepted),
        "dispatch_per_s": round((len(starts) - 1) / (starts[-1] - starts[0]) * 1000)
        if len(starts) > 1 and starts[-1] > starts[0] else None,
        "in_flight_peak": _in_flight_peak(started),
        "broker_series": _broker_series(samples or [], list(paths.values()), accepted),
        "t95_s": _s(percentile(finals, 0.95)), "t100_s": _s(finals[-1]),
        "completion_lag_s": _s(completed - last.final_at),  # last item final -> chord callback done
        "start_s": {"first": _s(starts[0]) if starts else None, "p50": _s(percentile(starts, 0.5)),
                    "p95": _s(percentile(starts, 0.95)), "max": _s(starts[-1]) if starts else None},
        "retries": sum(p.calls - 1 for p in paths.values() if p.calls > 1),
        "retry_wait_max": _describe(worst_retry, accepted) if worst_retry else None,
        "provider_s_total": _s(provider_ms, 1), "slots": slots,
        "capacity_bound_s": _s(capacity_ms),
        "lookups": sum(p.lookups for p in paths.values()),
        "unknown_lookups": sum(p.unknown_lookups for p in paths.values()),
        "unanswered_calls": sum(max(0, p.calls - p.answers) for p in paths.values()),
    }


def measure(client: redis.Redis, ref: BatchRef, after: str, items: int, slots: int,
            samples: list[tuple[float, int, int]] | None = None) -> dict:
    """summarise() of a completed batch's events, checked against the batch's own event count
    (the `events` field of its hash: a gap means the archiver took some)."""
    expected = client.hget(batch_keys(ref)[0], "events")
    return summarise(batch_events(client, ref, after), items, slots,
                     int(expected) if expected is not None else None, samples)

"""A Prometheus histogram read off a process's exporter, and the bucket holding a quantile of
what it observed between two reads (the archive lag, the workers' loop lag)."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families


def buckets(port: int, metric: str) -> dict[float, float]:
    """Cumulative counts of `metric`'s histogram by upper bound, from 127.0.0.1:`port`/metrics."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {float(s.labels["le"]): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == f"{metric}_bucket"}


def quantile_bound(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The smallest bucket bound holding the fraction `q` of what was observed between two reads."""
    delta = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = delta.get(float("inf"), 0.0)
    if not total:
        return None
    return next(le for le, count in delta.items() if count >= q * total)

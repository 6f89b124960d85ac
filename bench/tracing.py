"""`python -m bench.tracing [--rounds N] [--quick]`: settlement rate with tracing off and on.

Off is the default deployment (no OTEL_* variables). On is OTEL_TRACES_EXPORTER=otlp with the
default sampling (parentbased_always_on, and settle spans kept to 10 per trace per process),
exporting to an OTLP/HTTP receiver in this process, as to a collector. Runs alternate off, on,
off, on..., restarting the API and the workers (one per core) with each setting, so a noisy
neighbour hits both; items/s = items / (POST sent -> every item final, read from Redis), and
the workers' CPU time per item (from /proc), which other machines' load disturbs far less.
Two profiles: zero latency (the workers' CPU is the limit: tracing's cost shows most) and the
seed profile (0.5-2 s, 15 % permanent + 5 % transient failures).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from pathlib import Path

import requests

from bench.processes import BenchStack, default_worker_processes
from bench.scenarios import SEED_FAILURES, make_batch
from payouts_core.store import BatchRef, PayoutStore
from payouts_devstack.otlp_receiver import OtlpReceiver

PROFILES = {  # name: (items, provider settings)
    "zero-latency": (5000, {"PIX_SIM_LATENCY_MS": "0", "PIX_SIM_SEED": "bench"}),
    "seed": (2000, {"PIX_SIM_LATENCY_MS": "500-2000", "PIX_SIM_SEED": "bench", **SEED_FAILURES}),
}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def run_batch(stack: BenchStack, store: PayoutStore, items: int, timeout: float = 300) -> tuple[float, float]:
    """Items per second of one batch, from the POST sent until every item is final, and the
    workers' CPU milliseconds per item meanwhile."""
    pids = [w.pid for w in stack.workers]
    cpu_before = cpu_seconds(pids)
    batch_id = f"trace-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    response = requests.post(f"{stack.api_url}/api/payouts", headers=stack.auth_headers, timeout=120,
                             json=make_batch(batch_id, items))
    response.raise_for_status()
    ref = BatchRef("bench", batch_id)
    while time.perf_counter() - started < timeout:
        progress = store.batch_progress(ref)
        if progress and progress["processed"] == progress["total"]:
            rate = items / (time.perf_counter() - started)
            return rate, (cpu_seconds(pids) - cpu_before) * 1000 / items
        time.sleep(0.05)
    raise RuntimeError(f"batch {batch_id} not final within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs per profile (default 3)")
    parser.add_argument("--quick", action="store_true", help="one round of 200 items per profile")
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated subset of: "
                        + ", ".join(PROFILES))
    parser.add_argument("--without-redis-spans", action="store_true",
                        help="a third mode: on, with OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=redis")
    args = parser.parse_args()
    profiles = {name: PROFILES[name] for name in args.profiles.split(",")}
    receiver = OtlpReceiver()
    on = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    modes = {"off": {}, "on": on}
    if args.without_redis_spans:
        modes["on-noredis"] = {**on, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "redis"}
    processes = default_worker_processes()
    rates: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    stack = BenchStack(concurrency=1000, worker_processes=processes)
    try:
        stack.start_redis()
        store = PayoutStore.from_url(stack.redis_url)
        for profile, (items, provider) in profiles.items():
            items = 200 if args.quick else items
            for _ in range(1 if args.quick else args.rounds):
                for mode, otel in modes.items():
                    env = {**provider, **otel}
                    if stack.api is not None:
                        stack.stop([stack.api])
                    stack.start_api(env=env)
                    stack.ensure_workers(env, processes)
                    rate, ms = run_batch(stack, store, items)
                    rates.setdefault((profile, mode), []).append(rate)
                    cpu.setdefault((profile, mode), []).append(ms)
                    print(f"{profile:13} tracing {mode:10}: {rate:7.1f} items/s, worker CPU "
                          f"{ms:.2f} ms/item", flush=True)
    finally:
        stack.close()
        receiver.stop()
    print(f"\n{processes} worker processes, {len(receiver.spans)} spans received while on\n")
    columns = [f"{m}" + (f" | {m} / off" if m != "off" else "") for m in modes]
    print("| profile | items | items/s " + " | ".join(columns) + " | worker CPU ms/item "
          + " | ".join(columns) + " |")
    print("|---" * (2 + 2 * (2 * len(modes) - 1)) + "|")
    for profile, (items, _) in profiles.items():
        row = [profile, f"{200 if args.quick else items:,}"]
        for values, digits in ((rates, 0), (cpu, 2)):
            off = statistics.median(values[(profile, "off")])
            for mode in modes:
                median = statistics.median(values[(profile, mode)])
                runs = ", ".join(f"{r:.{digits}f}" for r in values[(profile, mode)])
                row += [f"{median:,.{digits}f} ({runs})"] + ([f"{median / off:.2f}"] if mode != "off" else [])
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

"""`python -m bench.loop_lag [--concurrency N] [--broker redis|rabbitmq]`: client A posts three
10,000-item batches back to back (the seed profile's 0.5-2 s latency, no failures), client B posts
10 items 5 s later, while A's chords are still being published. Prints B's 202 -> completed and
each worker's loop lag (`payouts_worker_loop_lag_seconds`, the bucket holding p50 and p99) over
B's life and over the whole run. Two worker processes, each with its metrics port."""

from __future__ import annotations

import argparse
import json
import os
import time

import requests

from bench.histograms import buckets, quantile_bound
from bench.processes import BenchStack
from bench.scenarios import make_batch
from payouts_core.settings import Settings
from payouts_devstack import free_port

METRIC = "payouts_worker_loop_lag_seconds"
SEED = {"PIX_SIM_LATENCY_MS": "500-2000", "PIX_SIM_SEED": "loop-lag"}


def scrape(port: int) -> dict[float, float]:
    """The worker's loop-lag buckets (waits for its exporter, which starts with the worker)."""
    for _ in range(100):
        try:
            return buckets(port, METRIC)
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit(f"no worker metrics on port {port}")


def bound(before: dict[float, float], after: dict[float, float], q: float) -> str:
    le = quantile_bound(before, after, q)
    return "-" if le is None else f"<= {le:g} s"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loop_lag")
    parser.add_argument("--concurrency", type=int, default=Settings.from_env({}).worker_concurrency)
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    args = parser.parse_args()
    with BenchStack(concurrency=args.concurrency) as stack:
        stack.start_redis()
        stack.start_postgres()
        if args.broker == "rabbitmq":
            stack.use_rabbitmq()
        stack.start_api()
        ports = [free_port(), free_port()]
        workers = [stack.start_worker(env={**SEED, "PAYOUTS_WORKER_METRICS_PORT": str(port)}, wait=False,
                                      hostname=f"lag{i}-{stack.run_id}@{os.uname().nodename}")
                   for i, port in enumerate(ports)]
        stack.wait_for_workers(workers)
        url = f"{stack.api_url}/api/payouts"

        def post(headers: dict, batch_id: str, items: int) -> None:
            answer = requests.post(url, data=json.dumps(make_batch(batch_id, items)), timeout=120,
                                   headers={**headers, "Content-Type": "application/json"})
            if answer.status_code != 202:
                raise SystemExit(f"POST {batch_id}: {answer.status_code} {answer.text[:200]}")

        def wait_completed(headers: dict, batch_id: str) -> None:
            while requests.get(f"{url}/{batch_id}", headers=headers,
                               timeout=30).json()["status"] != "completed":
                time.sleep(0.05)

        start = [scrape(p) for p in ports]
        started = time.monotonic()
        a_ids = [f"lag-a{n}-{stack.run_id}" for n in range(3)]
        for batch_id in a_ids:
            post(stack.auth_headers, batch_id, 10_000)
        time.sleep(5)
        b_id = f"lag-b-{stack.run_id}"
        b_before = [scrape(p) for p in ports]
        posted = time.monotonic()
        post(stack.neighbour_headers, b_id, 10)
        wait_completed(stack.neighbour_headers, b_id)
        b_seconds = time.monotonic() - posted
        b_after = [scrape(p) for p in ports]
        for batch_id in a_ids:
            wait_completed(stack.auth_headers, batch_id)
        a_seconds = time.monotonic() - started
        end = [scrape(p) for p in ports]
    print(f"{args.broker}, {args.concurrency} greenlets x 2 processes: B's 10 items 202 -> completed "
          f"{b_seconds:.2f} s; A's 30,000 completed after {a_seconds:.1f} s")
    for i in range(2):
        print(f"  worker {i + 1} loop lag: during B p50 {bound(b_before[i], b_after[i], 0.5)}, "
              f"p99 {bound(b_before[i], b_after[i], 0.99)}; whole run p50 "
              f"{bound(start[i], end[i], 0.5)}, p99 {bound(start[i], end[i], 0.99)}")


if __name__ == "__main__":
    main()

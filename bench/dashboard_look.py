"""`python -m bench.dashboard_look [--items N]`: the dashboard's numbers during a real batch.

Starts the service as deployed (the API, a `payouts-worker` with one process per core, each
serving its metrics, the archiver on a PostgreSQL of its own) and a real Prometheus (Debian's
package) scraping them every second with the alert rules, runs a seed-profile batch
(0.5-2 s latency, 15 % permanent + 5 % transient failures), and prints what each dashboard panel
showed over the run: the largest value of each series, read through the panel's own query.
"""

from __future__ import annotations

import argparse
import math
import secrets
import socket
import time
import uuid

import requests

from bench.processes import BenchStack, default_worker_processes
from bench.scenarios import SEED_FAILURES, make_batch
from observability.dashboard import PANELS
from payouts_core.store import BatchRef, PayoutStore
from payouts_devstack import free_port
from payouts_devstack.prometheus import Prometheus


def free_port_run(count: int) -> int:
    """A port with the `count` - 1 after it free too (worker process i serves on port + i - 1)."""
    while True:
        base = free_port()
        try:
            for port in range(base + 1, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_look",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    args = parser.parse_args()
    processes = default_worker_processes()
    worker_port = free_port_run(processes)
    stack = BenchStack(concurrency=1000, worker_processes=processes)
    token = secrets.token_urlsafe(24)
    env = {"PAYOUTS_METRICS_TOKEN": token, "PIX_SIM_LATENCY_MS": "500-2000", "PIX_SIM_SEED": "bench",
           **SEED_FAILURES, "PAYOUTS_WORKER_METRICS_PORT": str(worker_port),
           "WORKER_PROCESSES": str(processes)}
    try:
        stack.start_redis()
        stack.start_postgres()
        stack.start_api(env=env)
        stack.start_worker(env=env, processes=processes)
        targets = {"payouts-api": ([stack.api_url.removeprefix("http://")], token),
                   "payouts-worker": ([f"127.0.0.1:{worker_port + i}" for i in range(processes)], None)}
        archiver_port = free_port()
        stack.start_archiver(env={"PAYOUTS_ARCHIVER_METRICS_PORT": str(archiver_port)})
        targets["payouts-archiver"] = ([f"127.0.0.1:{archiver_port}"], None)
        with Prometheus(stack.workdir / "prometheus", targets) as prometheus:
            prometheus.wait(prometheus.targets_up, 60, "every exporter scraped")
            time.sleep(3)
            start = time.time()
            batch_id = f"look-{uuid.uuid4().hex[:8]}"
            requests.post(f"{stack.api_url}/api/payouts", headers=stack.auth_headers, timeout=60,
                          json=make_batch(batch_id, args.items)).raise_for_status()
            store = PayoutStore.from_url(stack.redis_url)
            while (p := store.batch_progress(BatchRef("bench", batch_id))) and p["processed"] < p["total"]:
                time.sleep(0.2)
            seconds = time.time() - start
            time.sleep(3)
            print(f"{args.items} items in {seconds:.1f} s ({args.items / seconds:.0f} items/s), "
                  f"{processes} worker processes\n")
            print("| panel | series: largest value during the run |\n|---|---|")
            for title, unit, queries in PANELS:
                shown = []
                for expr, legend in queries:
                    for series in prometheus.query_range(expr, start - 2, time.time()):
                        values = [float(v) for _, v in series["values"] if not math.isnan(float(v))]
                        if values:
                            label = legend.replace("{{", "{").replace("}}", "}").format(**series["metric"]) \
                                if "{{" in legend else legend
                            shown.append(f"{label} {max(values):.3g}")
                print(f"| {title} ({unit}) | {'; '.join(shown) or 'no data'} |")
    finally:
        stack.close()


if __name__ == "__main__":
    main()

"""`python -m bench [--quick] [--scenarios a,b] [--worker-processes N] [--broker B] [--json P] [--profile D]`

Starts its own Redis (and with --broker rabbitmq a vhost of its own on the local RabbitMQ), the API
(the Procfile's gunicorn command) and workers (one process per core unless told), runs the
scenarios, prints the scenario table, the targets of issue 12 (met or missed, the plain-Celery
floor measured in the same run), the seed rows' wall time against their critical path and the
Redis operations per item, and writes them as JSON.
Exits 1 when any batch or chord did not complete (a missed target does not change the exit code).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from bench.processes import ROOT, BenchStack, default_worker_processes
from bench.profiling import Profiler
from bench.report import (
    code_state,
    evaluate_targets,
    floor_ratios,
    machine_info,
    render,
    render_critical,
    render_redis,
    render_targets,
    write_json,
)
from bench.scenarios import DEFAULT_SCENARIOS, FULL, QUICK, SCENARIOS, Bench
from payouts_core.settings import Settings
from payouts_devstack import StackError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI (seconds)")
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                        help=f"comma-separated subset of: {', '.join(SCENARIOS)} "
                             f"(default: {', '.join(DEFAULT_SCENARIOS)})")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json",
                        help="where to write the results (default bench/results/latest.json)")
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis",
                        help="the Celery broker: the run's own Redis (default), or a vhost of its own "
                             "on the local RabbitMQ (quorum queues); Redis stays the result backend")
    parser.add_argument("--concurrency", type=int, default=Settings.from_env({}).worker_concurrency,
                        help="WORKER_CONCURRENCY of each worker (default: the product's default)")
    parser.add_argument("--worker-processes", type=int, default=default_worker_processes(), metavar="N",
                        help="worker processes of the product rows, each started on its own with "
                             "WORKER_PROCESSES=1 (default: one per core, the default deployment, "
                             f"here {default_worker_processes()}); the scale rows use 1, 2 and 4")
    parser.add_argument("--worker-args", default="", metavar="ARGS",
                        help="extra `celery worker` options to try a lever, e.g. '--prefetch-multiplier 4'")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy record the API and workers during each scenario into DIR")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with process logs")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if args.worker_processes < 1:
        parser.error("--worker-processes must be at least 1")
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return args


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    console = Console(width=200)
    started = time.monotonic()
    meta = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
            "quick": args.quick, "broker": args.broker, "concurrency": args.concurrency,
            "worker_args": args.worker_args, "worker_processes": args.worker_processes,
            "code": code_state()}
    bench: Bench | None = None
    with BenchStack(concurrency=args.concurrency, keep=args.keep, worker_args=shlex.split(args.worker_args),
                    worker_processes=args.worker_processes) as stack:
        try:
            stack.start_redis()
            stack.start_postgres()  # the ledger, which the API and workers check at start
            if args.broker == "rabbitmq":
                stack.use_rabbitmq()
            stack.start_api()
            meta["machine"] = machine_info(stack.redis_url)
            console.print(f"bench: run {stack.run_id}, logs in {stack.workdir}, API {stack.api_url}, "
                          f"Redis {stack.redis_url}, broker {args.broker}")
            bench = Bench(stack, QUICK if args.quick else FULL, Profiler(args.profile))
            for name in args.scenarios:
                console.print(f"bench: {name} ... ({time.monotonic() - started:.0f} s into the run)")
                SCENARIOS[name](bench)
        except StackError as exc:
            console.print(f"[red]bench: {exc}[/red]")
            stack.keep = True  # its logs explain what failed
            return 2
        except KeyboardInterrupt:
            console.print("[red]bench: interrupted; stopping every process it started[/red]")
            return 130
        finally:
            rows = bench.rows if bench else []
            if rows:
                floor_ratios(rows)
                targets = evaluate_targets(rows)
                render(rows, console)
                render_targets(targets, console, quick=args.quick)
                render_critical(rows, console)
                render_redis(rows, console)
                write_json(args.json, rows, {**meta, "seconds": round(time.monotonic() - started, 1)},
                           targets)
                console.print(f"bench: results in {args.json}")
    if not all(r.completed for r in rows):
        console.print("[red]bench: some batch or chord did not complete (see notes)[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

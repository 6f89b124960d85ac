"""The processes a benchmark run owns: a payouts_devstack.Stack (its Redis and PostgreSQL, the API,
workers and archiver from the Procfile) measured as deployed, with nothing inherited from the
caller's shell."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from payouts_devstack import Process, Stack
from payouts_devstack.stack import WORKER_FLAGS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Inherited settings that would make the run depend on the caller's shell; the harness sets its own.
_PRODUCT_ENV = re.compile(
    r"^(PAYOUTS_|PIX_SIM_|CELERY_|RATELIMIT_|REDIS_URL$|DATABASE_URL$|WORKER_CONCURRENCY$"
    r"|WORKER_PROCESSES$|PORT$)")


def default_worker_processes() -> int:
    """The default deployment: one worker process per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class BenchStack(Stack):
    """Redis, the API and workers of one benchmark run, in a temporary directory."""

    def __init__(self, concurrency: int, keep: bool = False, worker_args: list[str] | None = None,
                 worker_processes: int | None = None):
        self.concurrency = concurrency
        self.worker_processes = worker_processes or default_worker_processes()  # of the product rows
        self.keep = keep
        self.worker_args = worker_args or []  # appended to the Procfile's worker command
        self.run_id = uuid.uuid4().hex[:8]
        self.api_key = secrets.token_urlsafe(32)
        # A second client (tenant) for the fairness rows: its batch beside the first one's backlog.
        self.neighbour_key = secrets.token_urlsafe(32)
        # Ten more clients for the slow-receivers rows: at most 10 webhook endpoints per client.
        self.hook_keys = {f"hooks{i}": secrets.token_urlsafe(32) for i in range(10)}
        env = {k: v for k, v in os.environ.items() if not _PRODUCT_ENV.match(k)}
        env.update({
            # Measured as deployed: the production guard on, with a generated key (no example key,
            # no fault hook, auth on).
            "PAYOUTS_ENV": "production",
            "PAYOUTS_RATELIMIT_ENABLED": "false",
            "PAYOUTS_API_KEYS": ",".join([f"bench:{self.api_key}", f"neighbour:{self.neighbour_key}",
                                          *(f"{name}:{key}" for name, key in self.hook_keys.items())]),
            # The value caps are not what is measured: 50,000 items of up to R$ 999 each pass.
            "PAYOUTS_MAX_BATCH_AMOUNT_CENTS": str(10**12),
            "PAYOUTS_MAX_DAILY_AMOUNT_CENTS": str(10**14),
            "WORKER_CONCURRENCY": str(concurrency),
            # Each worker the harness starts is one process (it starts as many as a row needs),
            # whatever the Procfile's launcher would fork for a WORKER_PROCESSES setting.
            "WORKER_PROCESSES": "1",
            # No fixed-port exporter per worker (two workers, or a dev's `make run`, would collide);
            # the metrics are still counted.
            "PAYOUTS_WORKER_METRICS_PORT": "0",
        })
        super().__init__(Path(tempfile.mkdtemp(prefix="payouts-bench-")), env)
        self.api: Process | None = None
        self.workers: list[Process] = []
        self.worker_env: dict[str, str] | None = None

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def neighbour_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.neighbour_key}"}

    def start_api(self, **kwargs) -> Process:
        self.api = super().start_api(**kwargs)
        return self.api

    def restart_api(self, env: dict[str, str]) -> Process:
        """The API again with `env` on top of the base env (e.g. loopback webhooks allowed)."""
        self.stop([self.api])
        return self.start_api(env=env)

    def ensure_workers(self, env: dict[str, str], count: int) -> list[Process]:
        """`count` product worker processes running with `env` on top of the base env (restarted if
        different), each started on its own through the Procfile with WORKER_PROCESSES=1."""
        if self.worker_env == env and len(self.workers) == count:
            return self.workers
        self.stop_workers()
        node = os.uname().nodename
        self.workers = [self.start_worker(env=env, extra=self.worker_args, wait=False,
                                          hostname=f"bench{i + 1}-{self.run_id}@{node}")
                        for i in range(count)]
        self.wait_for_workers(self.workers)
        self.worker_env = env
        return self.workers

    def start_floor_worker(self, broker_url: str) -> Process:
        """A worker of bench.floor_app: Celery's defaults (prefork, one child per core)."""
        self.stop_workers()
        hostname = f"floor-{self.run_id}@{os.uname().nodename}"
        argv = [str(BIN / "celery"), "-A", "bench.floor_app", "worker", "--hostname", hostname,
                *WORKER_FLAGS]
        worker = self.spawn("floor-worker", argv, {"BENCH_FLOOR_URL": broker_url}, hostname)
        self.wait_for_workers([worker], broker_url)
        self.workers = [worker]
        return worker

    def stop_workers(self) -> None:
        self.stop(self.workers)
        self.workers = []
        self.worker_env = None

    def close(self, grace: float = 10.0) -> None:
        """Stop every process (Redis last) and drop the temp dir unless kept."""
        super().close(grace)
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

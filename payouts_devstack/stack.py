"""The service's processes for one run: a private Redis, the API, workers and beat."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

import requests
from celery import Celery

from payouts_core.settings import Settings
from payouts_devstack.postgres_server import database_url, start_postgres
from payouts_devstack.process import Process, StackError, process_env
from payouts_devstack.procfile import procfile_command
from payouts_devstack.rabbitmq import RabbitNode, Vhost
from payouts_devstack.redis_server import free_port, start_redis
from payouts_tasks.worker_processes import child_hostnames

# Settings that would point the stack's processes at another Redis than its own.
REDIS_OVERRIDES = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "PAYOUTS_STORE_URL",
                   "RATELIMIT_STORAGE_URI")
# A worker of a private stack has no siblings to sync with at start (mingle waits ~1 s) or gossip to.
WORKER_FLAGS = ("--without-mingle", "--without-gossip")


class Stack:
    """Processes of one run, each logging to its own file in `workdir`. `close()` (or leaving the
    with-block) stops them all, then the RabbitMQ vhost or node it made, Redis last, and leaves
    nothing running."""

    def __init__(self, workdir: Path, env: Mapping[str, str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = process_env(os.environ if env is None else env)
        self.processes: list[Process] = []
        self.redis: Process | None = None
        self.postgres: Process | None = None
        self.redis_url = self.env.get("REDIS_URL", "")
        self.api_url = ""
        self.vhost: Vhost | None = None
        self.rabbit_node: RabbitNode | None = None
        self._seq = itertools.count(1)

    # -- Redis -----------------------------------------------------------------------------

    def start_redis(self, port: int | None = None) -> Process:
        """A private Redis that every process started afterwards uses for everything."""
        port = port or free_port()
        self.redis = start_redis(port, self.workdir / "redis")
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.env["REDIS_URL"] = self.redis_url
        for name in REDIS_OVERRIDES:
            self.env.pop(name, None)
        return self.redis

    def stop_redis(self, grace: float = 20.0) -> None:
        """A clean shutdown (SIGTERM flushes the append-only file), as in a Redis restart."""
        self.redis.stop(grace)

    def start_redis_again(self) -> Process:
        """The stopped Redis again, on its port and with its data."""
        self.redis = start_redis(urlsplit(self.redis_url).port, self.workdir / "redis")
        return self.redis

    # -- PostgreSQL (the ledger) ------------------------------------------------------------

    def start_postgres(self, port: int | None = None) -> Process:
        """A private PostgreSQL, migrated, that every process started afterwards uses as ledger."""
        from payouts_core.ledger.schema import upgrade  # noqa: PLC0415

        port = port or free_port()
        self.postgres = start_postgres(port, self.workdir / "postgres")
        self.env["DATABASE_URL"] = database_url(port)
        upgrade(self.env["DATABASE_URL"])
        return self.postgres

    def stop_postgres(self, grace: float = 20.0) -> None:
        self.postgres.stop(grace)

    def start_postgres_again(self) -> Process:
        """The stopped PostgreSQL again, on its port and with its data."""
        self.postgres = start_postgres(urlsplit(self.env["DATABASE_URL"]).port, self.workdir / "postgres")
        return self.postgres

    def start_archiver(self, env: Mapping[str, str] | None = None) -> Process:
        """The Procfile's archiver (metrics port off unless `env` sets one)."""
        return self.start("archiver", env={"PAYOUTS_ARCHIVER_METRICS_PORT": "0", **(env or {})})

    # -- RabbitMQ --------------------------------------------------------------------------

    def use_rabbitmq(self, private_node: bool = False) -> str:
        """RabbitMQ as the broker of every process started afterwards (Redis stays result backend,
        store and limiter storage): a vhost of its own on the machine's broker, or with
        `private_node` a `rabbitmq-server` node of its own, which the caller may stop and start
        (`rabbit_node`). Both are removed by `close()`. Returns the broker URL."""
        if private_node:
            node = RabbitNode(self.workdir)
            try:
                node.start()
            except BaseException:
                node.delete()
                raise
            self.rabbit_node = node
            url = node.url
        else:
            self.vhost = Vhost()
            url = self.vhost.url
        self.env["CELERY_BROKER_URL"] = url
        return url

    # -- processes -------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None,
              hostname: str = "") -> Process:
        """Any command, with the stack's env plus `env`, logging to `workdir/<name>-<n>.log`."""
        log_path = self.workdir / f"{name}-{next(self._seq)}.log"
        proc = Process(name, argv, log_path, {**self.env, **(env or {})}, hostname)
        self.processes.append(proc)
        return proc

    def start(self, name: str, options: Mapping[str, str] | None = None, extra: Iterable[str] = (),
              env: Mapping[str, str] | None = None, hostname: str = "") -> Process:
        """The Procfile's `name` line, with `options` replacing the line's values and `extra` appended."""
        argv = procfile_command(name, {**self.env, **(env or {})}, options, extra)
        return self.spawn(name, argv, env, hostname)

    def start_api(self, env: Mapping[str, str] | None = None, timeout: float = 30) -> Process:
        """The API on a free loopback port; returns once GET /healthz answers."""
        port = free_port()
        # gunicorn.conf.py keeps multiprocess metrics there: in the workdir, not a stray temp dir.
        env = {"PROMETHEUS_MULTIPROC_DIR": str(self.workdir / "api-metrics"), **(env or {})}
        api = self.start("api", {"--bind": f"127.0.0.1:{port}"}, env=env)
        self.api_url = f"http://127.0.0.1:{port}"
        self._wait_until(lambda: _http_ok(f"{self.api_url}/healthz"), [api], timeout,
                         f"the API did not answer GET /healthz within {timeout} s")
        return api

    def start_worker(self, pool: str | None = None, concurrency: int | None = None,
                     env: Mapping[str, str] | None = None, extra: Iterable[str] = (),
                     hostname: str | None = None, wait: bool = True, timeout: float = 60,
                     processes: int = 1) -> Process:
        """A Procfile worker (its pool and concurrency unless given); returns once it answers a
        ping, or at once with `wait=False` (then `wait_for_workers` several together).

        `processes` sets WORKER_PROCESSES (whatever `env` holds). With 1, the Procfile's launcher
        execs celery, so the Process is the worker itself, as tests that kill workers need; with
        more, it is the launcher, and `hostnames` names its children (all waited for)."""
        n = next(self._seq)
        hostname = hostname or f"w{n}-{uuid.uuid4().hex[:6]}@{os.uname().nodename}"
        options = {"--hostname": hostname}
        if pool:
            options["--pool"] = pool
        if concurrency:
            options["--concurrency"] = str(concurrency)
        env = {**(env or {}), "WORKER_PROCESSES": str(processes)}
        worker = self.start("worker", options, [*WORKER_FLAGS, *extra], env, hostname)
        worker.hostnames = child_hostnames(hostname, processes)
        if wait:
            self.wait_for_workers([worker], timeout=timeout)
        return worker

    def wait_for_workers(self, workers: list[Process], broker_url: str | None = None,
                         timeout: float = 60) -> None:
        """Return once every worker answers a Celery ping addressed to its hostname (each of a
        launcher's children to theirs)."""
        control = Celery("devstack-control", broker=broker_url or Settings.from_env(self.env).broker_url)
        waiting = {name for w in workers for name in getattr(w, "hostnames", None) or [w.hostname]}

        def answered() -> bool:
            replies = control.control.ping(destination=sorted(waiting), timeout=0.5, limit=len(waiting))
            for reply in replies or []:
                waiting.difference_update(reply)
            return not waiting

        try:
            self._wait_until(answered, workers, timeout,
                             lambda: f"workers {sorted(waiting)} did not answer a ping within {timeout} s")
        finally:
            control.close()

    def start_webhook_worker(self, env: Mapping[str, str] | None = None, wait: bool = True,
                             timeout: float = 60) -> Process:
        """The Procfile's webhook worker (the webhooks queue only); returns once it answers a ping."""
        hostname = f"webhooks{next(self._seq)}-{uuid.uuid4().hex[:6]}@{os.uname().nodename}"
        worker = self.start("webhooks", {"--hostname": hostname}, WORKER_FLAGS, env, hostname)
        worker.hostnames = [hostname]
        if wait:
            self.wait_for_workers([worker], timeout=timeout)
        return worker

    def start_beat(self, env: Mapping[str, str] | None = None) -> Process:
        """Beat with its schedule file in the workdir (the Procfile's path is shared by every run)."""
        return self.start("beat", {"--schedule": str(self.workdir / "beat-schedule")}, env=env)

    def _wait_until(self, ready: Callable[[], bool], procs: list[Process], timeout: float,
                    failure: str | Callable[[], str]) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for proc in procs:
                proc.check_alive()
            if time.monotonic() > deadline:
                message = failure() if callable(failure) else failure
                raise StackError(f"{message} (logs in {self.workdir})")
            time.sleep(0.1)

    # -- stopping --------------------------------------------------------------------------

    def stop(self, procs: Iterable[Process], grace: float = 15.0) -> None:
        """Stop processes together: all get SIGTERM first (each warm shutdown takes seconds)."""
        procs = list(procs)
        for proc in procs:
            proc.shutdown()
        deadline = time.monotonic() + grace
        for proc in procs:
            proc.stop(max(0.0, deadline - time.monotonic()))
            with suppress(ValueError):
                self.processes.remove(proc)

    def close(self, grace: float = 15.0) -> None:
        """Stop every process, newest first, Redis last; a second Ctrl-C cannot cut this short."""
        with _uninterruptible():
            self.stop(reversed(self.processes), grace)
            if self.vhost is not None:
                self.vhost.delete()
                self.vhost = None
            if self.rabbit_node is not None:
                self.rabbit_node.delete()
                self.rabbit_node = None
            if self.postgres is not None:
                self.postgres.stop(grace)
            if self.redis is not None:
                self.redis.stop(grace)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _http_ok(url: str) -> bool:
    with suppress(requests.RequestException):
        return requests.get(url, timeout=1).ok
    return False


@contextmanager
def _uninterruptible() -> Iterator[None]:
    """SIGINT and SIGTERM ignored meanwhile (only the main thread may change handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

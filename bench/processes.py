"""The processes a benchmark run owns: its Redis, the API (as the Procfile runs it) and workers.

Each child starts in its own session, so stopping it stops its whole group (gunicorn's workers,
celery's pool children), and asks the kernel to signal it if the harness dies. `Stack.close()`
runs on errors and Ctrl-C alike.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import requests
from celery import Celery

from payouts_cli.local_redis import free_port, start_redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Inherited settings that would make the run depend on the caller's shell; the harness sets its own.
_PRODUCT_ENV = re.compile(r"^(PAYOUTS_|PIX_SIM_|CELERY_|RATELIMIT_|REDIS_URL$|WORKER_CONCURRENCY$|PORT$)")
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


class BenchError(RuntimeError):
    """A process of the run did not start or answer."""


def procfile_command(name: str, env: dict[str, str]) -> list[str]:
    """The Procfile's command for `name`, with ${VAR:-default} expanded and the venv's executable."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            expanded = _VAR.sub(lambda m: env.get(m[1] or m[3]) or (m[2] or ""), command)
            argv = shlex.split(expanded)
            argv[0] = str(BIN / argv[0])
            return argv
    raise BenchError(f"no '{name}' process in the Procfile")


def _set_option(argv: list[str], option: str, value: str) -> list[str]:
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == option:
            argv[i + 1] = value
            return argv
        if arg.startswith(option + "="):
            argv[i] = f"{option}={value}"
            return argv
    return [*argv, option, value]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the harness dies without cleaning up."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    hostname: str = ""
    own_group: bool = True  # started in its own session: stop the whole group

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _signal(self, sig: int) -> None:
        with suppress(ProcessLookupError):
            if self.own_group:
                os.killpg(self.proc.pid, sig)
            elif self.proc.poll() is None:
                self.proc.send_signal(sig)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL what lingers (pool children included)."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self._signal(signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


@dataclass
class Stack:
    """Redis, the API and workers of one benchmark run, in a temporary directory."""

    concurrency: int
    keep: bool = False
    worker_args: list[str] = field(default_factory=list)  # appended to the Procfile's command
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="payouts-bench-")))
    children: list[Child] = field(default_factory=list)
    workers: list[Child] = field(default_factory=list)
    worker_env: dict[str, str] | None = None
    redis_url: str = ""
    api_url: str = ""
    api: Child | None = None
    redis: Child | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    # -- environment -----------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not _PRODUCT_ENV.match(k)}
        env.update({
            "REDIS_URL": self.redis_url,
            # Measured as deployed: the production guard on, with a generated key (no example key,
            # no fault hook, auth on).
            "PAYOUTS_ENV": "production",
            "PAYOUTS_RATELIMIT_ENABLED": "false",
            "PAYOUTS_API_KEYS": f"bench:{self.api_key}",
            "WORKER_CONCURRENCY": str(self.concurrency),
            # No fixed-port exporter per worker (two workers, or a dev's `make run`, would collide);
            # the metrics are still counted.
            "PAYOUTS_WORKER_METRICS_PORT": "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        })
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def _check_alive(self, child: Child) -> None:
        if child.proc.poll() is not None:
            tail = child.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"{child.name} exited with {child.proc.returncode}:\n{tail}")

    # -- Redis and the API -----------------------------------------------------------

    def start_redis(self) -> None:
        port = free_port()
        # SIGINT blocked in the child: Ctrl-C stops the harness, which stops Redis last.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc = start_redis(port, self.workdir / "redis")  # appendonly on, as in production
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self.redis = Child("redis", proc, self.workdir / "redis" / "redis.log", own_group=False)
        self.children.append(self.redis)
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def start_api(self) -> None:
        port = free_port()
        # gunicorn.conf.py (read from the working directory, as in production) keeps the API's
        # multiprocess metrics in PROMETHEUS_MULTIPROC_DIR: keep them in the temp dir.
        env = {**self.base_env(), "PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(self.workdir / "prom")}
        argv = _set_option(procfile_command("api", env), "--bind", f"127.0.0.1:{port}")
        self.api = self._spawn("api", argv, env)
        self.api_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._check_alive(self.api)
            with suppress(requests.RequestException):
                # An unknown batch answers 404 once the app, its Redis and gunicorn are up.
                ready = requests.get(f"{self.api_url}/api/payouts/bench-ready", timeout=1,
                                     headers=self.auth_headers)
                if ready.status_code == 404:
                    return
            time.sleep(0.1)
        raise BenchError(f"API did not answer within 30 s: see {self.api.log_path}")

    # -- workers ---------------------------------------------------------------------

    def ensure_workers(self, env: dict[str, str], count: int) -> list[Child]:
        """`count` product workers running with `env` on top of the base env (restarted if different)."""
        if self.worker_env == env and len(self.workers) == count:
            return self.workers
        self.stop_workers()
        full_env = {**self.base_env(), **env}
        for i in range(count):
            hostname = f"bench{i + 1}-{self.run_id}@{os.uname().nodename}"
            argv = procfile_command("worker", full_env) + [
                "--hostname", hostname, "--without-mingle", "--without-gossip", *self.worker_args]
            child = self._spawn(f"worker{i + 1}", argv, full_env)
            child.hostname = hostname
            self.workers.append(child)
        self.wait_for_workers(self.redis_url, self.workers)
        self.worker_env = env
        return self.workers

    def start_floor_worker(self, broker_url: str) -> Child:
        """A worker of bench.floor_app: Celery's defaults (prefork, one child per core)."""
        self.stop_workers()
        hostname = f"floor-{self.run_id}@{os.uname().nodename}"
        env = {**self.base_env(), "BENCH_FLOOR_URL": broker_url}
        argv = [str(BIN / "celery"), "-A", "bench.floor_app", "worker", "--hostname", hostname,
                "--without-mingle", "--without-gossip"]
        child = self._spawn("floor-worker", argv, env)
        child.hostname = hostname
        self.wait_for_workers(broker_url, [child])
        self.workers = [child]
        self.worker_env = None
        return child

    def wait_for_workers(self, broker_url: str, workers: list[Child], timeout: float = 60) -> None:
        """Return once every worker answers a celery ping."""
        control = Celery("bench-control", broker=broker_url)
        waiting = {w.hostname for w in workers}
        deadline = time.monotonic() + timeout
        try:
            while waiting and time.monotonic() < deadline:
                for worker in workers:
                    self._check_alive(worker)
                for reply in control.control.ping(destination=sorted(waiting), timeout=0.5) or []:
                    waiting -= set(reply)
        finally:
            control.close()
        if waiting:
            raise BenchError(f"workers {sorted(waiting)} did not answer a ping within {timeout} s "
                             f"(logs in {self.workdir})")

    def stop_workers(self) -> None:
        for worker in self.workers:  # all at once: a warm shutdown takes seconds
            worker.terminate()
        for worker in self.workers:
            worker.stop()
            self.children.remove(worker)
        self.workers = []
        self.worker_env = None

    # -- teardown --------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process, newest first (Redis last), and drop the temp dir unless kept."""
        # A second Ctrl-C must not cut the cleanup short and strand processes.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for child in reversed(self.children):
                child.stop(timeout=10)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.children.clear()
        self.workers = []
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""A whole service stack in subprocesses, for fault tests that kill and restart its parts.

Each stack has its own Redis (append-only file on), the API under gunicorn as in production,
Celery workers and beat. The test process talks to it over HTTP and reads Redis directly only
to check the outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import requests

from payouts_cli.local_redis import free_port, start_redis
from payouts_core.provider.simulated import SimulatedPixProvider
from payouts_core.reconcile import reconcile
from payouts_core.store import BatchRef, PayoutStore

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

STACK_ENV = {
    "PAYOUTS_RATELIMIT_ENABLED": "false",
    "PIX_SIM_LATENCY_MS": "20-80",
    "PIX_SIM_SEED": "faults",
    "PAYOUTS_RETRY_BACKOFF_BASE_S": "0.05",
    "PAYOUTS_RETRY_BACKOFF_MAX_S": "0.5",
    "PAYOUTS_VISIBILITY_TIMEOUT_S": "10",
    "PAYOUTS_SWEEP_INTERVAL_S": "1",
    "PAYOUTS_STALL_AFTER_S": "6",
    # Below the visibility timeout and the stall time, as the settings require.
    "PAYOUTS_SETTLE_TIME_LIMIT_S": "5",
    "PIX_SIM_SETTLEMENT_TIMEOUT_S": "2",
    "WORKER_CONCURRENCY": "100",
    "PAYOUTS_WORKER_METRICS_PORT": "0",
}


CLIENT = "tests"  # the owner of PAYOUTS_API_KEY in tests/conftest.py


class Stack:
    def __init__(self, tmp_path: Path, **env: str):
        self.tmp = tmp_path
        self.redis_port = free_port()
        self.redis_dir = tmp_path / "redis"
        self.redis_proc = start_redis(self.redis_port, self.redis_dir)
        self.url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.env = {**os.environ, **STACK_ENV, **env, "REDIS_URL": self.url}
        for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "PAYOUTS_STORE_URL",
                     "RATELIMIT_STORAGE_URI"):
            self.env.pop(name, None)
        self.procs: list[subprocess.Popen] = []
        self.api_url: str | None = None
        self.client = redis.Redis.from_url(self.url, decode_responses=True)
        self.store = PayoutStore(self.client)
        self.provider = SimulatedPixProvider(self.client, ispb="13935893")
        self._count = 0

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        self._count += 1
        log_path = self.tmp / f"{name}-{self._count}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_path, proc.log_file = log_path, log
        self.procs.append(proc)
        return proc

    def start_api(self) -> None:
        port = free_port()
        self._spawn("api", [str(BIN / "gunicorn"), "payouts_api:create_app()",
                            "--bind", f"127.0.0.1:{port}", "--workers", "2",
                            "--worker-class", "gthread", "--threads", "8"])
        self.api_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.api_url}/openapi.json", timeout=5)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("API did not start")

    def start_worker(self, pool: str = "gevent", concurrency: int = 100,
                     env: dict | None = None) -> subprocess.Popen:
        name = f"w{self._count + 1}-{os.getpid()}@faults"
        proc = self._spawn("worker", [str(BIN / "celery"), "-A", "payouts_tasks", "worker",
                                      "--pool", pool, "--concurrency", str(concurrency),
                                      "--hostname", name, "--loglevel", "INFO",
                                      "--without-mingle", "--without-gossip"], env)
        wait_for_log(proc, "ready.", 30)
        return proc

    def start_service(self, **worker_options) -> subprocess.Popen:
        """API, beat and one worker, as production runs them; returns the worker."""
        self.start_api()
        self.start_beat()
        return self.start_worker(**worker_options)

    def start_beat(self) -> subprocess.Popen:
        return self._spawn("beat", [str(BIN / "celery"), "-A", "payouts_tasks", "beat",
                                    "--loglevel", "INFO",
                                    "--schedule", str(self.tmp / "beat-schedule")])

    def stop_redis(self) -> None:
        """A clean Redis shutdown: the append-only file is flushed, as in a restart."""
        self.redis_proc.send_signal(signal.SIGTERM)
        self.redis_proc.wait(timeout=20)

    def start_redis_again(self) -> None:
        self.redis_proc = start_redis(self.redis_port, self.redis_dir)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.log_file.close()
        self.client.close()
        if self.redis_proc.poll() is None:
            self.redis_proc.terminate()
            self.redis_proc.wait(timeout=20)

    # -- HTTP ----------------------------------------------------------------------------

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.env['PAYOUTS_API_KEY']}"}

    def post(self, batch_id: str, items: list[dict]) -> requests.Response:
        return requests.post(f"{self.api_url}/api/payouts", timeout=60, headers=self.auth,
                             json={"batch_id": batch_id, "items": items})

    def report(self, batch_id: str) -> dict:
        return self.store.report(self.ref(batch_id))

    def ref(self, batch_id: str) -> BatchRef:
        """Batches the stack posts belong to the client of its API key (`tests`)."""
        return BatchRef(CLIENT, batch_id)

    def wait_until(self, batch_id: str, processed: int, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            report = self.report(batch_id)
            if report and report["processed"] >= processed:
                return report
            time.sleep(0.05)
        raise AssertionError(f"{batch_id}: fewer than {processed} items processed after {timeout} s")

    def wait_completed(self, batch_ids: list[str], timeout: float = 120) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reports = [self.report(b) for b in batch_ids]
            if all(r and r["status"] == "completed" for r in reports):
                return reports
            time.sleep(0.2)
        stuck = {b: (r or {}).get("processed") for b, r in zip(batch_ids, reports, strict=True)
                 if not r or r["status"] != "completed"}
        raise AssertionError(f"batches not completed after {timeout} s: {stuck}; logs in {self.tmp}")

    # -- the checks every fault scenario ends with ---------------------------------------

    def assert_exactly_once(self, batch_ids: list[str], timeout: float = 120) -> list[dict]:
        """Every batch completed; ledger and reports agree (reconcile, in-process and via CLI)."""
        reports = self.wait_completed(batch_ids, timeout)
        assert reconcile(self.store, self.provider) == []
        settled = [t for t in self.provider.transfers() if t.status == "settled"]
        by_external_id: dict[str, int] = {}
        for transfer in settled:
            by_external_id[transfer.external_id] = by_external_id.get(transfer.external_id, 0) + 1
        assert all(n == 1 for n in by_external_id.values())
        paid = {d["e2e_id"] for r in reports for d in r["details"] if d["status"] == "paid"}
        assert paid <= {t.e2e_id for t in settled}
        cli = subprocess.run([str(BIN / "payouts"), "reconcile", "--json"], env=self.env,
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert json.loads(cli.stdout) == []
        return reports


def wait_for_log(proc: subprocess.Popen, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.log_path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: see {proc.log_path}")
        time.sleep(0.1)
    raise RuntimeError(f"{text!r} not logged within {timeout} s: see {proc.log_path}")


def items(prefix: str, count: int, pix_key: str = "someone@example.com", start: int = 0) -> list[dict]:
    return [{"external_id": f"{prefix}-{i}", "user_id": f"u{i}", "amount_cents": 100 + i,
             "pix_key": pix_key} for i in range(start, start + count)]

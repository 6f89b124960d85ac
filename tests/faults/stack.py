"""A whole service stack in subprocesses, for fault tests that kill and restart its parts.

Each stack is a payouts_devstack.Stack: its own Redis (append-only file on), on request a
RabbitMQ vhost or node of its own as the broker, and the API, Celery workers and beat from the
Procfile's lines. The test process talks to it over HTTP and reads
Redis directly only to check the outcome.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import redis
import requests

from payouts_core.provider.simulated import SimulatedPixProvider
from payouts_core.reconcile import LedgerCheck, reconcile
from payouts_core.store import BatchRef, PayoutStore
from payouts_devstack import Process, StackError
from payouts_devstack import Stack as DevStack
from payouts_devstack.process import ROOT

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
    # A webhook attempt's lease (deadline x 1.5 + 2 s) must stay below the visibility timeout.
    "PAYOUTS_WEBHOOK_TIMEOUT_S": "2",
}


# The scenarios a broker changes run on both: Redis (the default) and RabbitMQ (production).
BROKERS = pytest.mark.parametrize("broker", ["redis", "rabbitmq"])

CLIENT = "tests"  # the owner of PAYOUTS_API_KEY in tests/conftest.py
CRASH_EXIT = 137  # how payouts_tasks.faults' crash hook ends a worker (os._exit)


class Stack(DevStack):
    def __init__(self, tmp_path: Path, **env: str):
        super().__init__(tmp_path, {**os.environ, **STACK_ENV, **env})
        self.start_redis()
        self.client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.store = PayoutStore(self.client)
        self.provider = SimulatedPixProvider(self.client, ispb="13935893")

    @property
    def procs(self) -> list[Process]:
        return self.processes

    def start_worker(self, **options) -> Process:
        """A Procfile worker, once it answers a ping. With the crash hook on, it may consume a task
        and die before its first reply: the scenario sees it exited and starts another."""
        worker = super().start_worker(**options, wait=False)
        try:
            self.wait_for_workers([worker], timeout=30)
        except StackError:
            if worker.returncode != CRASH_EXIT:
                raise
        return worker

    def start_service(self, webhooks: bool = False, **worker_options) -> Process:
        """API, beat and one worker (and the webhook worker with `webhooks`), as production runs
        them; returns the settlement worker."""
        self.start_api()
        self.start_beat()
        if webhooks:
            self.start_webhook_worker()
        return self.start_worker(**worker_options)

    def close(self, grace: float = 5.0) -> None:
        """Every scenario has finished its batches by now: a short grace keeps the suite fast."""
        self.client.close()
        super().close(grace)

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
        raise AssertionError(f"batches not completed after {timeout} s: {stuck}; logs in {self.workdir}")

    # -- the checks every fault scenario ends with ---------------------------------------

    def assert_exactly_once(self, batch_ids: list[str], timeout: float = 120) -> list[dict]:
        """Every batch completed; ledger and reports agree (reconcile, in-process and via CLI)."""
        reports = self.wait_completed(batch_ids, timeout)
        ledger = LedgerCheck(self.env["DATABASE_URL"]) if self.postgres is not None else None
        found = reconcile(self.store, self.provider, ledger=ledger)
        assert found == [], [d.as_dict() for d in found]
        settled = [t for t in self.provider.transfers() if t.status == "settled"]
        by_external_id: dict[str, int] = {}
        for transfer in settled:
            by_external_id[transfer.external_id] = by_external_id.get(transfer.external_id, 0) + 1
        assert all(n == 1 for n in by_external_id.values())
        paid = {d["e2e_id"] for r in reports for d in r["details"] if d["status"] == "paid"}
        assert paid <= {t.e2e_id for t in settled}
        # Three-way (the ledger too) when this stack runs its own PostgreSQL and archiver.
        ledger = ["--ledger"] if self.postgres is not None else ["--no-ledger"]
        cli = subprocess.run(["payouts", "reconcile", "--json", *ledger], env=self.env,
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert json.loads(cli.stdout) == []
        return reports


def items(prefix: str, count: int, pix_key: str = "someone@example.com", start: int = 0) -> list[dict]:
    return [{"external_id": f"{prefix}-{i}", "user_id": f"u{i}", "amount_cents": 100 + i,
             "pix_key": pix_key} for i in range(start, start + count)]

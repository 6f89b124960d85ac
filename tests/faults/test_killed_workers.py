"""Workers die mid-batch (SIGKILL): redelivery finishes the batch, nothing is paid twice.

On Redis the dead worker's messages come back after the visibility timeout; on RabbitMQ at once.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.stack import BROKERS, items


@BROKERS
@pytest.mark.parametrize("kill_at", [0.2, 0.7])
def test_gevent_worker_killed_mid_batch(make_stack, kill_at, broker):
    stack = make_stack(broker)
    first = stack.start_service()
    assert stack.post("killed", items("k", 1000)).status_code == 202

    stack.wait_until("killed", int(1000 * kill_at))
    first.send_signal(signal.SIGKILL)
    first.wait()
    in_flight = stack.report("killed")["processed"]
    assert in_flight < 1000
    stack.start_worker()

    [report] = stack.assert_exactly_once(["killed"])
    assert report["successful"] == 1000


@BROKERS
def test_prefork_pool_child_killed_mid_batch(make_stack, broker):
    stack = make_stack(broker)
    worker = stack.start_service(pool="prefork", concurrency=4)
    assert stack.post("child", items("c", 300)).status_code == 202

    for point in (60, 150):
        stack.wait_until("child", point)
        children = _children(worker.pid)
        assert children, "prefork worker has no pool children"
        os.kill(children[0], signal.SIGKILL)
        time.sleep(0.5)

    [report] = stack.assert_exactly_once(["child"])
    assert report["successful"] == 300
    assert worker.poll() is None  # the main process survived and replaced its child


@BROKERS
def test_worker_killed_between_paying_and_recording(make_stack, broker):
    stack = make_stack(broker, PAYOUTS_FAULT_CRASH_AFTER_PAY="crash")
    stack.start_api()
    stack.start_beat()
    batch = items("ok", 40) + items("crash", 3)
    assert stack.post("crashy", batch).status_code == 202
    worker = stack.start_worker()

    crashes = 0
    deadline = time.monotonic() + 120
    while stack.report("crashy")["status"] != "completed" and time.monotonic() < deadline:
        if worker.poll() is not None:  # the hook killed it: a supervisor would restart it
            crashes += 1
            worker = stack.start_worker()
        time.sleep(0.2)

    [report] = stack.assert_exactly_once(["crashy"])
    assert crashes >= 1
    ledger = {t.external_id: t for t in stack.provider.transfers()}
    for detail in report["details"]:
        assert detail["status"] == "paid"
        # The original transfer's EndToEndId, found again through the idempotency key.
        assert detail["e2e_id"] == ledger[detail["external_id"]].e2e_id
    crashed = [d for d in report["details"] if d["external_id"].startswith("crash")]
    assert any(d["attempts"] >= 2 for d in crashed)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found

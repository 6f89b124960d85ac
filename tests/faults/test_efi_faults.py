"""Faults between the workers and Efí (the PSP double over mTLS): a worker killed after the PSP
accepted, the PSP answering 500, timing out or resetting after accepting, the PSP unreachable.
Every scenario ends with one transfer per idEnvio at the PSP and `payouts reconcile` clean,
reading Efí's side through the adapter."""

from __future__ import annotations

import signal
import time

import pytest

from payouts_core.provider.efi import EfiPixProvider, id_envio
from payouts_core.rules import NO_OUTCOME, idempotency_key
from payouts_core.settings import Settings
from tests.faults.stack import CLIENT, items
from tests.psp_double import PspDouble, efi_env, make_certs

EFI_TIMING = {"EFI_TIMEOUT_S": "3", "EFI_CONNECT_TIMEOUT_S": "1", "EFI_FINAL_DEADLINE_S": "4"}


@pytest.fixture
def psp(tmp_path):
    double = PspDouble(make_certs(tmp_path / "certs"), slow_s=4.0)
    double.start()
    yield double
    double.stop()


@pytest.fixture
def efi_stack(make_stack, psp):
    def make(**env: str):
        stack = make_stack(**efi_env(psp, **EFI_TIMING), **env)
        stack.provider = EfiPixProvider(Settings.from_env(stack.env).efi, stack.client)
        return stack

    return make


def assert_one_transfer_per_idenvio(psp: PspDouble, report: dict) -> None:
    sent = psp.transfers_by_id()
    for detail in report["details"]:
        ident = id_envio(idempotency_key(CLIENT, detail["external_id"], 1))
        assert detail["status"] == "paid", detail
        assert detail["e2e_id"] == sent[ident]["endToEndId"]
    assert len(sent) == len(report["details"])  # no transfer under any other idEnvio


def test_worker_killed_after_the_psp_accepted(efi_stack, psp):
    """The crash hook kills the worker after Efí settled, before the outcome is recorded: the
    redelivered settle sends the same idEnvio, Efí answers 409, the lookup finds the original."""
    stack = efi_stack(PAYOUTS_FAULT_CRASH_AFTER_PAY="crash")
    stack.start_api()
    stack.start_beat()
    assert stack.post("efi-crash", items("ok", 20) + items("crash", 3)).status_code == 202
    worker = stack.start_worker()

    crashes = 0
    deadline = time.monotonic() + 120
    while stack.report("efi-crash")["status"] != "completed" and time.monotonic() < deadline:
        if worker.poll() is not None:
            crashes += 1
            worker = stack.start_worker()
        time.sleep(0.2)

    [report] = stack.assert_exactly_once(["efi-crash"])
    assert crashes >= 1
    assert_one_transfer_per_idenvio(psp, report)
    crashed = [id_envio(idempotency_key(CLIENT, f"crash-{i}", 1)) for i in range(3)]
    assert any(psp.puts[ident] >= 2 for ident in crashed)  # sent again, paid once


def test_worker_sigkilled_while_transfers_are_in_processing(efi_stack, psp):
    """SIGKILL while Efí holds the transfers EM_PROCESSAMENTO and the worker is looking them up."""
    psp.processing_s = 2.0
    stack = efi_stack()
    worker = stack.start_service()
    assert stack.post("efi-kill", items("p", 30, pix_key="processing@psp.test")).status_code == 202
    deadline = time.monotonic() + 30
    while len(psp.sent) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(psp.sent) >= 10  # the PSP accepted them; the worker is waiting on the outcome
    worker.signal_group(signal.SIGKILL)
    worker.wait()
    stack.start_worker()

    [report] = stack.assert_exactly_once(["efi-kill"], timeout=180)
    assert_one_transfer_per_idenvio(psp, report)


@pytest.mark.parametrize("pix_key", ["accept.500@psp.test", "accept.timeout@psp.test",
                                     "accept.reset@psp.test"])
def test_psp_fails_after_accepting(efi_stack, psp, pix_key):
    """500, a timeout or a reset after Efí recorded the transfer: unknown, looked up by idEnvio,
    paid once with Efí's e2eId."""
    stack = efi_stack()
    stack.start_service()
    assert stack.post("efi-lost", items("lost", 10, pix_key=pix_key) + items("fine", 10)).status_code == 202

    [report] = stack.assert_exactly_once(["efi-lost"])
    assert_one_transfer_per_idenvio(psp, report)
    assert all(psp.puts[id_envio(idempotency_key(CLIENT, f"fine-{i}", 1))] == 1 for i in range(10))


def test_psp_unreachable_holds_the_items_until_it_answers(efi_stack, psp):
    """With Efí gone nothing is failed on a guess: the items wait. Once Efí answers that it holds
    no such idEnvio (past the final deadline), they fail with no money moved, and a later batch
    pays them under the claim's next generation (a new idEnvio)."""
    stack = efi_stack()
    stack.start_service()
    port = int(psp.base_url.rsplit(":", 1)[1])
    psp.stop()
    assert stack.post("efi-down", items("down", 5)).status_code == 202
    time.sleep(8)  # past the 4 s final deadline: no answer is still unknown, not "no transfer"
    assert stack.report("efi-down")["processed"] == 0

    psp.start(port)
    [report] = stack.assert_exactly_once(["efi-down"], timeout=120)
    # settle's code for "no provider answer" (rules.NO_OUTCOME), once Efí said it holds nothing
    assert {(d["status"], d["failure_code"]) for d in report["details"]} == {("failed", NO_OUTCOME)}
    assert all("no transfer exists" in d["failure_reason"] for d in report["details"])
    assert psp.sent == {}

    assert stack.post("efi-again", items("down", 5)).status_code == 202
    [again] = stack.assert_exactly_once(["efi-again"])
    assert again["successful"] == 5
    assert set(psp.sent) == {id_envio(idempotency_key(CLIENT, f"down-{i}", 2)) for i in range(5)}

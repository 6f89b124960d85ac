"""Batches through the real API and real workers with PAYOUTS_PROVIDER=efi, against the PSP double
over HTTPS with client certificates: every PSP answer ends as SPEC §5 says, one transfer per
idEnvio, two clients' equal external_ids are two transfers, and `payouts reconcile` (reading
Efí's side through the adapter) is clean."""

from __future__ import annotations

import hashlib

import pytest
import requests

from payouts_core.provider.efi import EfiPixProvider, id_envio, valor
from payouts_core.reconcile import reconcile
from payouts_core.rules import idempotency_key
from payouts_core.settings import Settings
from payouts_core.store import BatchRef
from tests.conftest import OTHER_KEY, wait_for
from tests.faults.stack import Stack, items
from tests.psp_double import PspDouble, efi_env, make_certs

# A call ends within 3 s, below the stack's 5 s settle time limit; Efí holding no idEnvio 4 s
# after our last call is taken as definite.
EFI_TIMING = {"EFI_TIMEOUT_S": "3", "EFI_CONNECT_TIMEOUT_S": "1", "EFI_FINAL_DEADLINE_S": "4"}


@pytest.fixture
def psp(tmp_path):
    double = PspDouble(make_certs(tmp_path / "certs"), processing_s=2.5, slow_s=4.0)
    double.start()
    yield double
    double.stop()


@pytest.fixture
def efi_stack(tmp_path, psp):
    stack = Stack(tmp_path / "stack", **efi_env(psp, **EFI_TIMING))
    # The test reads Efí's side through the adapter too, as `payouts reconcile` does.
    stack.provider = EfiPixProvider(Settings.from_env(stack.env).efi, stack.client)
    yield stack
    stack.close()


def test_batches_settle_through_efi_over_mutual_tls(efi_stack, psp):
    stack = efi_stack
    stack.start_service()
    batch = (items("ok", 30) + items("nr", 3, pix_key="nao.realizado@psp.test")
             + items("hm", 2, pix_key="holder.mismatch@psp.test")
             + items("proc", 2, pix_key="processing@psp.test")
             + items("a500", 2, pix_key="accept.500@psp.test")
             + items("f500", 2, pix_key="flaky.500@psp.test")
             + items("rl", 2, pix_key="ratelimited@psp.test"))
    assert stack.post("efi", batch).status_code == 202
    wait_for(lambda: stack.report("efi")["processed"] >= 10, 60, "10 items")
    psp.expire_tokens()  # every worker's token stops working mid-batch: 401, one refresh each
    tokens_before = psp.token_requests
    stack.wait_completed(["efi"], timeout=120)
    assert psp.token_requests > tokens_before  # the workers refreshed (nothing else asked yet)

    [report] = stack.assert_exactly_once(["efi"], timeout=120)

    by_prefix: dict[str, set] = {}
    for detail in report["details"]:
        by_prefix.setdefault(detail["external_id"].split("-")[0], set()).add(
            (detail["status"], detail.get("failure_code")))
    assert by_prefix == {"ok": {("paid", None)}, "nr": {("failed", "AC03")}, "hm": {("failed", "BE01")},
                         "proc": {("paid", None)}, "a500": {("paid", None)}, "f500": {("paid", None)},
                         "rl": {("paid", None)}}
    sent = psp.transfers_by_id()
    # printf 'payout:tests:ok-0:1' | sha256sum | cut -c1-32
    assert hashlib.sha256(b"payout:tests:ok-0:1").hexdigest()[:32] == id_envio("payout:tests:ok-0:1")
    for detail in report["details"]:
        ident = id_envio(idempotency_key("tests", detail["external_id"], 1))
        if detail["status"] == "paid":
            assert detail["e2e_id"] == sent[ident]["endToEndId"]
            assert sent[ident]["valor"] == valor(detail["amount_cents"])
    assert len(sent) == 30 + 3 + 2 + 2 + 2 + 2  # every recorded transfer once; BE01 recorded nothing
    assert all(psp.puts[id_envio(idempotency_key("tests", f"ok-{i}", 1))] == 1 for i in range(30))
    # one token per worker process, and one more each after the mid-batch expiry (+ this test's)
    assert psp.token_requests <= 2 * Settings.from_env(stack.env).worker_processes + 2

    # The same batch again: nothing is sent again.
    puts = sum(psp.puts.values())
    assert stack.post("efi", batch).status_code == 200
    assert sum(psp.puts.values()) == puts


def test_a_second_clients_equal_external_ids_are_their_own_transfers(efi_stack, psp):
    stack = efi_stack
    stack.start_service()
    batch = items("same", 10)
    assert stack.post("mine", batch).status_code == 202
    theirs = requests.post(f"{stack.api_url}/api/payouts", timeout=30,
                           json={"batch_id": "mine", "items": batch},
                           headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert theirs.status_code == 202  # their namespace: a new batch, not a replay of ours

    [mine] = stack.wait_completed(["mine"])
    other = wait_for(lambda: (r := stack.store.report(BatchRef("other", "mine"))) and
                     r["status"] == "completed" and r, 60, "the other client's batch")
    assert mine["successful"] == other["successful"] == 10
    assert not {d["e2e_id"] for d in mine["details"]} & {d["e2e_id"] for d in other["details"]}
    assert len(psp.sent) == 20
    assert id_envio(idempotency_key("other", "same-0", 1)) in psp.sent
    assert reconcile(stack.store, stack.provider) == []
    assert {t.idempotency_key.split(":")[1] for t in stack.provider.transfers()} == {"tests", "other"}

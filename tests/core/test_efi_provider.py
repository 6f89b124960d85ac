"""Contract tests: the Efí adapter against the PSP double, over real HTTPS with client certificates.

Every PSP answer the adapter can get, and what it makes of it (settled, rejected, unknown).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from dataclasses import replace

import pytest
import requests

from payouts_core.provider import PermanentProviderError, TransientProviderError
from payouts_core.provider.efi import (
    NO_ANSWER,
    PROCESSING,
    RATE_LIMITED,
    UNAUTHORIZED,
    EfiPixProvider,
    cents,
    id_envio,
    valor,
)
from payouts_core.rules import idempotency_key, parse_idempotency_key
from payouts_core.settings import EfiSettings
from tests.psp_double import CLIENT_ID, CLIENT_SECRET, PAYER_KEY, PspDouble, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("psp-certs"))


@pytest.fixture
def psp(certs):
    double = PspDouble(certs)
    double.start()
    yield double
    double.stop()


@pytest.fixture
def settings(psp, certs):
    return EfiSettings(base_url=psp.base_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                       cert_file=certs.client_pem, ca_file=certs.ca_file, payer_key=PAYER_KEY,
                       connect_timeout_s=1.0, timeout_s=3.0, final_deadline_s=5.0)


@pytest.fixture
def make_provider(settings, redis_client, uid):
    made = []

    def make(**changes) -> EfiPixProvider:
        provider = EfiPixProvider(replace(settings, **changes), redis_client, pool_size=20,
                                  prefix=f"efi-{uid}:")
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.http.close()


@pytest.fixture
def efi(make_provider):
    return make_provider()


def pay(provider, key, pix_key="ana@example.com", amount_cents=1234, external_id="ext-1"):
    return provider.pay(idempotency_key=key, external_id=external_id, amount_cents=amount_cents,
                        pix_key=pix_key)


# -- ids and amounts ---------------------------------------------------------------------------------

def test_id_envio_is_the_keys_sha256_prefix_in_efis_alphabet():
    # printf 'payout:tests:ext-1:1' | sha256sum | cut -c1-32
    assert id_envio("payout:tests:ext-1:1") == "be76013cedd74b0f3e8af6a3618f946f"
    # another client's equal external_id, and a later claim generation, are other transfers
    assert id_envio("payout:other:ext-1:1") == "584ce55aa1ccb2deadcfb91c04062db5"
    assert id_envio("payout:tests:ext-1:2") == "e2ed8d6a2def415c2d5dbb142cb97764"
    assert re.fullmatch(r"[a-zA-Z0-9]{1,35}", id_envio("payout:" + "x" * 10_000 + ":1"))


def test_amounts_travel_as_efis_two_place_decimals():
    assert [valor(c) for c in (1, 99, 100, 1234, 1_499_999)] == ["0.01", "0.99", "1.00", "12.34", "14999.99"]
    assert [cents(v) for v in ("0.01", "12.34", "14999.99")] == [1, 1234, 1_499_999]
    assert cents("abc") == -1 and cents("1.234") == -1


# -- answers ----------------------------------------------------------------------------------------

def test_em_processamento_then_realizado_is_paid_with_efis_e2e_id(psp, efi, uid):
    key = f"payout:tests:ok-{uid}:1"
    transfer = pay(efi, key)

    [(ident, record)] = psp.transfers_by_id().items()
    assert ident == id_envio(key)
    assert transfer.status == "settled" and transfer.e2e_id == record["endToEndId"]
    assert transfer.idempotency_key == key and transfer.external_id == "ext-1"
    assert transfer.amount_cents == 1234 and record["valor"] == "12.34"
    assert transfer.pix_key_masked == "a***@example.com"
    assert record["chave"] == PAYER_KEY  # the paying account's key went as pagador.chave


def test_a_redelivered_pay_gets_the_original_transfer_not_a_second(psp, efi, uid):
    key = f"payout:tests:again-{uid}:1"
    first = pay(efi, key)
    again = pay(efi, key)  # Efí answers 409 id_envio_duplicado; the adapter looks it up

    assert again == first
    assert psp.puts[id_envio(key)] == 2 and len(psp.sent) == 1


def test_two_clients_equal_external_ids_are_two_transfers(psp, efi, uid):
    mine = pay(efi, idempotency_key("tests", f"shared-{uid}", 1))
    theirs = pay(efi, idempotency_key("other", f"shared-{uid}", 1))
    assert mine.e2e_id != theirs.e2e_id and len(psp.sent) == 2
    assert parse_idempotency_key(theirs.idempotency_key)[0] == "other"


def test_nao_realizado_fails_with_the_spi_code(psp, efi, uid):
    key = f"payout:tests:nr-{uid}:1"
    with pytest.raises(PermanentProviderError) as raised:
        pay(efi, key, pix_key="nao.realizado@psp.test")
    assert raised.value.code == "AC03"
    assert efi.lookup(key).status == "rejected" and efi.lookup(key).failure_code == "AC03"


@pytest.mark.parametrize(("pix_key", "code"), [
    ("holder.mismatch@psp.test", "BE01"),  # chave_nao_pertence_ao_documento
    ("denied@psp.test", "EFI_PAGAMENTO_NEGADO"),  # 422
])
def test_validation_refusals_fail_at_once_with_the_psps_code(psp, efi, uid, pix_key, code):
    key = f"payout:tests:v-{uid}:1"
    with pytest.raises(PermanentProviderError) as raised:
        pay(efi, key, pix_key=pix_key)
    assert raised.value.code == code
    assert efi.lookup(key) is None and psp.sent == {}


def test_a_wrong_payer_key_is_efis_chave_invalida(psp, make_provider, uid):
    with pytest.raises(PermanentProviderError) as raised:
        pay(make_provider(payer_key="not-ours"), f"payout:tests:payer-{uid}:1")
    assert raised.value.code == "EFI_CHAVE_INVALIDA" and psp.sent == {}


@pytest.mark.parametrize("pix_key", ["accept.500@psp.test", "accept.reset@psp.test",
                                     "accept.timeout@psp.test"])
def test_accepted_then_no_answer_is_found_by_idenvio(psp, make_provider, uid, pix_key):
    """500, reset or timeout after Efí recorded the transfer: the lookup finds it, paid once."""
    psp.slow_s = 4.0
    efi = make_provider(timeout_s=2.0)
    key = f"payout:tests:lost-{uid}:1"
    transfer = pay(efi, key, pix_key=pix_key)

    assert transfer.status == "settled"
    assert transfer.e2e_id == psp.transfers_by_id()[id_envio(key)]["endToEndId"]
    assert psp.puts[id_envio(key)] == 1 and len(psp.sent) == 1


def test_a_500_before_recording_is_unknown_then_sent_again_under_the_same_idenvio(psp, efi, uid):
    key = f"payout:tests:flaky-{uid}:1"
    with pytest.raises(TransientProviderError) as raised:
        pay(efi, key, pix_key="flaky.500@psp.test")
    assert raised.value.code == NO_ANSWER
    assert efi.lookup(key) is None  # Efí's definite 404: nothing there (yet)

    transfer = pay(efi, key, pix_key="flaky.500@psp.test")
    assert transfer.status == "settled" and psp.puts[id_envio(key)] == 2 and len(psp.sent) == 1


def test_em_processamento_past_the_calls_deadline_is_unknown_until_efi_settles(psp, efi, uid):
    psp.processing_s = 4.0  # longer than the 3 s call
    key = f"payout:tests:slow-settle-{uid}:1"
    with pytest.raises(TransientProviderError) as raised:
        pay(efi, key, pix_key="processing@psp.test")
    assert raised.value.code == PROCESSING
    assert efi.lookup(key).status == "pending"  # held: lookup_verdict says unknown

    deadline = time.monotonic() + 10
    while efi.lookup(key).status == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert efi.lookup(key).status == "settled"
    assert pay(efi, key, pix_key="processing@psp.test").status == "settled"
    assert len(psp.sent) == 1


def test_em_processamento_within_the_deadline_is_looked_up_to_the_end(psp, efi, uid):
    psp.processing_s = 1.0
    transfer = pay(efi, f"payout:tests:settles-{uid}:1", pix_key="processing@psp.test")
    assert transfer.status == "settled" and psp.routes["lookup"] >= 2


def test_429_waits_retry_after_within_the_deadline(psp, efi, uid):
    key = f"payout:tests:429-{uid}:1"
    transfer = pay(efi, key, pix_key="ratelimited@psp.test")
    assert transfer.status == "settled" and psp.puts[id_envio(key)] == 2


def test_429_past_the_deadline_is_transient_and_holds_the_process(psp, make_provider, uid):
    efi = make_provider(timeout_s=1.0, connect_timeout_s=0.5)
    psp.rate_limit_next(1, retry_after="30")
    with pytest.raises(TransientProviderError) as raised:
        pay(efi, f"payout:tests:429b-{uid}:1")
    assert raised.value.code == RATE_LIMITED
    routes = psp.routes["send"]
    with pytest.raises(TransientProviderError):  # the process holds off: no request at all
        pay(efi, f"payout:tests:429c-{uid}:1")
    assert psp.routes["send"] == routes and psp.sent == {}


def test_a_token_that_expires_mid_batch_is_refreshed_once_and_the_call_retried(psp, efi, uid):
    pay(efi, f"payout:tests:t1-{uid}:1")
    assert psp.token_requests == 1
    psp.expire_tokens()  # 401 for the token the process holds
    assert pay(efi, f"payout:tests:t2-{uid}:1").status == "settled"
    assert psp.token_requests == 2 and len(psp.sent) == 2


def test_one_token_per_process_whatever_the_concurrency(psp, efi, uid):
    results, errors = [], []

    def one(i):
        try:
            results.append(pay(efi, f"payout:tests:c{i}-{uid}:1", external_id=f"c{i}"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 20 and len(psp.sent) == 20
    assert psp.token_requests == 1


def test_a_token_near_its_expiry_is_refreshed_before_it_fails(psp, efi, uid):
    psp.token_ttl_s = 1.0  # refreshed from 0.9 s on (a tenth of its life before the end)
    pay(efi, f"payout:tests:n1-{uid}:1")
    time.sleep(0.95)
    pay(efi, f"payout:tests:n2-{uid}:1")
    assert psp.token_requests == 2


def test_wrong_credentials_are_transient_and_send_nothing(psp, make_provider, uid):
    with pytest.raises(TransientProviderError) as raised:
        pay(make_provider(client_secret="wrong"), f"payout:tests:cred-{uid}:1")
    assert raised.value.code == UNAUTHORIZED and psp.routes["send"] == 0


# -- mutual TLS ---------------------------------------------------------------------------------------

def test_a_client_without_the_accounts_certificate_is_refused_at_the_handshake(psp, certs):
    with pytest.raises(requests.exceptions.RequestException):
        requests.post(f"{psp.base_url}/oauth/token", verify=certs.ca_file, timeout=3)
    with pytest.raises(requests.exceptions.RequestException):
        requests.post(f"{psp.base_url}/oauth/token", verify=certs.ca_file, cert=certs.stranger_pem,
                      timeout=3)
    assert psp.token_requests == 0


def test_the_adapter_with_a_stranger_certificate_or_untrusted_server_sends_nothing(psp, make_provider,
                                                                                     certs, uid):
    for provider in (make_provider(cert_file=certs.stranger_pem), make_provider(ca_file=None)):
        with pytest.raises(TransientProviderError):
            pay(provider, f"payout:tests:tls-{uid}:1")
    assert psp.token_requests == 0 and psp.sent == {}


# -- unknown is not failed ------------------------------------------------------------------------------

def test_a_lookup_efi_cannot_answer_is_pending_never_none(psp, efi, uid):
    key = f"payout:tests:down-{uid}:1"
    pay(efi, key)
    psp.stop()
    transfer = efi.lookup(key)
    assert transfer.status == "pending" and transfer.failure_code == NO_ANSWER
    assert transfer.external_id == "ext-1"


def test_an_idenvio_another_key_owns_is_refused_before_sending(psp, efi, redis_client, uid):
    key = f"payout:tests:coll-{uid}:1"
    redis_client.hset(f"efi-{uid}:sent", id_envio(key), '{"key": "payout:x:y:1", "external_id": "y", '
                                                        '"amount_cents": 1}')
    with pytest.raises(PermanentProviderError) as raised:
        pay(efi, key)
    assert raised.value.code == "EFI_ID_ENVIO_COLLISION" and psp.routes["send"] == 0


# -- reconciliation reads Efí's side -------------------------------------------------------------------

def test_transfers_lists_efis_sent_pix_as_our_transfers(psp, efi, certs, uid):
    paid = [pay(efi, idempotency_key("tests", f"l{i}-{uid}", 1), external_id=f"l{i}-{uid}")
            for i in range(3)]
    with pytest.raises(PermanentProviderError):
        pay(efi, idempotency_key("tests", f"l-nr-{uid}", 1), pix_key="nao.realizado@psp.test",
            external_id=f"l-nr-{uid}")
    # a Pix sent from the same account by someone else: no key of ours owns it
    session = requests.Session()
    session.cert, session.verify, session.trust_env = certs.client_pem, certs.ca_file, False
    token = session.post(f"{psp.base_url}/oauth/token", auth=(CLIENT_ID, CLIENT_SECRET), timeout=3).json()
    session.put(f"{psp.base_url}/v3/gn/pix/manual1", timeout=3,
                headers={"Authorization": f"Bearer {token['access_token']}"},
                json={"valor": "1.00", "pagador": {"chave": PAYER_KEY}, "favorecido": {"chave": "x@y.com"}})

    listed = {t.idempotency_key: t for t in efi.transfers()}
    assert {t.idempotency_key for t in paid} < set(listed)
    assert all(listed[t.idempotency_key] == t for t in paid)
    assert listed[idempotency_key("tests", f"l-nr-{uid}", 1)].status == "rejected"
    assert listed["efi:manual1"].external_id == "" and len(listed) == 5


def test_a_slow_answer_within_the_deadline_is_waited_for(psp, efi, uid):
    psp.slow_answer_s = 1.0  # the send may take two thirds of the 3 s call
    key = f"payout:tests:slow-{uid}:1"
    assert pay(efi, key, pix_key="slow@psp.test").status == "settled"
    assert psp.puts[id_envio(key)] == 1


def test_no_secret_and_no_full_pix_key_reaches_the_logs(psp, make_provider, uid, caplog):
    caplog.set_level(logging.DEBUG)  # urllib3's request lines included
    efi = make_provider(timeout_s=2.0)
    psp.slow_s = 3.0
    full_key = f"accept.timeout+{uid}@psp.test"
    for pix_key in ("accept.500@psp.test", "flaky.500@psp.test", "nao.realizado@psp.test", full_key):
        with contextlib.suppress(PermanentProviderError, TransientProviderError):
            pay(efi, f"payout:tests:log-{pix_key}-{uid}:1", pix_key=pix_key)
    psp.expire_tokens()
    pay(efi, f"payout:tests:log2-{uid}:1", pix_key="ana.maria.souza@example.com")
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert caplog.records  # something was logged (the unanswered sends)
    assert CLIENT_SECRET not in text and "ana.maria.souza@example.com" not in text and full_key not in text

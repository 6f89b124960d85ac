"""The simulated PIX provider against a real Redis: idempotency, test keys, seeded outcomes.

These are the provider-side guarantees the settle path relies on for "paid exactly once".
"""

from __future__ import annotations

import json
import re
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from random import Random

import pytest
import redis

from payouts_core.provider import (
    PermanentProviderError,
    PixProvider,
    Transfer,
    TransientProviderError,
    simulated,
)
from payouts_core.provider.simulated import (
    ATTEMPTS_TTL_S,
    E2E_ID_LEN,
    PERMANENT_REASONS,
    RANDOM_PERMANENT_CODES,
    RANDOM_TRANSIENT_CODES,
    TEST_KEYS,
    TRANSIENT_REASONS,
    SimulatedPixProvider,
    build_provider,
)
from payouts_core.settings import Settings
from payouts_devstack import free_port, start_redis

ISPB = "13935893"
# An EndToEndId (SPEC §6): E, the 8-digit ISPB, yyyyMMddHHmm (UTC), 11 alphanumerics.
E2E_ID_RE = re.compile(
    r"E(?P<ispb>[0-9]{8})"
    r"(?P<timestamp>[0-9]{4}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])(?:[01][0-9]|2[0-3])[0-5][0-9])"
    r"(?P<suffix>[A-Za-z0-9]{11})"
)
FIXED_NOW = datetime(2026, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)


def no_sleep(_seconds: float) -> None:
    return None


@pytest.fixture
def make_provider(redis_client):
    def make(client=None, **kwargs) -> SimulatedPixProvider:
        kwargs.setdefault("ispb", ISPB)
        kwargs.setdefault("sleep", no_sleep)
        return SimulatedPixProvider(client or redis_client, **kwargs)

    return make


@pytest.fixture
def provider(make_provider) -> SimulatedPixProvider:
    return make_provider()


def pay(provider: PixProvider, key: str, pix_key: str = "someone@example.com",
        amount_cents: int = 1234, external_id: str | None = None) -> Transfer:
    return provider.pay(idempotency_key=key, external_id=external_id or f"ext-{key}",
                        amount_cents=amount_cents, pix_key=pix_key)


def outcome(provider: PixProvider, key: str, **kwargs) -> tuple:
    """One pay call, as a comparable value."""
    try:
        transfer = pay(provider, key, **kwargs)
    except PermanentProviderError as exc:
        return ("permanent", exc.code, exc.reason)
    except TransientProviderError as exc:
        return ("transient", exc.code, exc.reason)
    return ("settled", transfer.e2e_id)


# -- shape ----------------------------------------------------------------------------------------


def test_settled_transfer_shape(make_provider, uid):
    provider = make_provider(clock=lambda: FIXED_NOW)
    transfer = pay(provider, f"k-{uid}", pix_key=f"ana.{uid}@example.com", amount_cents=150_00,
                   external_id=f"inv-{uid}")

    assert transfer.status == "settled"
    assert transfer.idempotency_key == f"k-{uid}"
    assert transfer.external_id == f"inv-{uid}"
    assert transfer.amount_cents == 150_00
    assert transfer.pix_key_masked == "a***@example.com"
    assert transfer.created_at == "2026-03-14T15:09:26.535Z"
    assert transfer.failure_code is None and transfer.failure_reason is None
    assert len(transfer.e2e_id) == E2E_ID_LEN == 32
    match = E2E_ID_RE.fullmatch(transfer.e2e_id)
    assert match and match["ispb"] == ISPB and match["timestamp"] == "202603141509"
    assert provider.lookup(f"k-{uid}") == transfer


def test_e2e_ids_use_utc_and_the_ispb(make_provider, uid):
    brasilia = timezone(timedelta(hours=-3))
    at_night = make_provider(ispb="00000000", clock=lambda: datetime(2026, 12, 31, 22, 30, tzinfo=brasilia))
    e2e = pay(at_night, f"night-{uid}").e2e_id
    assert e2e.startswith("E00000000202701010130") and len(e2e) == 32
    assert E2E_ID_RE.fullmatch(e2e)
    naive = make_provider(clock=lambda: datetime(2026, 1, 2, 3, 4))  # taken as UTC
    assert pay(naive, f"naive-{uid}").e2e_id.startswith(f"E{ISPB}202601020304")
    with pytest.raises(ValueError):
        make_provider(ispb="1234567")
    assert not E2E_ID_RE.fullmatch("E" + ISPB + "202613011200" + "a" * 11)  # month 13
    assert not E2E_ID_RE.fullmatch("E" + ISPB + "202601011200" + "a-b_cdefghi")


# -- idempotency -----------------------------------------------------------------------------------


def test_same_key_twice_returns_the_original_and_records_one_entry(make_provider, redis_client,
                                                                   uid):
    provider = make_provider(prefix=f"pixsim-test:{uid}:")
    first = pay(provider, f"k-{uid}", amount_cents=100)
    again = pay(provider, f"k-{uid}", amount_cents=999, external_id="something-else",
                pix_key="other@example.com")

    assert again == first
    assert list(provider.transfers()) == [first]
    assert redis_client.llen(f"pixsim-test:{uid}:transfers") == 1
    assert provider.attempts(f"k-{uid}") == 1  # the replay never reached the decision step


@pytest.mark.parametrize("past_the_plan", [False, True], ids=["one-call", "all-reach-create"])
def test_concurrent_pays_with_the_same_key_make_one_transfer(make_provider, redis_client, uid,
                                                            monkeypatch, past_the_plan):
    # Real (short) latency so the threads reach Redis at about the same moment.
    provider = make_provider(prefix=f"pixsim-test:{uid}:", latency_ms=(0, 5), sleep=time.sleep,
                             seed=uid)
    if past_the_plan:
        # No planned attempt: every call is counted, decided after the pay call, and (held until
        # all ten are there) races the others on the atomic create itself, each with its own
        # attempt, so its own e2e id.
        monkeypatch.setattr(simulated, "PLANNED_ATTEMPTS", 0)
        create, at_create = provider._create, threading.Barrier(10)

        def held_create(**kwargs):
            at_create.wait()
            return create(**kwargs)

        provider._create = held_create
    barrier = threading.Barrier(10)

    def worker(_):
        barrier.wait()
        return pay(provider, f"k-{uid}")

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(worker, range(10)))

    assert len({r.e2e_id for r in results}) == 1
    assert all(r == results[0] for r in results)
    assert list(provider.transfers()) == [results[0]]
    assert redis_client.llen(f"pixsim-test:{uid}:transfers") == 1
    if past_the_plan:
        assert provider.attempts(f"k-{uid}") == 10


def test_default_prefix_is_pixsim(provider, redis_client, uid):
    transfer = pay(provider, f"k-{uid}")
    stored = json.loads(redis_client.get(f"pixsim:transfer:k-{uid}"))
    assert stored["e2e_id"] == transfer.e2e_id
    assert f"k-{uid}" in redis_client.lrange("pixsim:transfers", -50, -1)
    assert 0 < redis_client.ttl(f"pixsim:attempts:k-{uid}") <= ATTEMPTS_TTL_S


def test_transfers_in_creation_order_across_pages(make_provider, monkeypatch, uid):
    monkeypatch.setattr(simulated, "_INDEX_CHUNK", 2)
    provider = make_provider(prefix=f"pixsim-test:{uid}:")
    made = [pay(provider, f"k{i}-{uid}") for i in range(3)]
    with pytest.raises(PermanentProviderError):
        pay(provider, f"k3-{uid}", pix_key="fail.ac06@pix.test")
    made.append(provider.lookup(f"k3-{uid}"))
    made.append(pay(provider, f"k4-{uid}"))

    listed = list(provider.transfers())
    assert [t.idempotency_key for t in listed] == [f"k{i}-{uid}" for i in range(5)]
    assert listed == made
    assert [t.status for t in listed] == ["settled"] * 3 + ["rejected", "settled"]


def test_lookup_unknown_key_is_none(provider, uid):
    assert provider.lookup(f"never-{uid}") is None


# -- test keys -------------------------------------------------------------------------------------

PERMANENT_TEST_KEYS = {
    "fail.ac03@pix.test": "AC03",
    "fail.ac06@pix.test": "AC06",
    "fail.am02@pix.test": "AM02",
    "fail.be01@pix.test": "BE01",
    "fail.ds04@pix.test": "DS04",
    "fail.dict@pix.test": "DICT_KEY_NOT_FOUND",
}


@pytest.mark.parametrize(("pix_key", "code"), sorted(PERMANENT_TEST_KEYS.items()))
def test_permanent_test_keys_are_rejected_recorded_and_replayed(provider, uid, pix_key, code):
    key = f"k-{uid}"
    with pytest.raises(PermanentProviderError) as first:
        pay(provider, key, pix_key=pix_key, amount_cents=500)
    assert first.value.code == code
    assert first.value.reason == PERMANENT_REASONS[code]

    recorded = provider.lookup(key)
    assert recorded.status == "rejected"
    assert recorded.e2e_id is None
    assert recorded.failure_code == code
    assert recorded.amount_cents == 500
    assert recorded.pix_key_masked == "f***@pix.test"
    assert "e2e_id" not in recorded.as_dict()

    with pytest.raises(PermanentProviderError) as replay:
        pay(provider, key, pix_key="someone@example.com")  # replay ignores the new arguments
    assert (replay.value.code, replay.value.reason) == (first.value.code, first.value.reason)
    assert provider.attempts(key) == 1


def test_test_keys_match_case_insensitively_after_normalising(provider, uid):
    with pytest.raises(PermanentProviderError) as exc:
        pay(provider, f"k-{uid}", pix_key="  Fail.AC03@PIX.test ")
    assert exc.value.code == "AC03"


def test_timeout_twice_then_settles(make_provider, uid):
    # Rates at 1.0 prove test keys win over random outcomes.
    provider = make_provider(permanent_failure_rate=1.0, transient_failure_rate=1.0)
    key = f"k-{uid}"
    for _ in range(2):
        with pytest.raises(TransientProviderError) as exc:
            pay(provider, key, pix_key="timeout.twice@pix.test")
        assert exc.value.code == "AB03"
        assert exc.value.reason == TRANSIENT_REASONS["AB03"]
        assert provider.lookup(key) is None  # a transient error records nothing
    transfer = pay(provider, key, pix_key="timeout.twice@pix.test")
    assert transfer.status == "settled" and E2E_ID_RE.fullmatch(transfer.e2e_id)
    assert provider.attempts(key) == 3
    assert pay(provider, key, pix_key="timeout.twice@pix.test") == transfer


@pytest.mark.parametrize(("pix_key", "code"), [("flaky.ab09@pix.test", "AB09"),
                                               ("dict.503@pix.test", "DICT_UNAVAILABLE")])
def test_transient_once_then_settles(provider, uid, pix_key, code):
    key = f"k-{uid}"
    with pytest.raises(TransientProviderError) as exc:
        pay(provider, key, pix_key=pix_key)
    assert exc.value.code == code
    assert provider.lookup(key) is None
    assert pay(provider, key, pix_key=pix_key).status == "settled"


def test_timeout_always_never_settles_and_records_nothing(make_provider, redis_client, uid):
    provider = make_provider(prefix=f"pixsim-test:{uid}:")
    key = f"k-{uid}"
    for _ in range(8):
        with pytest.raises(TransientProviderError) as exc:
            pay(provider, key, pix_key="timeout.always@pix.test")
        assert exc.value.code == "AB03"
    assert provider.lookup(key) is None
    assert list(provider.transfers()) == []
    assert redis_client.keys(f"pixsim-test:{uid}:transfer*") == []
    assert provider.attempts(key) == 8


def test_settle_then_timeout_records_the_transfer_but_answers_ab03(make_provider, uid):
    provider = make_provider(prefix=f"pixsim-test:{uid}:")
    key = f"k-{uid}"
    with pytest.raises(TransientProviderError) as exc:
        pay(provider, key, pix_key="settle.then.timeout@pix.test", amount_cents=777)
    assert exc.value.code == "AB03"

    found = provider.lookup(key)
    assert found is not None and found.status == "settled" and found.amount_cents == 777
    assert E2E_ID_RE.fullmatch(found.e2e_id)
    assert pay(provider, key, pix_key="settle.then.timeout@pix.test") == found
    assert list(provider.transfers()) == [found]


def test_test_keys_are_documented_lowercase_emails():
    assert set(TEST_KEYS) >= set(PERMANENT_TEST_KEYS) | {
        "timeout.twice@pix.test", "flaky.ab09@pix.test", "dict.503@pix.test",
        "timeout.always@pix.test", "settle.then.timeout@pix.test"}
    for key, description in TEST_KEYS.items():
        assert key == key.strip().lower() and key.endswith("@pix.test")
        assert description and "\n" not in description


# -- random outcomes -------------------------------------------------------------------------------


def run_until_final(provider: PixProvider, keys: list[str], max_attempts: int = 6) -> dict:
    """Per key, the sequence of outcomes a caller retrying transients would see."""
    seen = {}
    for key in keys:
        seq = []
        for _ in range(max_attempts):
            seq.append(outcome(provider, key))
            if seq[-1][0] != "transient":
                break
        seen[key] = seq
    return seen


def test_seeded_outcomes_are_deterministic_whatever_the_order(make_provider, uid):
    keys = [f"item-{i}" for i in range(40)]
    rates = {"permanent_failure_rate": 0.3, "transient_failure_rate": 0.3}

    def fresh(run: str, seed: str) -> SimulatedPixProvider:
        return make_provider(prefix=f"pixsim-test:{uid}:{run}:", seed=seed,
                             clock=lambda: FIXED_NOW, **rates)

    sequential = run_until_final(fresh("a", "s1"), keys)
    reversed_run = run_until_final(fresh("b", "s1"), list(reversed(keys)))
    # Keys processed concurrently, one thread per key, in whatever order the scheduler picks.
    threaded_provider = fresh("c", "s1")
    with ThreadPoolExecutor(max_workers=8) as pool:
        parts = list(pool.map(lambda k: run_until_final(threaded_provider, [k]), keys))
    threaded = {k: v for part in parts for k, v in part.items()}

    assert sequential == reversed_run == threaded
    kinds = {seq[-1][0] for seq in sequential.values()}
    assert kinds == {"settled", "permanent"}  # a mix, so the comparison means something
    assert any(len(seq) > 1 for seq in sequential.values())  # and some transients first

    other_seed = run_until_final(fresh("d", "s2"), keys)
    assert other_seed != sequential


def test_permanent_rate_one_always_rejects_with_a_catalogue_code(make_provider, uid):
    provider = make_provider(permanent_failure_rate=1.0, seed=uid)
    codes = set()
    for i in range(30):
        with pytest.raises(PermanentProviderError) as exc:
            pay(provider, f"k{i}-{uid}")
        codes.add(exc.value.code)
        assert provider.lookup(f"k{i}-{uid}").status == "rejected"
    assert codes <= set(RANDOM_PERMANENT_CODES) and len(codes) > 1


def test_transient_rate_one_always_fails_and_records_nothing(make_provider, uid):
    provider = make_provider(transient_failure_rate=1.0)  # unseeded
    for i in range(20):
        with pytest.raises(TransientProviderError) as exc:
            pay(provider, f"k{i}-{uid}")
        assert exc.value.code in RANDOM_TRANSIENT_CODES
        assert provider.lookup(f"k{i}-{uid}") is None


def test_random_rejection_is_replayed_not_redrawn(make_provider, uid):
    provider = make_provider(permanent_failure_rate=1.0)
    key = f"k-{uid}"
    with pytest.raises(PermanentProviderError) as first:
        pay(provider, key)
    healed = make_provider(permanent_failure_rate=0.0)
    for _ in range(3):
        with pytest.raises(PermanentProviderError) as again:
            pay(healed, key)
        assert (again.value.code, again.value.reason) == (first.value.code, first.value.reason)


# -- privacy, clients, latency, wiring -----------------------------------------------------------


def test_only_the_masked_pix_key_reaches_redis(make_provider, redis_client, uid):
    provider = make_provider()
    raw_keys = {
        f"maria.silva.{uid}@example.com": "m***@example.com",
        "+5511912345678": "+55*******5678",
        "12345678909": "***456789**",
        f"{uid}-4e7b-9d2c-0a1b2c3d4e5f": None,
    }
    for i, raw in enumerate(raw_keys):
        pay(provider, f"k{i}-{uid}", pix_key=raw)
    with pytest.raises(PermanentProviderError):
        pay(provider, f"kx-{uid}", pix_key="fail.be01@pix.test")
    with pytest.raises(TransientProviderError):
        pay(provider, f"ky-{uid}", pix_key="settle.then.timeout@pix.test")

    for i, (raw, masked) in enumerate(raw_keys.items()):
        stored = provider.lookup(f"k{i}-{uid}")
        assert stored.pix_key_masked != raw
        if masked:
            assert stored.pix_key_masked == masked

    everything = []
    for name in redis_client.scan_iter(match="pixsim:*", count=1000):
        everything.append(name)
        kind = redis_client.type(name)
        if kind == "string":
            everything.append(redis_client.get(name))
        elif kind == "list":
            everything.extend(redis_client.lrange(name, 0, -1))
        elif kind == "hash":
            everything.extend(f"{k}={v}" for k, v in redis_client.hgetall(name).items())
        elif kind == "zset":
            everything.extend(redis_client.zrange(name, 0, -1))
    blob = "\n".join(everything)
    for raw in [*raw_keys, "fail.be01@pix.test", "settle.then.timeout@pix.test"]:
        assert raw not in blob


def test_works_with_a_bytes_client(make_provider, redis_server, redis_client, uid):
    bytes_client = redis.Redis.from_url(redis_server)  # decode_responses=False
    try:
        provider = make_provider(bytes_client, prefix=f"pixsim-test:{uid}:")
        transfer = pay(provider, f"k1-{uid}")
        assert isinstance(transfer.e2e_id, str) and E2E_ID_RE.fullmatch(transfer.e2e_id)
        assert pay(provider, f"k1-{uid}") == transfer
        assert provider.lookup(f"k1-{uid}") == transfer
        with pytest.raises(PermanentProviderError) as exc:
            pay(provider, f"k2-{uid}", pix_key="fail.ds04@pix.test")
        with pytest.raises(PermanentProviderError) as replay:
            pay(provider, f"k2-{uid}")
        assert exc.value.code == replay.value.code == "DS04"
        assert provider.attempts(f"k2-{uid}") == 1
        assert [t.idempotency_key for t in provider.transfers()] == [f"k1-{uid}", f"k2-{uid}"]

        # The same ledger read through a str client gives the same answers.
        same = make_provider(redis_client, prefix=f"pixsim-test:{uid}:")
        assert list(same.transfers()) == list(provider.transfers())
    finally:
        bytes_client.close()


def test_latency_sleeps_within_the_range_on_every_call(make_provider, uid):
    slept = []
    provider = make_provider(latency_ms=(200, 300), sleep=slept.append)
    pay(provider, f"k-{uid}")
    pay(provider, f"k-{uid}")  # a replay is a call too
    with pytest.raises(TransientProviderError):
        pay(provider, f"t-{uid}", pix_key="timeout.always@pix.test")
    assert len(slept) == 3 and all(0.2 <= s <= 0.3 for s in slept)

    silent = []
    pay(make_provider(latency_ms=(0, 0), sleep=silent.append), f"z-{uid}")
    assert silent == []


def test_constructor_rejects_bad_configuration(redis_client):
    with pytest.raises(ValueError):
        SimulatedPixProvider(redis_client, ispb="123")
    with pytest.raises(ValueError):
        SimulatedPixProvider(redis_client, ispb=ISPB, latency_ms=(10, 5))
    with pytest.raises(ValueError):
        SimulatedPixProvider(redis_client, ispb=ISPB, permanent_failure_rate=1.5)
    with pytest.raises(ValueError):
        SimulatedPixProvider(redis_client, ispb=ISPB, transient_failure_rate=-0.1)


def test_build_provider_reads_the_settings(redis_client, uid):
    settings = Settings.from_env({
        "PIX_SIM_ISPB": "00000000",
        "PIX_SIM_LATENCY_MS": "10-20",
        "PIX_SIM_PERMANENT_FAILURE_RATE": "0.25",
        "PIX_SIM_TRANSIENT_FAILURE_RATE": "0.5",
        "PIX_SIM_SEED": "42",
    })
    provider = build_provider(settings, redis_client, sleep=no_sleep)
    assert isinstance(provider, PixProvider)
    assert provider.ispb == "00000000"
    assert provider.latency_ms == (10, 20)
    assert provider.permanent_failure_rate == 0.25
    assert provider.transient_failure_rate == 0.5
    assert provider.seed == "42"

    defaults = build_provider(Settings.from_env({}), redis_client, sleep=no_sleep)
    assert defaults.seed is None and defaults.latency_ms == (500, 2000)
    transfer = pay(defaults, f"k-{uid}")
    assert transfer.e2e_id.startswith("E13935893")


# -- one Redis call per pay (issue 12) -------------------------------------------------------------


@pytest.fixture(scope="module")
def counted_redis(tmp_path_factory):
    """A Redis of this module's own, so INFO commandstats counts nothing but these calls."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("provider-redis"), appendonly=False)
    client = redis.Redis(port=port, decode_responses=True)
    try:
        yield client
    finally:
        client.close()
        proc.stop()


def commands_of(client: redis.Redis, call) -> dict[str, int]:
    """The commands Redis ran for `call()`, by name (a script's own commands included)."""
    client.config_resetstat()
    call()
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): s["calls"] for name, s in stats.items()}
    return {n: c for n, c in calls.items() if n != "info" and not n.startswith("config")}


def attempt_of(provider, key, **kwargs):
    def call():
        attempt_of.result = outcome(provider, key, **kwargs)
    return call


# One client command (EVALSHA) per call; the rest are the script's own commands.
NEW_TRANSFER = {"evalsha": 1, "get": 1, "incr": 1, "expire": 1, "set": 1, "rpush": 1}
TRANSIENT = {"evalsha": 1, "get": 1, "incr": 1, "expire": 1}
REPLAY = {"evalsha": 1, "get": 1}


@pytest.mark.parametrize("seed", [None, "s1"], ids=["unseeded", "seeded"])
def test_each_pay_is_one_redis_call(make_provider, counted_redis, uid, seed):
    provider = make_provider(counted_redis, seed=seed, prefix=f"pixsim-test:{uid}:")
    pay(provider, f"warm-{uid}")  # loads the script (NOSCRIPT, SCRIPT LOAD) once per process

    assert commands_of(counted_redis, attempt_of(provider, f"k-{uid}")) == NEW_TRANSFER
    assert attempt_of.result[0] == "settled"
    assert commands_of(counted_redis, attempt_of(provider, f"k-{uid}")) == REPLAY

    assert commands_of(counted_redis, attempt_of(provider, f"r-{uid}",
                                                 pix_key="fail.ac03@pix.test")) == NEW_TRANSFER
    assert commands_of(counted_redis, attempt_of(provider, f"r-{uid}")) == REPLAY
    assert attempt_of.result[:2] == ("permanent", "AC03")

    for _ in range(2):
        assert commands_of(counted_redis, attempt_of(provider, f"t-{uid}",
                                                     pix_key="timeout.twice@pix.test")) == TRANSIENT
        assert attempt_of.result[:2] == ("transient", "AB03")
    assert commands_of(counted_redis, attempt_of(provider, f"t-{uid}",
                                                 pix_key="timeout.twice@pix.test")) == NEW_TRANSFER
    assert attempt_of.result[0] == "settled"

    late = make_provider(counted_redis, seed=seed, prefix=f"pixsim-test:{uid}:", latency_ms=(1, 1))
    assert commands_of(counted_redis, attempt_of(late, f"l-{uid}",
                                                 pix_key="settle.late@pix.test")) == NEW_TRANSFER
    assert commands_of(counted_redis, attempt_of(late, f"l-{uid}",
                                                 pix_key="settle.late@pix.test")) == REPLAY
    assert attempt_of.result[:2] == ("transient", "AB03")


def test_attempts_past_the_plan_keep_one_call_until_one_records(make_provider, counted_redis, uid):
    provider = make_provider(counted_redis, prefix=f"pixsim-test:{uid}:")
    pay(provider, f"warm-{uid}")
    key = f"k-{uid}"
    for _ in range(simulated.PLANNED_ATTEMPTS + 4):
        # Past the plan the script only counts the attempt; a transient needs nothing more.
        assert commands_of(counted_redis, attempt_of(provider, key,
                                                     pix_key="timeout.always@pix.test")) == TRANSIENT
        assert attempt_of.result[:2] == ("transient", "AB03")
    assert provider.attempts(key) == simulated.PLANNED_ATTEMPTS + 4
    assert provider.lookup(key) is None


def test_an_attempt_past_the_plan_that_records_costs_a_second_call(make_provider, counted_redis,
                                                                   monkeypatch, uid):
    monkeypatch.setattr(simulated, "PLANNED_ATTEMPTS", 2)
    provider = make_provider(counted_redis, seed="s1", prefix=f"pixsim-test:{uid}:",
                             clock=lambda: FIXED_NOW)
    pay(provider, f"warm-{uid}")
    counted_redis.script_load(simulated._CREATE_LUA)  # as a worker that used it before has
    key = f"k-{uid}"
    for _ in range(2):
        assert outcome(provider, key, pix_key="timeout.twice@pix.test")[:2] == ("transient", "AB03")
    # The third attempt settles, past a plan of two: counted by the script, stored by the create.
    assert commands_of(counted_redis, attempt_of(provider, key, pix_key="timeout.twice@pix.test")) \
        == {**NEW_TRANSFER, "evalsha": 2, "get": 2}
    settled = attempt_of.result
    expected_e2e = independent_e2e(Random(f"s1:{key}:3"))  # a test key draws nothing first
    assert settled == ("settled", expected_e2e)
    assert provider.attempts(key) == 3
    assert provider.lookup(key).e2e_id == expected_e2e
    assert [t.idempotency_key for t in provider.transfers()] == [f"warm-{uid}", key]
    assert outcome(provider, key, pix_key="timeout.twice@pix.test") == settled


# -- races -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("own_connections", [False, True], ids=["one-client", "one-per-caller"])
@pytest.mark.parametrize(("pix_key", "rates"), [
    ("someone@example.com", {}),
    ("fail.ac06@pix.test", {}),
    ("someone@example.com", {"permanent_failure_rate": 1.0}),
], ids=["settles", "test-key-rejected", "randomly-rejected"])
def test_simultaneous_callers_of_one_key_get_one_answer(make_provider, redis_server, redis_client,
                                                         uid, pix_key, rates, own_connections):
    callers = 16
    prefix = f"pixsim-test:{uid}:"
    clients = [redis.Redis.from_url(redis_server, decode_responses=True)
               for _ in range(callers if own_connections else 0)]
    try:
        providers = [make_provider(c, prefix=prefix, **rates) for c in clients] or \
            [make_provider(prefix=prefix, **rates)] * callers
        barrier = threading.Barrier(callers)

        def caller(i):
            barrier.wait()
            return outcome(providers[i], f"k-{uid}", pix_key=pix_key)

        with ThreadPoolExecutor(max_workers=callers) as pool:
            answers = list(pool.map(caller, range(callers)))
    finally:
        for c in clients:
            c.close()

    assert len(set(answers)) == 1, answers  # the same e2e id, or the same rejection, for all
    assert answers[0][0] == ("settled" if pix_key == "someone@example.com" and not rates
                             else "permanent")
    assert len(list(providers[0].transfers())) == 1
    assert redis_client.llen(f"{prefix}transfers") == 1
    assert providers[0].attempts(f"k-{uid}") == 1  # one decision; the others were replays


# -- seeded reproducibility, computed independently of the provider ------------------------------

E2E_CHARS = string.ascii_letters + string.digits


def independent_e2e(rng: Random) -> str:
    return f"E{ISPB}202603141509{''.join(rng.choices(E2E_CHARS, k=11))}"


def expected_outcome(seed: str, key: str, attempt: int, transient: float, permanent: float):
    """What attempt `attempt` of `key` answers under `seed`, as the provider has always drawn it."""
    rng = Random(f"{seed}:{key}:{attempt}")
    if rng.random() < transient:
        code = rng.choice(RANDOM_TRANSIENT_CODES)
        return ("transient", code, TRANSIENT_REASONS[code])
    if rng.random() < permanent:
        code = rng.choice(RANDOM_PERMANENT_CODES)
        return ("permanent", code, PERMANENT_REASONS[code])
    return ("settled", independent_e2e(rng))


@pytest.mark.parametrize("planned", [None, 1, 0], ids=["default-plan", "plan-of-1", "no-plan"])
@pytest.mark.parametrize(("transient", "permanent"), [(0.3, 0.3), (0.9, 0.2), (0.0, 0.0)])
def test_seeded_outcomes_per_key_and_attempt_are_as_before(make_provider, monkeypatch, uid,
                                                           transient, permanent, planned):
    if planned is not None:
        monkeypatch.setattr(simulated, "PLANNED_ATTEMPTS", planned)
    provider = make_provider(prefix=f"pixsim-test:{uid}:", seed="repro", clock=lambda: FIXED_NOW,
                             transient_failure_rate=transient, permanent_failure_rate=permanent)
    max_attempts = 20  # past the default plan: 0.9 transient keeps some keys failing 8 times
    keys = [f"item-{i}" for i in range(30)]
    for key in keys:
        expected, actual = [], []
        for attempt in range(1, max_attempts + 1):
            expected.append(expected_outcome("repro", key, attempt, transient, permanent))
            actual.append(outcome(provider, key))
            if expected[-1][0] != "transient":
                break
        assert actual == expected, key
        final = expected[-1]
        if final[0] != "transient":
            assert outcome(provider, key) == final  # replayed, never redrawn
            assert provider.attempts(key) == len(expected)
    if transient == 0.9:
        assert max(provider.attempts(k) for k in keys) > simulated.PLANNED_ATTEMPTS


def test_seeded_test_key_e2e_ids_are_as_before(make_provider, uid):
    provider = make_provider(seed="repro", clock=lambda: FIXED_NOW)
    key = f"k-{uid}"
    for _ in range(2):
        outcome(provider, key, pix_key="timeout.twice@pix.test")
    assert outcome(provider, key, pix_key="timeout.twice@pix.test") == \
        ("settled", independent_e2e(Random(f"repro:{key}:3")))


# -- the stored record, lost answers, slow and hung calls ----------------------------------------


def test_stored_records_are_the_transfers_json(make_provider, redis_client, uid):
    provider = make_provider(prefix=f"pixsim-test:{uid}:", clock=lambda: FIXED_NOW)
    odd = 'inv "quoted" \\ back\\slash ção \u2028'
    settled = pay(provider, f"s-{uid}", external_id=odd)
    with pytest.raises(PermanentProviderError):
        pay(provider, f"r-{uid}", external_id=odd, pix_key="fail.dict@pix.test")
    with pytest.raises(TransientProviderError):
        pay(provider, f"p-{uid}", external_id=odd, pix_key="settle.late@pix.test")
    for key in (f"s-{uid}", f"r-{uid}", f"p-{uid}"):
        stored = json.loads(redis_client.get(f"pixsim-test:{uid}:transfer:{key}"))
        assert stored == provider.lookup(key).as_dict()
        assert stored["external_id"] == odd and stored["idempotency_key"] == key
    assert provider.lookup(f"s-{uid}") == settled
    assert provider.lookup(f"r-{uid}").failure_reason == PERMANENT_REASONS["DICT_KEY_NOT_FOUND"]


def test_settle_late_is_pending_then_settles_and_every_call_answers_ab03(make_provider, uid):
    now = [FIXED_NOW]
    provider = make_provider(prefix=f"pixsim-test:{uid}:", clock=lambda: now[0],
                             settlement_timeout_s=10.0)
    key = f"k-{uid}"
    with pytest.raises(TransientProviderError) as exc:
        pay(provider, key, pix_key="settle.late@pix.test", amount_cents=4321)
    assert exc.value.code == "AB03"
    pending = provider.lookup(key)
    assert pending.status == "pending" and E2E_ID_RE.fullmatch(pending.e2e_id)
    assert pending.settles_at == "2026-03-14T15:09:31.535Z" and pending.amount_cents == 4321
    # While pending, even a caller naming another pix key is told AB03 (the answer is unknown).
    for pix_key in ("settle.late@pix.test", "someone@example.com"):
        assert outcome(provider, key, pix_key=pix_key)[:2] == ("transient", "AB03")

    now[0] = FIXED_NOW + timedelta(seconds=5)
    settled = provider.lookup(key)
    assert settled == replace(pending, status="settled")
    assert list(provider.transfers()) == [settled]
    assert outcome(provider, key, pix_key="settle.late@pix.test")[:2] == ("transient", "AB03")
    assert outcome(provider, key, pix_key="someone@example.com") == ("settled", pending.e2e_id)
    assert provider.attempts(key) == 1


def test_slow_stuck_sleeps_the_deadline_and_records_nothing(make_provider, uid):
    slept = []
    provider = make_provider(sleep=slept.append, settlement_timeout_s=4.0)
    key = f"k-{uid}"
    for _ in range(3):
        assert outcome(provider, key, pix_key="slow.stuck@pix.test")[:2] == ("transient", "AB03")
    assert slept == [4.0] * 3
    assert provider.lookup(key) is None and provider.attempts(key) == 0


def test_hang_sleeps_ten_minutes_then_settles(make_provider, uid):
    slept = []
    provider = make_provider(sleep=slept.append, settlement_timeout_s=4.0)
    transfer = pay(provider, f"k-{uid}", pix_key="hang@pix.test")
    assert slept == [600.0]
    assert transfer.status == "settled" and provider.lookup(f"k-{uid}") == transfer

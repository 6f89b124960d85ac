"""Settings are read once and validated; a bad value names its variable."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from payouts_core.settings import (
    EXAMPLE_API_KEYS,
    MAX_WORKER_PROCESSES,
    REGULATORY_MAX_AMOUNT_CENTS,
    Settings,
    SettingsError,
    key_digest,
    usable_cores,
    webhook_lease_s,
    webhook_time_limit_s,
)
from payouts_tasks.faults import armed_marker


def test_defaults_derive_every_url_from_redis_url():
    settings = Settings.from_env({"REDIS_URL": "redis://cache:6380/2"})
    assert settings.broker_url == settings.result_backend == settings.store_url == \
        settings.ratelimit_storage_uri == "redis://cache:6380/2"
    assert settings.max_amount_cents == 1_499_999 and settings.max_items == 10_000


def test_overrides_win():
    settings = Settings.from_env({"REDIS_URL": "redis://a/0", "CELERY_BROKER_URL": "amqp://b//"})
    assert settings.broker_url == "amqp://b//" and settings.store_url == "redis://a/0"


@pytest.mark.parametrize(("name", "value"), [
    ("PAYOUTS_MAX_ITEMS", "many"), ("PAYOUTS_MAX_ITEMS", "0"), ("PIX_SIM_LATENCY_MS", "9-1"),
    ("PIX_SIM_PERMANENT_FAILURE_RATE", "1.5"), ("PAYOUTS_RATELIMIT_ENABLED", "maybe"),
    ("PIX_SIM_ISPB", "123"), ("PAYOUTS_LOG_FORMAT", "xml"), ("LOG_LEVEL", "loud"),
    ("PAYOUTS_API_KEYS", "nokey"), ("PAYOUTS_API_KEYS", "a:short"),
    ("PAYOUTS_API_KEYS", "a:0123456789abcdef,b:0123456789abcdef"),  # one key, two clients
    ("PAYOUTS_SETTLE_TIME_LIMIT_S", "10"),  # must exceed the 40 s settlement deadline
    ("PAYOUTS_RETRY_BACKOFF_MAX_S", "400"),  # must stay well below the visibility timeout
    ("PAYOUTS_VISIBILITY_TIMEOUT_S", "50"),  # must exceed the settle time limit
    ("PAYOUTS_VISIBILITY_TIMEOUT_S", "60"),  # must exceed the time limit + the longest countdown
    ("PAYOUTS_STALL_AFTER_S", "50"),  # must exceed the settle time limit
])
def test_bad_values_are_refused_naming_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_api_keys_are_kept_as_digests_only():
    settings = Settings.from_env({"PAYOUTS_API_KEYS": "a:0123456789abcdef, b:fedcba9876543210"})
    assert settings.api_keys == (("a", key_digest("0123456789abcdef")),
                                 ("b", key_digest("fedcba9876543210")))
    assert "0123456789abcdef" not in repr(settings)


# --- production guard (issue 10) ------------------------------------------------------------------

UNSAFE = [
    ("PAYOUTS_AUTH_DISABLED", {"PAYOUTS_AUTH_DISABLED": "true"}),
    ("PAYOUTS_FAULT_CRASH_AFTER_PAY", {"PAYOUTS_FAULT_CRASH_AFTER_PAY": "crash"}),
    ("PAYOUTS_API_KEYS", {"PAYOUTS_API_KEYS": f"real:{'r' * 32},platform-a:{EXAMPLE_API_KEYS[0]}"}),
    ("PAYOUTS_MAX_AMOUNT_CENTS", {"PAYOUTS_MAX_AMOUNT_CENTS": str(REGULATORY_MAX_AMOUNT_CENTS + 1)}),
]


def test_environment_defaults_to_production():
    assert Settings.from_env({}).environment == "production"
    assert Settings.from_env({"PAYOUTS_ENV": "Development"}).environment == "development"


def test_unknown_environment_is_refused():
    with pytest.raises(SettingsError, match="PAYOUTS_ENV"):
        Settings.from_env({"PAYOUTS_ENV": "staging"})


@pytest.mark.parametrize(("name", "env"), UNSAFE, ids=[name for name, _ in UNSAFE])
@pytest.mark.parametrize("environment", [None, "production"])
def test_production_refuses_unsafe_settings_naming_the_variable(name, env, environment):
    if environment:
        env = {**env, "PAYOUTS_ENV": environment}
    with pytest.raises(SettingsError, match=name) as refused:
        Settings.from_env(env)
    assert "PAYOUTS_ENV=production" in str(refused.value)
    assert ":" in str(refused.value).partition("production")[2]  # ... and says why


@pytest.mark.parametrize(("name", "env"), UNSAFE, ids=[name for name, _ in UNSAFE])
@pytest.mark.parametrize("environment", ["development", "test"])
def test_development_and_test_accept_them(name, env, environment):
    Settings.from_env({**env, "PAYOUTS_ENV": environment})


def test_production_accepts_the_regulatory_cap_and_no_more():
    """Res. BCB 496/2025: R$ 15.000 per transfer for institutions the Banco Central has not
    authorised (issue 20: the guard allowed 1,000 times that)."""
    cap = Settings.from_env({"PAYOUTS_MAX_AMOUNT_CENTS": str(REGULATORY_MAX_AMOUNT_CENTS)})
    assert cap.max_amount_cents == 1_499_999
    with pytest.raises(SettingsError, match="Res. BCB 496/2025"):
        Settings.from_env({"PAYOUTS_MAX_AMOUNT_CENTS": "1500000"})


@pytest.mark.parametrize("environment", ["production", "development", "test"])
def test_amount_cap_above_what_json_keeps_exact_is_refused_everywhere(environment):
    assert Settings.from_env({"PAYOUTS_ENV": "test", "PAYOUTS_MAX_AMOUNT_CENTS": str(2**53 - 1)})
    with pytest.raises(SettingsError, match="PAYOUTS_MAX_AMOUNT_CENTS.*2\\*\\*53"):
        Settings.from_env({"PAYOUTS_ENV": environment, "PAYOUTS_MAX_AMOUNT_CENTS": str(2**53)})


def test_fault_hook_is_inert_outside_test_and_development():
    armed = Settings.from_env({"PAYOUTS_ENV": "test", "PAYOUTS_FAULT_CRASH_AFTER_PAY": "crash"})
    assert armed_marker(armed) == "crash"
    assert armed_marker(replace(armed, environment="development")) == "crash"
    # Even a Settings built past from_env's guard cannot arm it in production.
    assert armed_marker(replace(armed, environment="production")) == ""


# --- worker processes (issue 12) ------------------------------------------------------------------

def test_worker_processes_default_to_the_usable_cores():
    """The cores this process may run on (its affinity), which os.cpu_count() would overstate."""
    cores = len(os.sched_getaffinity(0))
    assert usable_cores() == cores
    assert Settings.from_env({}).worker_processes == min(cores, MAX_WORKER_PROCESSES)


def test_worker_processes_are_read_and_bounded():
    assert Settings.from_env({"WORKER_PROCESSES": "3"}).worker_processes == 3
    assert Settings.from_env({"WORKER_PROCESSES": str(MAX_WORKER_PROCESSES)}).worker_processes == \
        MAX_WORKER_PROCESSES
    for bad in ("0", "-1", "two", str(MAX_WORKER_PROCESSES + 1)):
        with pytest.raises(SettingsError, match="WORKER_PROCESSES"):
            Settings.from_env({"WORKER_PROCESSES": bad})


# --- the archiver's fault hook (issue 18) ----------------------------------------------------------

ARCHIVER_FAULT = {"PAYOUTS_FAULT_ARCHIVER_CRASH_AFTER_COMMIT": "true",
                  "DATABASE_URL": "postgresql://payouts@db/payouts"}


def test_production_refuses_the_archiver_fault_hook():
    with pytest.raises(SettingsError, match="PAYOUTS_FAULT_ARCHIVER_CRASH_AFTER_COMMIT") as refused:
        Settings.from_env(ARCHIVER_FAULT)
    assert "PAYOUTS_ENV=production" in str(refused.value)
    assert not Settings.from_env({**ARCHIVER_FAULT, "PAYOUTS_FAULT_ARCHIVER_CRASH_AFTER_COMMIT": ""}) \
        .ledger.fault_crash_after_commit


@pytest.mark.parametrize("environment", ["development", "test"])
def test_development_and_test_accept_the_archiver_fault_hook(environment):
    settings = Settings.from_env({**ARCHIVER_FAULT, "PAYOUTS_ENV": environment})
    assert settings.ledger.fault_crash_after_commit is True


# --- issue 20: isolation settings ---------------------------------------------------------------

def test_isolation_defaults():
    settings = Settings.from_env({})
    assert settings.trusted_proxy_hops == 0
    assert settings.metrics_token_digest == ""
    assert settings.webhook_ports == ()  # 443 (and 80 with plain HTTP)
    assert settings.max_batch_amount_cents < 10_000 * REGULATORY_MAX_AMOUNT_CENTS
    assert settings.max_batch_amount_cents <= settings.max_daily_amount_cents


# The fault suite's: a killed worker's messages come back within 16 s.
SHORT_REDELIVERY = {"PAYOUTS_VISIBILITY_TIMEOUT_S": "16", "PAYOUTS_SETTLE_TIME_LIMIT_S": "5",
                    "PIX_SIM_SETTLEMENT_TIMEOUT_S": "2", "PAYOUTS_STALL_AFTER_S": "6",
                    "PAYOUTS_RETRY_BACKOFF_MAX_S": "0.5"}


def test_a_webhook_attempts_deadline_time_limit_and_lease_nest_below_the_visibility_timeout():
    settings = Settings.from_env({**SHORT_REDELIVERY, "PAYOUTS_WEBHOOK_TIMEOUT_S": "9"})
    deadline = settings.webhook_timeout_s
    assert deadline < webhook_time_limit_s(deadline) < webhook_lease_s(deadline) < 16


@pytest.mark.parametrize(("env", "name"), [
    ({"PAYOUTS_WEBHOOK_TIMEOUT_S": "60"}, "PAYOUTS_WEBHOOK_TIMEOUT_S"),  # + 10 s slack = visibility 70
    ({**SHORT_REDELIVERY, "PAYOUTS_WEBHOOK_TIMEOUT_S": "10"}, "PAYOUTS_WEBHOOK_TIMEOUT_S"),
    ({"PAYOUTS_TRUSTED_PROXY_HOPS": "6"}, "PAYOUTS_TRUSTED_PROXY_HOPS"),
    ({"PAYOUTS_TRUSTED_PROXY_HOPS": "-1"}, "PAYOUTS_TRUSTED_PROXY_HOPS"),
    ({"PAYOUTS_METRICS_TOKEN": "short"}, "PAYOUTS_METRICS_TOKEN"),
    ({"PAYOUTS_WEBHOOK_PORTS": "443,http"}, "PAYOUTS_WEBHOOK_PORTS"),
    ({"PAYOUTS_WEBHOOK_PORTS": "0"}, "PAYOUTS_WEBHOOK_PORTS"),
    ({"PAYOUTS_MAX_BATCH_AMOUNT_CENTS": "0"}, "PAYOUTS_MAX_BATCH_AMOUNT_CENTS"),
    ({"PAYOUTS_WEBHOOK_INFLIGHT_PER_CLIENT": "0"}, "PAYOUTS_WEBHOOK_INFLIGHT_PER_CLIENT"),
])
def test_contradicting_or_bad_isolation_settings_are_refused_at_start(env, name):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({"PAYOUTS_ENV": "test", **env})


def test_webhook_ports_and_token_parse():
    settings = Settings.from_env({"PAYOUTS_WEBHOOK_PORTS": "443, 8443", "PAYOUTS_METRICS_TOKEN": "m" * 20})
    assert settings.webhook_ports == (443, 8443)
    assert settings.metrics_token_digest and "m" * 20 not in repr(settings)
    assert Settings.from_env({"PAYOUTS_WEBHOOK_PORTS": "*"}).webhook_ports is None

"""Provider choice, Efí's settings, and secrets given as files (NAME_FILE)."""

from __future__ import annotations

import pytest
import trustme

from payouts_core.settings import (
    EFI_PRODUCTION_URL,
    EFI_SANDBOX_URL,
    SECRET_NAMES,
    Settings,
    SettingsError,
    key_digest,
    read_secret,
)


@pytest.fixture
def pem(tmp_path):
    path = tmp_path / "account.pem"
    trustme.CA().issue_cert("account.test").private_key_and_cert_chain_pem.write_to_path(str(path))
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def efi_env(pem):
    return {"PAYOUTS_PROVIDER": "efi", "EFI_CLIENT_ID": "Client_Id_abc",
            "EFI_CLIENT_SECRET": "Client_Secret_xyz", "EFI_CERT_FILE": pem,
            "EFI_PAYER_KEY": "payer@example.com", "PAYOUTS_ENV": "test"}


def secret_file(tmp_path, name: str, text: str, mode: int = 0o600) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_the_simulator_is_the_default_provider_with_its_own_settings():
    settings = Settings.from_env({"PIX_SIM_LATENCY_MS": "10-20", "PIX_SIM_SETTLEMENT_TIMEOUT_S": "7"})
    assert settings.provider == "simulated" and settings.efi is None
    assert settings.simulator.latency_ms == (10, 20)
    assert settings.provider_settlement_timeout_s == 7.0


def test_efi_settings_are_read_with_defaults(efi_env, pem):
    settings = Settings.from_env(efi_env)
    efi = settings.efi
    assert settings.provider == "efi"
    assert (efi.base_url, efi.client_id, efi.client_secret, efi.cert_file, efi.ca_file, efi.payer_key) == \
        (EFI_PRODUCTION_URL, "Client_Id_abc", "Client_Secret_xyz", pem, None, "payer@example.com")
    assert (efi.connect_timeout_s, efi.timeout_s, efi.final_deadline_s) == (3.0, 20.0, 300.0)
    assert settings.provider_settlement_timeout_s == 20.0  # what settle plans its retries on


def test_the_sandbox_url_is_accepted(efi_env):
    settings = Settings.from_env({**efi_env, "EFI_BASE_URL": EFI_SANDBOX_URL + "/"})
    assert settings.efi.base_url == "https://pix-h.api.efipay.com.br"


def test_efi_credentials_never_appear_in_a_repr(efi_env):
    text = repr(Settings.from_env(efi_env))
    assert "Client_Secret_xyz" not in text and "Client_Id_abc" not in text and "payer@" not in text


@pytest.mark.parametrize("missing", ["EFI_CLIENT_ID", "EFI_CLIENT_SECRET", "EFI_CERT_FILE", "EFI_PAYER_KEY"])
def test_efi_without_a_required_setting_is_refused_naming_it(efi_env, missing):
    del efi_env[missing]
    with pytest.raises(SettingsError, match=missing):
        Settings.from_env(efi_env)


@pytest.mark.parametrize(("name", "value"), [
    ("PAYOUTS_PROVIDER", "bank"), ("EFI_BASE_URL", "http://pix.api.efipay.com.br"),
    ("EFI_CERT_FILE", "/nonexistent/cert.pem"), ("EFI_CA_FILE", "/nonexistent/ca.pem"),
    ("EFI_CERT_FILE", "/etc/hostname"),  # not a certificate and key
    ("EFI_TIMEOUT_S", "0"), ("EFI_CONNECT_TIMEOUT_S", "30"),  # above the 20 s call
    ("EFI_FINAL_DEADLINE_S", "5"),  # below the call's own deadline
    ("PAYOUTS_SETTLE_TIME_LIMIT_S", "20"),  # must exceed EFI_TIMEOUT_S
])
def test_bad_efi_values_are_refused_naming_the_variable(efi_env, name, value):
    with pytest.raises(SettingsError, match=name if name != "EFI_CONNECT_TIMEOUT_S" else "EFI_CONNECT"):
        Settings.from_env({**efi_env, name: value})


def test_every_secret_may_come_from_a_file(tmp_path, efi_env):
    env = {k: v for k, v in efi_env.items() if k not in ("EFI_CLIENT_ID", "EFI_CLIENT_SECRET")}
    files = {
        "PAYOUTS_API_KEYS_FILE": secret_file(tmp_path, "keys", "a:0123456789abcdef,b:fedcba9876543210\n"),
        "REDIS_URL_FILE": secret_file(tmp_path, "redis", "redis://:pw@cache:6380/2\n"),
        "CELERY_BROKER_URL_FILE": secret_file(tmp_path, "broker", "amqp://u:pw@mq//"),
        "CELERY_RESULT_BACKEND_FILE": secret_file(tmp_path, "backend", "redis://:pw@results/1"),
        "PAYOUTS_STORE_URL_FILE": secret_file(tmp_path, "store", "redis://:pw@store/3"),
        "RATELIMIT_STORAGE_URI_FILE": secret_file(tmp_path, "rl", "redis://:pw@rl/4"),
        "DATABASE_URL_FILE": secret_file(tmp_path, "db", "postgresql://payouts:pw@db:5432/payouts\n"),
        "EFI_CLIENT_ID_FILE": secret_file(tmp_path, "id", "Client_Id_file\n"),
        "EFI_CLIENT_SECRET_FILE": secret_file(tmp_path, "secret", "Client_Secret_file"),
    }
    assert {name.removesuffix("_FILE") for name in files} == set(SECRET_NAMES)
    settings = Settings.from_env({**env, **files})
    assert settings.api_keys == (("a", key_digest("0123456789abcdef")), ("b", key_digest("fedcba9876543210")))
    assert settings.redis_url == "redis://:pw@cache:6380/2"  # one trailing newline dropped
    urls = (settings.broker_url, settings.result_backend, settings.store_url, settings.ratelimit_storage_uri)
    assert urls == ("amqp://u:pw@mq//", "redis://:pw@results/1", "redis://:pw@store/3", "redis://:pw@rl/4")
    assert (settings.efi.client_id, settings.efi.client_secret) == ("Client_Id_file", "Client_Secret_file")
    assert settings.ledger.database_url == "postgresql://payouts:pw@db:5432/payouts"


def test_a_secret_given_twice_is_refused(tmp_path):
    env = {"REDIS_URL": "redis://a/0", "REDIS_URL_FILE": secret_file(tmp_path, "r", "redis://b/0")}
    with pytest.raises(SettingsError, match="REDIS_URL or REDIS_URL_FILE"):
        Settings.from_env(env)


def test_an_unreadable_secret_file_is_refused_without_its_content(tmp_path):
    with pytest.raises(SettingsError, match="PAYOUTS_API_KEYS_FILE.*cannot read"):
        Settings.from_env({"PAYOUTS_API_KEYS_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize("environment", [None, "production"])
def test_production_refuses_a_world_readable_secret_file(tmp_path, environment):
    path = secret_file(tmp_path, "keys", "a:0123456789abcdef", mode=0o644)
    env = {"PAYOUTS_API_KEYS_FILE": path, **({"PAYOUTS_ENV": environment} if environment else {})}
    with pytest.raises(SettingsError, match="world-readable") as raised:
        Settings.from_env(env)
    assert "0123456789abcdef" not in str(raised.value)
    path_ok = secret_file(tmp_path, "keys2", "a:0123456789abcdef", mode=0o640)  # group: fine
    assert Settings.from_env({**env, "PAYOUTS_API_KEYS_FILE": path_ok}).api_keys


def test_production_refuses_a_world_readable_efi_certificate(efi_env, pem):
    import os

    os.chmod(pem, 0o644)
    with pytest.raises(SettingsError, match="EFI_CERT_FILE.*world-readable"):
        Settings.from_env({**efi_env, "PAYOUTS_ENV": "production", "PAYOUTS_API_KEYS": "a:" + "k" * 32})
    assert Settings.from_env(efi_env).efi.cert_file == pem  # test and development accept it


def test_development_reads_a_world_readable_file(tmp_path):
    path = secret_file(tmp_path, "keys", "a:0123456789abcdef", mode=0o644)
    assert read_secret({"X_FILE": path}, "X", strict=False) == "a:0123456789abcdef"
    assert read_secret({"X": "plain"}, "X", strict=True) == "plain"
    assert read_secret({}, "X", strict=True) is None


def test_the_configured_provider_is_built(efi_env, redis_client):
    from payouts_core.provider.efi import EfiPixProvider
    from payouts_core.provider.simulated import SimulatedPixProvider
    from payouts_core.resources import build_provider

    efi = build_provider(Settings.from_env({**efi_env, "WORKER_CONCURRENCY": "7"}), redis_client)
    assert isinstance(efi, EfiPixProvider) and efi.final_deadline_s == 300.0
    assert efi.http.pool.pool.maxsize == 7  # a kept-alive connection per greenlet
    assert isinstance(build_provider(Settings.from_env({}), redis_client), SimulatedPixProvider)

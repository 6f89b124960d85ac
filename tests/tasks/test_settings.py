"""Settings are read once and validated; a bad value names its variable."""

from __future__ import annotations

import pytest

from payouts_tasks.settings import Settings, SettingsError, key_digest


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
    ("PAYOUTS_API_KEYS", "a:0123456789abcdef,a:fedcba9876543210"),
    ("PAYOUTS_SETTLE_TIME_LIMIT_S", "10"),  # must exceed the 40 s settlement deadline
    ("PAYOUTS_RETRY_BACKOFF_MAX_S", "400"),  # must stay well below the visibility timeout
    ("PAYOUTS_VISIBILITY_TIMEOUT_S", "100"),  # must exceed the settle time limit
    ("PAYOUTS_STALL_AFTER_S", "60"),  # must exceed the settle time limit
])
def test_bad_values_are_refused_naming_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_api_keys_are_kept_as_digests_only():
    settings = Settings.from_env({"PAYOUTS_API_KEYS": "a:0123456789abcdef, b:fedcba9876543210"})
    assert settings.api_keys == (("a", key_digest("0123456789abcdef")),
                                 ("b", key_digest("fedcba9876543210")))
    assert "0123456789abcdef" not in repr(settings)

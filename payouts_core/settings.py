"""Runtime settings, read from the environment once and validated at start.

The API, the Celery app and the CLI all take their configuration from here, so one variable
means the same thing everywhere. Every setting is listed in `.env.example`.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from payouts_core.provider import is_ispb
from payouts_core.timing_rules import Timing


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot run with."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _range_ms(env: Mapping[str, str], name: str, default: tuple[int, int]) -> tuple[int, int]:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        lo, _, hi = raw.partition("-")
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise SettingsError(f"{name} must look like '500-2000' (milliseconds), got {raw!r}") from None
    if low < 0 or high < low:
        raise SettingsError(f"{name} must be a non-negative range low-high, got {raw!r}")
    return low, high


_KEY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
MIN_API_KEY_LENGTH = 16

# PAYOUTS_ENV: production unless a process says otherwise, so a forgotten variable is the safe one.
ENVIRONMENTS = ("production", "development", "test")
RELAXED_ENVIRONMENTS = ("development", "test")
# The keys shown in .env.example: published, so never a real credential.
EXAMPLE_API_KEYS = ("change-me-0123456789",)
# Lua's cjson writes numbers as doubles: above 2**53 - 1 the report would round the amount.
JSON_EXACT_MAX_CENTS = 2**53 - 1
# Worker processes per machine (payouts-worker): each holds WORKER_CONCURRENCY greenlets and its
# Redis pools, so far more than the cores only adds connections and memory, not throughput.
MAX_WORKER_PROCESSES = 64


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (what taskset or a cpuset allows), which
    os.cpu_count() ignores; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def key_digest(key: str) -> str:
    """API keys are kept only as SHA-256 digests, in memory and anywhere else."""
    return hashlib.sha256(key.encode()).hexdigest()


def _api_keys(env: Mapping[str, str], strict: bool) -> tuple[tuple[str, str], ...]:
    """PAYOUTS_API_KEYS="client:key,client:key2,other:key3" -> ((client, digest), ...).

    The name is the client (tenant); one client may hold several keys, for rotation.
    """
    raw = read_secret(env, "PAYOUTS_API_KEYS", strict=strict) or ""
    keys = []
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        name, sep, key = pair.partition(":")
        if not sep or not _KEY_NAME.match(name):
            raise SettingsError("PAYOUTS_API_KEYS must be comma-separated name:key pairs "
                                "(names of letters, digits, '.', '_' or '-')")
        if len(key) < MIN_API_KEY_LENGTH:
            raise SettingsError(f"PAYOUTS_API_KEYS: the key named {name!r} is shorter than "
                                f"{MIN_API_KEY_LENGTH} characters")
        keys.append((name, key_digest(key)))
    if len({d for _, d in keys}) != len(keys):
        raise SettingsError("PAYOUTS_API_KEYS: the same key is listed twice")
    return tuple(keys)


# --- Secrets (issue 19) -----------------------------------------------------------------------

# What may be given as NAME_FILE beside NAME: credentials, and URLs that may carry a password.
SECRET_NAMES = ("PAYOUTS_API_KEYS", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
                "PAYOUTS_STORE_URL", "RATELIMIT_STORAGE_URI", "DATABASE_URL", "EFI_CLIENT_ID",
                "EFI_CLIENT_SECRET")


def read_secret(env: Mapping[str, str], name: str, *, strict: bool) -> str | None:
    """NAME, or the contents of the file NAME_FILE names (the Docker and Kubernetes secrets
    convention); one trailing newline is dropped, as `echo secret > file` writes one.

    Setting both is refused (which one would win is a guess). `strict` (production) also refuses
    a world-readable file: any local user could read the secret. Errors name the variable and
    the path, never the value.
    """
    path = env.get(f"{name}_FILE")
    if not path:
        return env.get(name) or None
    if env.get(name):
        raise SettingsError(f"set {name} or {name}_FILE, not both")
    _check_secret_file(f"{name}_FILE", path, strict)
    text = Path(path).read_text()
    return text.removesuffix("\n").removesuffix("\r") or None


def _check_secret_file(variable: str, path: str, strict: bool) -> None:
    """The file exists, is readable, and (strict) is not readable by every local user."""
    try:
        mode = os.stat(path).st_mode
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise SettingsError(f"{variable}: cannot read {path!r} ({exc.strerror})") from None
    if strict and mode & stat.S_IROTH:
        raise SettingsError(f"{variable}: {path!r} is world-readable, refused with "
                            "PAYOUTS_ENV=production (chmod o-r it; Kubernetes: defaultMode 0440)")


# --- Providers: each provider's own settings (issue 19) ----------------------------------------

PROVIDERS = ("simulated", "efi")
EFI_PRODUCTION_URL = "https://pix.api.efipay.com.br"
EFI_SANDBOX_URL = "https://pix-h.api.efipay.com.br"


@dataclass(frozen=True)
class SimulatorSettings:
    """PIX_SIM_*: the in-process simulated bank (payouts_core.provider.simulated)."""

    latency_ms: tuple[int, int] = (500, 2000)
    permanent_failure_rate: float = 0.0
    transient_failure_rate: float = 0.0
    seed: str | None = None
    ispb: str = "13935893"
    settlement_timeout_s: float = 40.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SimulatorSettings:
        ispb = env.get("PIX_SIM_ISPB") or "13935893"
        if not is_ispb(ispb):
            raise SettingsError(f"PIX_SIM_ISPB must be 8 digits, got {ispb!r}")
        return cls(
            latency_ms=_range_ms(env, "PIX_SIM_LATENCY_MS", (500, 2000)),
            permanent_failure_rate=_float(env, "PIX_SIM_PERMANENT_FAILURE_RATE", 0.0, 0, 1),
            transient_failure_rate=_float(env, "PIX_SIM_TRANSIENT_FAILURE_RATE", 0.0, 0, 1),
            seed=env.get("PIX_SIM_SEED") or None,
            ispb=ispb,
            settlement_timeout_s=_float(env, "PIX_SIM_SETTLEMENT_TIMEOUT_S", 40.0, 0.1, 3600.0),
        )


@dataclass(frozen=True)
class EfiSettings:
    """EFI_*: Efí's Pix API (payouts_core.provider.efi). Credentials never appear in a repr."""

    base_url: str
    client_id: str = field(repr=False)
    client_secret: str = field(repr=False)
    cert_file: str  # PEM: the account's client certificate and its private key
    ca_file: str | None  # trust anchors for the PSP's server certificate; None: the system store
    payer_key: str = field(repr=False)  # the paying account's Pix key
    connect_timeout_s: float = 3.0
    timeout_s: float = 20.0  # one provider call, every HTTP request in it included
    final_deadline_s: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str], strict: bool) -> EfiSettings:
        missing = [n for n in ("EFI_CLIENT_ID", "EFI_CLIENT_SECRET", "EFI_CERT_FILE", "EFI_PAYER_KEY")
                   if not env.get(n) and not (n in SECRET_NAMES and env.get(f"{n}_FILE"))]
        if missing:
            raise SettingsError(f"PAYOUTS_PROVIDER=efi needs {', '.join(missing)}")
        base_url = (env.get("EFI_BASE_URL") or EFI_PRODUCTION_URL).rstrip("/")
        if urlsplit(base_url).scheme != "https":
            raise SettingsError(f"EFI_BASE_URL must be an https:// URL, got {base_url!r}")
        cert_file = env.get("EFI_CERT_FILE") or ""
        _check_secret_file("EFI_CERT_FILE", cert_file, strict)  # it holds the private key
        try:
            ssl.create_default_context().load_cert_chain(cert_file)
        except ssl.SSLError:
            raise SettingsError(f"EFI_CERT_FILE: {cert_file!r} is not a PEM holding a certificate "
                                "and its private key (openssl pkcs12 -in a.p12 -out a.pem -nodes)") from None
        ca_file = env.get("EFI_CA_FILE") or None
        if ca_file:
            _check_secret_file("EFI_CA_FILE", ca_file, strict=False)  # public certificates
        connect = _float(env, "EFI_CONNECT_TIMEOUT_S", 3.0, 0.1, 60.0)
        timeout = _float(env, "EFI_TIMEOUT_S", 20.0, 0.2, 300.0)
        if connect > timeout:
            raise SettingsError("EFI_CONNECT_TIMEOUT_S must not exceed EFI_TIMEOUT_S")
        final = _float(env, "EFI_FINAL_DEADLINE_S", 300.0, 0.1, 7 * 86400.0)
        if final < timeout:
            raise SettingsError("EFI_FINAL_DEADLINE_S must be at least EFI_TIMEOUT_S (a call still "
                                "running cannot be declared without a transfer)")
        return cls(base_url=base_url,
                   client_id=read_secret(env, "EFI_CLIENT_ID", strict=strict) or "",
                   client_secret=read_secret(env, "EFI_CLIENT_SECRET", strict=strict) or "",
                   cert_file=cert_file, ca_file=ca_file,
                   payer_key=env.get("EFI_PAYER_KEY") or "",
                   connect_timeout_s=connect, timeout_s=timeout, final_deadline_s=final)

# -- isolation (issue 20): neighbours, proxies, value caps, webhook queue -----------------------
# Kept in one block so other settings merge beside it. README "Configuration" says why each exists.

# R$ 5 million a batch, R$ 20 million a client a day: a leaked key could otherwise submit
# 10,000 x R$ 14.999,99 per batch, 20 batches per 10 s.
DEFAULT_MAX_BATCH_AMOUNT_CENTS = 500_000_000
DEFAULT_MAX_DAILY_AMOUNT_CENTS = 2_000_000_000
# A chain of reverse proxies longer than this is a misconfiguration, not a deployment.
MAX_TRUSTED_PROXY_HOPS = 5
# The regulatory per-transfer cap (Res. BCB 496/2025, R$ 15.000 for institutions not authorised
# by the Banco Central): production refuses a higher PAYOUTS_MAX_AMOUNT_CENTS.
REGULATORY_MAX_AMOUNT_CENTS = 1_499_999
# One webhook attempt's hard wall-clock deadline is PAYOUTS_WEBHOOK_TIMEOUT_S. The webhook task's
# time limit is the backstop past it, the attempt's lease outlives the task, and both must stay
# below the Redis visibility timeout, or a slow attempt is redelivered while it still runs.


def webhook_time_limit_s(timeout_s: float) -> float:
    """The webhook task's hard time limit: the attempt's own deadline answers first."""
    return timeout_s + max(1.0, timeout_s / 2)


def webhook_lease_s(timeout_s: float) -> float:
    """How long one attempt holds its delivery: past the task's time limit, so no second attempt
    starts while the first can still be sending."""
    return webhook_time_limit_s(timeout_s) + 1.0


def _ports(name: str, raw: str | None) -> tuple[int, ...] | None:
    """"" = the defaults (443, and 80 when plain HTTP is allowed), "*" = any port, else a list."""
    raw = (raw or "").strip()
    if raw == "*":
        return None
    try:
        ports = tuple(int(p) for p in raw.split(",") if p.strip())
    except ValueError:
        raise SettingsError(f"{name} must be port numbers separated by commas, or *, got {raw!r}") from None
    if not all(1 <= p <= 65535 for p in ports):
        raise SettingsError(f"{name} ports must be 1-65535, got {raw!r}")
    return ports


def _isolation(env: Mapping[str, str], visibility: int) -> dict:
    timeout = _float(env, "PAYOUTS_WEBHOOK_TIMEOUT_S", 10.0, 0.1, 60.0)
    if webhook_lease_s(timeout) >= visibility:
        raise SettingsError(
            f"PAYOUTS_WEBHOOK_TIMEOUT_S={timeout:g} gives its attempts a lease of "
            f"{webhook_lease_s(timeout):g} s, which must stay below PAYOUTS_VISIBILITY_TIMEOUT_S "
            "(a webhook attempt still running at the visibility timeout is delivered twice)")
    token = env.get("PAYOUTS_METRICS_TOKEN") or ""
    if token and len(token) < MIN_API_KEY_LENGTH:
        raise SettingsError(f"PAYOUTS_METRICS_TOKEN must be at least {MIN_API_KEY_LENGTH} characters")
    hops = _int(env, "PAYOUTS_TRUSTED_PROXY_HOPS", 0)
    if hops > MAX_TRUSTED_PROXY_HOPS:
        raise SettingsError(f"PAYOUTS_TRUSTED_PROXY_HOPS must be at most {MAX_TRUSTED_PROXY_HOPS}, "
                            f"got {hops}")
    return {
        "trusted_proxy_hops": hops,
        "metrics_token_digest": key_digest(token) if token else "",
        "max_batch_amount_cents": _int(env, "PAYOUTS_MAX_BATCH_AMOUNT_CENTS",
                                       DEFAULT_MAX_BATCH_AMOUNT_CENTS, minimum=1),
        "max_daily_amount_cents": _int(env, "PAYOUTS_MAX_DAILY_AMOUNT_CENTS",
                                       DEFAULT_MAX_DAILY_AMOUNT_CENTS, minimum=1),
        "webhook_ports": _ports("PAYOUTS_WEBHOOK_PORTS", env.get("PAYOUTS_WEBHOOK_PORTS")),
        "webhook_concurrency": _int(env, "PAYOUTS_WEBHOOK_CONCURRENCY", 100, minimum=1),
        "webhook_inflight_per_client": _int(env, "PAYOUTS_WEBHOOK_INFLIGHT_PER_CLIENT", 20, minimum=1),
        # Below the archiver's (9807) and the settlement workers' (9808 + i - 1): one machine
        # runs all of them (`make run`) without one taking another's port.
        "webhook_metrics_port": _int(env, "PAYOUTS_WEBHOOK_METRICS_PORT", 9806),
    }


@dataclass(frozen=True)
class Settings:
    redis_url: str
    broker_url: str
    result_backend: str
    store_url: str
    ratelimit_storage_uri: str
    max_items: int
    max_amount_cents: int
    max_body_bytes: int
    ratelimit_enabled: bool
    ratelimit_write: str
    ratelimit_read: str
    ratelimit_unauthenticated: str
    settle_max_attempts: int
    retry_backoff_base_s: float
    retry_backoff_max_s: float
    inflight_wait_max_s: int
    visibility_timeout_s: int
    worker_concurrency: int
    worker_processes: int
    provider: str  # PAYOUTS_PROVIDER: simulated | efi
    simulator: SimulatorSettings
    efi: EfiSettings | None  # only with PAYOUTS_PROVIDER=efi
    settle_time_limit_s: int
    sweep_interval_s: int
    stall_after_s: int
    fault_crash_after_pay: str
    api_keys: tuple[tuple[str, str], ...]
    auth_disabled: bool
    environment: str
    log_level: str
    log_format: str
    worker_metrics_port: int
    worker_metrics_addr: str
    readyz_timeout_s: float
    api_url: str
    webhooks_allow_http: bool
    webhooks_allow_private: bool
    webhook_timeout_s: float
    webhook_backoff_base_s: float
    webhook_backoff_max_s: float
    webhook_retry_window_s: int
    webhook_rotation_grace_s: int
    ledger: LedgerSettings

    @property
    def provider_settlement_timeout_s(self) -> float:
        """The longest one call to the configured provider may take (settle plans retries on it)."""
        if self.provider == "efi" and self.efi is not None:
            return self.efi.timeout_s
        return self.simulator.settlement_timeout_s
    # -- isolation (issue 20): neighbours, proxies, value caps, webhook queue -------------------
    trusted_proxy_hops: int = 0
    metrics_token_digest: str = ""
    max_batch_amount_cents: int = DEFAULT_MAX_BATCH_AMOUNT_CENTS
    max_daily_amount_cents: int = DEFAULT_MAX_DAILY_AMOUNT_CENTS
    webhook_ports: tuple[int, ...] | None = ()
    webhook_concurrency: int = 100
    webhook_inflight_per_client: int = 20
    webhook_metrics_port: int = 9806

    @property
    def broker_is_rabbitmq(self) -> bool:
        """CELERY_BROKER_URL's scheme chooses the broker: Redis by default, RabbitMQ in production."""
        return self.broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))

    @property
    def timing(self) -> Timing:
        """settle's timing rules (payouts_core/timing_rules.py) from these settings."""
        return Timing(self.provider_settlement_timeout_s, self.settle_time_limit_s,
                      self.visibility_timeout_s, self.retry_backoff_base_s, self.retry_backoff_max_s,
                      self.stall_after_s, self.inflight_wait_max_s)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        environment = (env.get("PAYOUTS_ENV") or "production").lower()
        if environment not in ENVIRONMENTS:
            raise SettingsError(f"PAYOUTS_ENV must be production, development or test, got {environment!r}")
        strict = environment not in RELAXED_ENVIRONMENTS  # secret files must not be world-readable
        redis_url = read_secret(env, "REDIS_URL", strict=strict) or "redis://localhost:6379/0"
        provider = (env.get("PAYOUTS_PROVIDER") or "simulated").lower()
        if provider not in PROVIDERS:
            raise SettingsError(f"PAYOUTS_PROVIDER must be simulated or efi, got {provider!r}")
        simulator = SimulatorSettings.from_env(env)
        efi = EfiSettings.from_env(env, strict) if provider == "efi" else None
        call_deadline, deadline_name = ((efi.timeout_s, "EFI_TIMEOUT_S") if efi is not None else
                                        (simulator.settlement_timeout_s, "PIX_SIM_SETTLEMENT_TIMEOUT_S"))
        # 0.25-0.5 s, then 0.5-1 s, 1-2 s: the seed profile's retried items ended its batches
        # (100 % done at 2.0x the 95 % time with a 0.5 s base; docs/BENCHMARKS.md).
        backoff_base = _float(env, "PAYOUTS_RETRY_BACKOFF_BASE_S", 0.25, 0.0, 60.0)
        # Chosen together so a SIGKILLed worker's messages come back within about a minute on a
        # Redis broker (docs/RELIABILITY.md, "Bounded redelivery"): visibility 70 s > time limit
        # 55 s + the longest retry countdown (10 s + 20 % jitter), time limit > the SPI deadline.
        backoff_max = _float(env, "PAYOUTS_RETRY_BACKOFF_MAX_S", 10.0, 0.0, 600.0)
        visibility = _int(env, "PAYOUTS_VISIBILITY_TIMEOUT_S", 70, minimum=10)
        time_limit = _int(env, "PAYOUTS_SETTLE_TIME_LIMIT_S", 55, minimum=1)
        # The sweeper's re-drive is the backstop for a message a broker lost: on Redis a SIGKILL
        # between BRPOP and the worker's unacked write loses it (measured: 1 of 1,000 items).
        stall = _int(env, "PAYOUTS_STALL_AFTER_S", 120, minimum=1)
        inflight_wait = _int(env, "PAYOUTS_INFLIGHT_WAIT_MAX_S", 900, minimum=1)
        timing = Timing(call_deadline, time_limit, visibility, backoff_base, backoff_max,
                        stall, inflight_wait, deadline_setting=deadline_name)
        if problems := timing.problems():
            raise SettingsError(problems[0])
        log_format = (env.get("PAYOUTS_LOG_FORMAT") or "json").lower()
        if log_format not in ("json", "text"):
            raise SettingsError(f"PAYOUTS_LOG_FORMAT must be json or text, got {log_format!r}")
        log_level = (env.get("LOG_LEVEL") or "info").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SettingsError(f"LOG_LEVEL must be debug, info, warning, error or critical: {log_level!r}")
        # One gevent worker process runs on one core (issue 12): by default one per usable core.
        worker_processes = _int(env, "WORKER_PROCESSES", min(usable_cores(), MAX_WORKER_PROCESSES),
                                minimum=1)
        if worker_processes > MAX_WORKER_PROCESSES:
            raise SettingsError(f"WORKER_PROCESSES must be at most {MAX_WORKER_PROCESSES}, got "
                                f"{worker_processes} (each process holds WORKER_CONCURRENCY greenlets "
                                "and their connections: run more machines or containers instead)")
        settings = cls(
            redis_url=redis_url,
            broker_url=read_secret(env, "CELERY_BROKER_URL", strict=strict) or redis_url,
            result_backend=read_secret(env, "CELERY_RESULT_BACKEND", strict=strict) or redis_url,
            store_url=read_secret(env, "PAYOUTS_STORE_URL", strict=strict) or redis_url,
            ratelimit_storage_uri=read_secret(env, "RATELIMIT_STORAGE_URI", strict=strict) or redis_url,
            max_items=_int(env, "PAYOUTS_MAX_ITEMS", 10_000, minimum=1),
            max_amount_cents=_int(env, "PAYOUTS_MAX_AMOUNT_CENTS", 1_499_999, minimum=1),
            # 10,000 items x 372 B (largest valid item, json indent=2) = 3.72 MB, + 12 % headroom:
            max_body_bytes=_int(env, "PAYOUTS_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024),
            ratelimit_enabled=_bool(env, "PAYOUTS_RATELIMIT_ENABLED", True),
            ratelimit_write=env.get("PAYOUTS_RATELIMIT_WRITE") or "20 per 10 seconds;100 per minute",
            ratelimit_read=env.get("PAYOUTS_RATELIMIT_READ") or "200 per 10 seconds;1000 per minute",
            ratelimit_unauthenticated=env.get("PAYOUTS_RATELIMIT_UNAUTHENTICATED") or "30 per minute",
            settle_max_attempts=_int(env, "PAYOUTS_SETTLE_MAX_ATTEMPTS", 6, minimum=1),
            retry_backoff_base_s=backoff_base,
            retry_backoff_max_s=backoff_max,
            inflight_wait_max_s=inflight_wait,
            visibility_timeout_s=visibility,
            # Provider calls in flight per process: enough for what one core carries (~250
            # items/s x ~1.6 s of provider time and in-task backoff) with headroom. More only
            # lengthens the event loop's run queue once the CPU is busy, and every task waits
            # behind it, a neighbour's publish and aggregate too (docs/BENCHMARKS.md, "Worker
            # concurrency").
            worker_concurrency=_int(env, "WORKER_CONCURRENCY", 500, minimum=1),
            worker_processes=worker_processes,
            provider=provider,
            simulator=simulator,
            efi=efi,
            settle_time_limit_s=time_limit,
            sweep_interval_s=_int(env, "PAYOUTS_SWEEP_INTERVAL_S", 30, minimum=1),
            stall_after_s=stall,
            fault_crash_after_pay=env.get("PAYOUTS_FAULT_CRASH_AFTER_PAY") or "",
            api_keys=_api_keys(env, strict),
            auth_disabled=_bool(env, "PAYOUTS_AUTH_DISABLED", False),
            environment=environment,
            log_level=log_level,
            log_format=log_format,
            worker_metrics_port=_int(env, "PAYOUTS_WORKER_METRICS_PORT", 9808),
            worker_metrics_addr=env.get("PAYOUTS_WORKER_METRICS_ADDR") or "127.0.0.1",
            readyz_timeout_s=_float(env, "PAYOUTS_READYZ_TIMEOUT_S", 1.0, 0.05, 30.0),
            api_url=(env.get("PAYOUTS_API_URL") or "http://127.0.0.1:8000").rstrip("/"),
            webhooks_allow_http=_bool(env, "PAYOUTS_WEBHOOKS_ALLOW_HTTP", False),
            webhooks_allow_private=_bool(env, "PAYOUTS_WEBHOOKS_ALLOW_PRIVATE", False),
            webhook_timeout_s=_float(env, "PAYOUTS_WEBHOOK_TIMEOUT_S", 10.0, 0.1, 60.0),
            webhook_backoff_base_s=_float(env, "PAYOUTS_WEBHOOK_BACKOFF_BASE_S", 10.0, 0.0, 3600.0),
            webhook_backoff_max_s=_float(env, "PAYOUTS_WEBHOOK_BACKOFF_MAX_S", 3600.0, 0.0, 86400.0),
            webhook_retry_window_s=_int(env, "PAYOUTS_WEBHOOK_RETRY_WINDOW_S", 86400, minimum=1),
            webhook_rotation_grace_s=_int(env, "PAYOUTS_WEBHOOK_ROTATION_GRACE_S", 86400),
            ledger=LedgerSettings.from_env(env),
            **_isolation(env, visibility),
        )
        refuse_unsafe(settings)
        return settings


@dataclass(frozen=True)
class LedgerSettings:
    """The durable ledger (SPEC §10): where it is, how long Redis keeps what it holds."""

    database_url: str
    retention_s: int
    outbox_max: int
    archiver_metrics_port: int
    fault_crash_after_commit: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LedgerSettings:
        strict = (env.get("PAYOUTS_ENV") or "production").lower() not in RELAXED_ENVIRONMENTS
        return cls(
            # No password by default: a deployment names its own (the schema check at start
            # refuses to run against a database that is missing or not migrated).
            database_url=read_secret(env, "DATABASE_URL", strict=strict)
            or "postgresql://postgres@127.0.0.1:5432/payouts",
            # How long a completed batch stays in Redis (and only once the ledger holds all of it).
            retention_s=_int(env, "PAYOUTS_RETENTION_S", 7 * 86400, minimum=0),
            # Events not yet archived, past which new batches are refused (503): the ledger being
            # down delays the archive and never settlement, and the backlog stays bounded.
            outbox_max=_int(env, "PAYOUTS_OUTBOX_MAX", 1_000_000, minimum=1000),
            # Below the workers': worker process i of payouts-worker serves on 9808 + i - 1.
            archiver_metrics_port=_int(env, "PAYOUTS_ARCHIVER_METRICS_PORT", 9807),
            # Fault suite only: the archiver dies once between its commit and the XDEL.
            fault_crash_after_commit=_bool(env, "PAYOUTS_FAULT_ARCHIVER_CRASH_AFTER_COMMIT", False),
        )


def refuse_unsafe(settings: Settings) -> None:
    """Refuse at start what would let a client, or anyone who read the docs, move money, stop
    workers or reach the operator's network through a webhook (SPEC §9); development and test
    may run with it, except amounts JSON cannot keep exact."""
    if settings.max_amount_cents > JSON_EXACT_MAX_CENTS:
        raise SettingsError(f"PAYOUTS_MAX_AMOUNT_CENTS must be at most {JSON_EXACT_MAX_CENTS} (2**53 - 1): "
                            "the report's JSON (Lua cjson) would round larger amounts")
    if settings.environment in RELAXED_ENVIRONMENTS:
        return
    why = f"refused with PAYOUTS_ENV={settings.environment} (development and test only)"
    if settings.auth_disabled:
        raise SettingsError(f"PAYOUTS_AUTH_DISABLED=true is {why}: anyone could submit payouts")
    if settings.fault_crash_after_pay:
        raise SettingsError(f"PAYOUTS_FAULT_CRASH_AFTER_PAY is {why}: any client could kill workers "
                            "by choosing external_ids")
    if settings.ledger.fault_crash_after_commit:
        raise SettingsError(f"PAYOUTS_FAULT_ARCHIVER_CRASH_AFTER_COMMIT is {why}: it kills the "
                            "archiver on purpose")
    example = {key_digest(key) for key in EXAMPLE_API_KEYS}
    for name, digest in settings.api_keys:
        if digest in example:
            raise SettingsError(f"PAYOUTS_API_KEYS: the key named {name!r} is the published example key "
                                f"from .env.example, {why}: generate one (python -c 'import secrets; "
                                "print(secrets.token_urlsafe(32))')")
    if settings.webhooks_allow_http:
        raise SettingsError(f"PAYOUTS_WEBHOOKS_ALLOW_HTTP=true is {why}: events and their signatures "
                            "would cross the network in clear text")
    if settings.webhooks_allow_private:
        raise SettingsError(f"PAYOUTS_WEBHOOKS_ALLOW_PRIVATE=true is {why}: any client could make the "
                            "workers call the operator's own network (SSRF)")
    if settings.max_amount_cents > REGULATORY_MAX_AMOUNT_CENTS:
        raise SettingsError(f"PAYOUTS_MAX_AMOUNT_CENTS={settings.max_amount_cents} is above "
                            f"{REGULATORY_MAX_AMOUNT_CENTS} (R$ 14.999,99, the per-transfer cap of "
                            f"Res. BCB 496/2025), {why}: a higher cap is for institutions the Banco "
                            "Central authorised, and a typo here (reais for cents) would pay 100 times over")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return Settings.from_env()

"""A simulated PIX provider whose "bank side" ledger lives in Redis under `pixsim:`.

It behaves like the real thing where it matters for money: one transfer per idempotency key
(created atomically, replayed forever), SPI reason codes, latency, random failures that are
reproducible with a seed, and documented test keys that force an outcome (like card-network test
numbers) so retries, rejections and lost answers can be exercised end to end.
"""

from __future__ import annotations

import json
import random
import re
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import redis

from payouts_core.pix_keys import mask_pix_key
from payouts_core.provider import (
    PermanentProviderError,
    PixProvider,
    Transfer,
    TransientProviderError,
)

if TYPE_CHECKING:
    from payouts_core.settings import Settings

DEFAULT_PREFIX = "pixsim:"
ATTEMPTS_TTL_S = 24 * 60 * 60
_INDEX_CHUNK = 500

#: SPI reason codes the simulator can answer with, and the reason text it attaches.
PERMANENT_REASONS: dict[str, str] = {
    "AC03": "invalid creditor account number",
    "AC06": "creditor account is blocked",
    "AM02": "amount above the allowed limit",
    "BE01": "creditor identification inconsistent with the account holder",
    "DS04": "order rejected by the receiving PSP",
    "DICT_KEY_NOT_FOUND": "pix key not found in DICT",
}
TRANSIENT_REASONS: dict[str, str] = {
    "AB03": "settlement timed out at the SPI",
    "AB09": "error at the receiving PSP",
    "DICT_UNAVAILABLE": "DICT unavailable (HTTP 503)",
}
# The codes random failures draw from (AM02 and DICT_KEY_NOT_FOUND only come from test keys).
RANDOM_PERMANENT_CODES = ("AC03", "AC06", "BE01", "DS04")
RANDOM_TRANSIENT_CODES = ("AB03", "AB09", "DICT_UNAVAILABLE")

#: Pix keys (emails, matched case-insensitively) that force an outcome whatever the rates are.
TEST_KEYS: dict[str, str] = {
    "fail.ac03@pix.test": "always rejected: AC03 invalid creditor account",
    "fail.ac06@pix.test": "always rejected: AC06 creditor account blocked",
    "fail.am02@pix.test": "always rejected: AM02 amount above the allowed limit",
    "fail.be01@pix.test": "always rejected: BE01 holder mismatch",
    "fail.ds04@pix.test": "always rejected: DS04 rejected by the receiving PSP",
    "fail.dict@pix.test": "always rejected: DICT_KEY_NOT_FOUND pix key not in DICT",
    "timeout.twice@pix.test": "transient AB03 on the first two attempts, then settles",
    "flaky.ab09@pix.test": "transient AB09 on the first attempt, then settles",
    "dict.503@pix.test": "transient DICT_UNAVAILABLE on the first attempt, then settles",
    "timeout.always@pix.test": "transient AB03 on every attempt (never settles)",
    "settle.then.timeout@pix.test": (
        "first attempt settles but answers AB03 (money moved, caller cannot know); "
        "later calls return that transfer"
    ),
    "slow.stuck@pix.test": (
        "every attempt outlives the settlement deadline (PIX_SIM_SETTLEMENT_TIMEOUT_S): AB03, "
        "nothing recorded"
    ),
    "settle.late@pix.test": (
        "every call answers AB03 (the answer is lost); the transfer, pending from the first call, "
        "settles half the settlement deadline later: only a lookup finds it (unknown is not failed)"
    ),
    "hang@pix.test": (
        "the call hangs for 10 minutes, ignoring the deadline (a client stuck on a dead socket); "
        "only the task's time limit ends it"
    ),
}

# Test keys whose call takes this long (seconds); "stuck" outlives any deadline.
_STUCK = float("inf")
_HANG_S = 600.0
_TEST_KEY_LATENCY_S = {"slow.stuck@pix.test": _STUCK, "hang@pix.test": _HANG_S}

E2E_ID_RE = re.compile(
    r"E(?P<ispb>[0-9]{8})"
    r"(?P<timestamp>[0-9]{4}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])(?:[01][0-9]|2[0-3])[0-5][0-9])"
    r"(?P<suffix>[A-Za-z0-9]{11})"
)
E2E_ID_LEN = 32
_E2E_ALPHABET = string.ascii_letters + string.digits

_SETTLE = "settle"
_PERMANENT = "permanent"
_TRANSIENT = "transient"
_SETTLE_THEN_TIMEOUT = "settle_then_timeout"
_SETTLE_LATE = "settle_late"


@dataclass(frozen=True)
class _Outcome:
    kind: str
    code: str | None = None


def _forced(kind: str, code: str | None = None, *, until: int | None = None):
    """An outcome for a test key: `kind` on attempts up to `until` (all when None), then settle."""

    def decide(attempt: int) -> _Outcome:
        if until is None or attempt <= until:
            return _Outcome(kind, code)
        return _Outcome(_SETTLE)

    return decide


_TEST_KEY_BEHAVIOUR: dict[str, Callable[[int], _Outcome]] = {
    "fail.ac03@pix.test": _forced(_PERMANENT, "AC03"),
    "fail.ac06@pix.test": _forced(_PERMANENT, "AC06"),
    "fail.am02@pix.test": _forced(_PERMANENT, "AM02"),
    "fail.be01@pix.test": _forced(_PERMANENT, "BE01"),
    "fail.ds04@pix.test": _forced(_PERMANENT, "DS04"),
    "fail.dict@pix.test": _forced(_PERMANENT, "DICT_KEY_NOT_FOUND"),
    "timeout.twice@pix.test": _forced(_TRANSIENT, "AB03", until=2),
    "flaky.ab09@pix.test": _forced(_TRANSIENT, "AB09", until=1),
    "dict.503@pix.test": _forced(_TRANSIENT, "DICT_UNAVAILABLE", until=1),
    "timeout.always@pix.test": _forced(_TRANSIENT, "AB03"),
    "settle.then.timeout@pix.test": _forced(_SETTLE_THEN_TIMEOUT, "AB03", until=1),
    "slow.stuck@pix.test": _forced(_SETTLE),
    "settle.late@pix.test": _forced(_SETTLE_LATE, "AB03"),
    "hang@pix.test": _forced(_SETTLE),
}
if set(_TEST_KEY_BEHAVIOUR) != set(TEST_KEYS):  # pragma: no cover - guards the docs table
    raise RuntimeError("every documented test key needs a behaviour, and vice versa")

# Create the ledger entry only if the key has none: the first writer wins, everyone else gets
# the original back. KEYS: transfer key, index list. ARGV: record JSON, idempotency key.
_CREATE_LUA = """
local existing = redis.call('GET', KEYS[1])
if existing then
  return existing
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
return ARGV[1]
"""

_TRANSFER_FIELDS = frozenset(f.name for f in fields(Transfer))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _text(value: bytes | str) -> str:
    """Redis answers bytes or str depending on the client's decode_responses: accept both."""
    return value.decode() if isinstance(value, bytes) else value


def _iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_e2e_id(ispb: str, now: datetime, rng: random.Random) -> str:
    """An EndToEndId: `E` + 8-digit ISPB + `yyyyMMddHHmm` (UTC) + 11 alphanumerics = 32 chars."""
    if len(ispb) != 8 or not ispb.isdigit():
        raise ValueError(f"ISPB must be 8 digits, got {ispb!r}")
    if now.tzinfo is None:  # a naive time is taken as UTC, the SPI's clock
        now = now.replace(tzinfo=UTC)
    stamp = now.astimezone(UTC).strftime("%Y%m%d%H%M")
    return f"E{ispb}{stamp}{''.join(rng.choices(_E2E_ALPHABET, k=11))}"


def normalise_test_key(pix_key: str) -> str:
    return pix_key.strip().lower()


def _transfer_from_json(raw: bytes | str) -> Transfer:
    data = json.loads(_text(raw))
    return Transfer(**{k: v for k, v in data.items() if k in _TRANSFER_FIELDS})


class SimulatedPixProvider(PixProvider):
    """The PixProvider used in development, tests and benchmarks; state is shared via Redis.

    Because the ledger is in Redis, every worker process sees the same "bank": a retry or a
    redelivery on another worker with the same idempotency key gets the original answer.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        ispb: str,
        latency_ms: tuple[int, int] = (0, 0),
        permanent_failure_rate: float = 0.0,
        transient_failure_rate: float = 0.0,
        seed: str | int | None = None,
        settlement_timeout_s: float = 40.0,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], datetime] = _utcnow,
        prefix: str = DEFAULT_PREFIX,
    ):
        if len(ispb) != 8 or not ispb.isdigit():
            raise ValueError(f"ispb must be 8 digits, got {ispb!r}")
        lo, hi = latency_ms
        if lo < 0 or hi < lo:
            raise ValueError(f"latency_ms must be a non-negative (low, high), got {latency_ms!r}")
        for name, rate in (("permanent_failure_rate", permanent_failure_rate),
                           ("transient_failure_rate", transient_failure_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate!r}")
        self._client = client
        self.ispb = ispb
        self.latency_ms = (lo, hi)
        self.permanent_failure_rate = permanent_failure_rate
        self.transient_failure_rate = transient_failure_rate
        self.seed = None if seed is None else str(seed)
        self.settlement_timeout_s = settlement_timeout_s
        self._sleep = sleep
        self._clock = clock
        self.prefix = prefix
        self._index_key = f"{prefix}transfers"
        self._create = client.register_script(_CREATE_LUA)
        # Latency need not be reproducible, only outcomes; SystemRandom is safe across threads.
        self._system_rng = random.SystemRandom()

    # -- keys ---------------------------------------------------------------------------------

    def _transfer_key(self, idempotency_key: str) -> str:
        return f"{self.prefix}transfer:{idempotency_key}"

    def _attempts_key(self, idempotency_key: str) -> str:
        return f"{self.prefix}attempts:{idempotency_key}"

    # -- PixProvider ----------------------------------------------------------------------------

    def pay(self, *, idempotency_key: str, external_id: str, amount_cents: int,
            pix_key: str) -> Transfer:
        if not idempotency_key:
            raise ValueError("idempotency_key is required")
        self._simulate_latency(pix_key)

        existing = self.lookup(idempotency_key)
        if existing is not None and (existing.status == "pending"
                                     or normalise_test_key(pix_key) == "settle.late@pix.test"):
            raise TransientProviderError("AB03", TRANSIENT_REASONS["AB03"])
        if existing is not None:
            return self._replay(existing)

        attempt = self._next_attempt(idempotency_key)
        rng = self._rng(idempotency_key, attempt)
        outcome = self._decide(pix_key, rng, attempt)
        if outcome.kind == _TRANSIENT:
            raise TransientProviderError(outcome.code, TRANSIENT_REASONS[outcome.code])

        now = self._clock()
        if outcome.kind == _PERMANENT:
            record = Transfer(
                idempotency_key=idempotency_key, external_id=external_id, status="rejected",
                amount_cents=amount_cents, pix_key_masked=mask_pix_key(pix_key),
                created_at=_iso_z(now), failure_code=outcome.code,
                failure_reason=PERMANENT_REASONS[outcome.code],
            )
        else:
            late = outcome.kind == _SETTLE_LATE
            record = Transfer(
                idempotency_key=idempotency_key, external_id=external_id,
                status="pending" if late else "settled",
                amount_cents=amount_cents, pix_key_masked=mask_pix_key(pix_key),
                created_at=_iso_z(now), e2e_id=make_e2e_id(self.ispb, now, rng),
                settles_at=_iso_z(now + timedelta(seconds=self.settlement_timeout_s / 2))
                if late else None,
            )
        stored = _transfer_from_json(self._create(
            keys=[self._transfer_key(idempotency_key), self._index_key],
            args=[json.dumps(record.as_dict(), sort_keys=True), idempotency_key],
        ))
        if outcome.kind in (_SETTLE_THEN_TIMEOUT, _SETTLE_LATE):
            # The transfer is on the ledger, but the answer is "lost": only a lookup or a replay
            # with the same idempotency key can tell the caller that the money moved.
            raise TransientProviderError(outcome.code, TRANSIENT_REASONS[outcome.code])
        return self._replay(stored)

    @property
    def final_deadline_s(self) -> float:
        """The SPI rejects a settlement not confirmed within its deadline (AB03)."""
        return self.settlement_timeout_s

    def lookup(self, idempotency_key: str) -> Transfer | None:
        raw = self._client.get(self._transfer_key(idempotency_key))
        return None if raw is None else self._as_of_now(_transfer_from_json(raw))

    def _as_of_now(self, transfer: Transfer) -> Transfer:
        """A pending transfer whose settlement time has come is settled."""
        if transfer.status == "pending" and transfer.settles_at \
                and transfer.settles_at <= _iso_z(self._clock()):
            return replace(transfer, status="settled")
        return transfer

    def transfers(self) -> Iterator[Transfer]:
        start = 0
        while True:
            keys = self._client.lrange(self._index_key, start, start + _INDEX_CHUNK - 1)
            if not keys:
                return
            raws = self._client.mget([self._transfer_key(_text(k)) for k in keys])
            for raw in raws:
                if raw is not None:
                    yield self._as_of_now(_transfer_from_json(raw))
            start += len(keys)

    # -- helpers ---------------------------------------------------------------------------------

    def attempts(self, idempotency_key: str) -> int:
        """How many pay attempts reached the decision step for this key (within the TTL)."""
        raw = self._client.get(self._attempts_key(idempotency_key))
        return 0 if raw is None else int(_text(raw))

    @staticmethod
    def _replay(transfer: Transfer) -> Transfer:
        """The original answer for a recorded key: the transfer, or the original rejection."""
        if transfer.status == "rejected":
            raise PermanentProviderError(transfer.failure_code or "DS04",
                                         transfer.failure_reason or "rejected")
        return transfer

    def _simulate_latency(self, pix_key: str) -> None:
        """Sleep the call's latency; past the SPI settlement deadline the answer is AB03."""
        forced = _TEST_KEY_LATENCY_S.get(normalise_test_key(pix_key))
        if forced == _HANG_S:
            self._sleep(forced)
            return
        lo, hi = self.latency_ms
        latency_s = forced if forced is not None else self._system_rng.uniform(lo, hi) / 1000.0
        if latency_s > self.settlement_timeout_s:
            self._sleep(self.settlement_timeout_s)
            raise TransientProviderError("AB03", "settlement not confirmed within the SPI deadline")
        if latency_s > 0:
            self._sleep(latency_s)

    def _next_attempt(self, idempotency_key: str) -> int:
        key = self._attempts_key(idempotency_key)
        pipe = self._client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, ATTEMPTS_TTL_S)
        attempt, _ = pipe.execute()
        return int(attempt)

    def _rng(self, idempotency_key: str, attempt: int) -> random.Random:
        """Seeded: one generator per (seed, key, attempt), so outcomes ignore scheduling order."""
        if self.seed is None:
            return random.Random()
        return random.Random(f"{self.seed}:{idempotency_key}:{attempt}")

    def _decide(self, pix_key: str, rng: random.Random, attempt: int) -> _Outcome:
        forced = _TEST_KEY_BEHAVIOUR.get(normalise_test_key(pix_key))
        if forced is not None:
            return forced(attempt)
        # Transient first: a request that never reaches the receiver cannot be rejected by it.
        if rng.random() < self.transient_failure_rate:
            return _Outcome(_TRANSIENT, rng.choice(RANDOM_TRANSIENT_CODES))
        if rng.random() < self.permanent_failure_rate:
            return _Outcome(_PERMANENT, rng.choice(RANDOM_PERMANENT_CODES))
        return _Outcome(_SETTLE)


def build_provider(settings: Settings, client: redis.Redis, *,
                   sleep: Callable[[float], object] = time.sleep) -> SimulatedPixProvider:
    """The provider configured by `Settings` (PIX_SIM_* variables), on the given Redis client."""
    return SimulatedPixProvider(
        client,
        ispb=settings.provider_ispb,
        latency_ms=settings.provider_latency_ms,
        permanent_failure_rate=settings.provider_permanent_failure_rate,
        transient_failure_rate=settings.provider_transient_failure_rate,
        seed=settings.provider_seed,
        settlement_timeout_s=settings.provider_settlement_timeout_s,
        sleep=sleep,
    )

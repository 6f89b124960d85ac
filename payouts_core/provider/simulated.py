"""A simulated PIX provider whose "bank side" ledger lives in Redis under `pixsim:`.

It behaves like the real thing where it matters for money: one transfer per idempotency key
(created atomically, replayed forever), SPI reason codes, latency, random failures that are
reproducible with a seed, and documented test keys that force an outcome (like card-network test
numbers) so retries, rejections and lost answers can be exercised end to end.
"""

from __future__ import annotations

import json
import os
import random
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

import redis

from payouts_core.pix_keys import mask_pix_key
from payouts_core.provider import (
    PermanentProviderError,
    PixProvider,
    Transfer,
    TransientProviderError,
    is_ispb,
)
from payouts_core.text import as_str, utcnow

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


class _Step(NamedTuple):
    """One attempt's decision, ready for the pay script: what to store and what to answer."""

    outcome: _Outcome
    head: str = ""  # the stored record's JSON up to its common tail ("" for a transient)
    e2e_id: str | None = None


_SETTLED = _Outcome(_SETTLE)  # the common answer, built once


def _forced(kind: str, code: str | None = None, *, until: int | None = None):
    """An outcome for a test key: `kind` on attempts up to `until` (all when None), then settle."""

    def decide(attempt: int) -> _Outcome:
        if until is None or attempt <= until:
            return _Outcome(kind, code)
        return _SETTLED

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

# How many attempts `pay` decides in Python before its one Redis call (see _PAY_LUA). Only the
# attempts up to the first one that records a transfer are planned (later ones cannot happen:
# the transfer answers them), so a typical plan is one attempt; K only bounds keys that keep
# failing transiently. An attempt past the plan is decided after the call by the same rule
# (same outcome for the same seed, key and attempt), at the cost of a second call if it stores.
PLANNED_ATTEMPTS = 8

# One round trip per pay. The existing transfer if the key has one (first writer wins); else the
# next attempt number (INCR + EXPIRE) and that attempt's planned outcome: a transient answers its
# code and records nothing, anything else stores the record and indexes the key, atomically.
# KEYS: transfer key, attempts key, index list. ARGV: idempotency key, attempts TTL, the plan's
# length ('*': its one entry answers every attempt), the record's common JSON tail, then per
# planned attempt a kind ('T' transient, 'S' store) and a payload (the code, or the record's head).
# Answers {tag, attempt, payload}: 'E' existing record, 'T' transient code, 'S' stored, 'B' attempt
# beyond the plan (counted, nothing stored: the caller decides it).
_PAY_LUA = """
local existing = redis.call('GET', KEYS[1])
if existing then
  return {'E', 0, existing}
end
local attempt = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
local entry = attempt
if ARGV[3] == '*' then
  entry = 1
elseif attempt > tonumber(ARGV[3]) then
  return {'B', attempt, ''}
end
local kind = ARGV[3 + 2 * entry]
local payload = ARGV[4 + 2 * entry]
if kind == 'T' then
  return {'T', attempt, payload}
end
redis.call('SET', KEYS[1], payload .. ARGV[4])
redis.call('RPUSH', KEYS[3], ARGV[1])
return {'S', attempt, ''}
"""

# Create the ledger entry only if the key has none (an attempt decided after the pay call): the
# first writer wins, everyone else gets the original back. KEYS: transfer key, index list.
# ARGV: record JSON, idempotency key.
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

# A rejected record's JSON head per code: constant, so a rejection costs no encoding per pay.
_REJECTED_HEADS = {
    code: json.dumps({"failure_code": code, "failure_reason": reason, "status": "rejected"})[:-1]
    + ", "
    for code, reason in PERMANENT_REASONS.items()
}

# Unseeded outcomes need no reproducibility, only independence: one generator per process
# (re-seeded in a forked child, so prefork workers do not share draws) spares an urandom seeding
# per attempt.
_UNSEEDED = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_UNSEEDED.seed)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _e2e_prefix(ispb: str, now: datetime) -> str:
    """An EndToEndId (`E` + 8-digit ISPB + `yyyyMMddHHmm` UTC + 11 alphanumerics = 32 chars) up
    to its random part; computed once per pay, whatever the plan's size."""
    if now.tzinfo is None:  # a naive time is taken as UTC, the SPI's clock
        now = now.replace(tzinfo=UTC)
    return f"E{ispb}{now.astimezone(UTC).strftime('%Y%m%d%H%M')}"


def _e2e_suffix(rng: random.Random) -> str:
    return "".join(rng.choices(_E2E_ALPHABET, k=11))


def normalise_test_key(pix_key: str) -> str:
    return pix_key.strip().lower()


def _transfer_from_json(raw: bytes | str) -> Transfer:
    data = json.loads(as_str(raw))
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
        if not is_ispb(ispb):
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
        self._pay_script = client.register_script(_PAY_LUA)
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
        """One Redis call (_PAY_LUA): replay, attempt count, decision and record in one round trip.

        The outcomes of the attempts this call may be are decided first, in Python, with the
        seeded generator per (seed, key, attempt); the script picks the one its attempt number
        names, so the result is exactly what deciding after counting the attempt would give.
        """
        if not idempotency_key:
            raise ValueError("idempotency_key is required")
        self._simulate_latency(pix_key)

        # The decision belongs to the end of the call (after the latency), as a real one answers.
        test_key = normalise_test_key(pix_key)
        forced = _TEST_KEY_BEHAVIOUR.get(test_key)
        now = self._clock()
        e2e_prefix = _e2e_prefix(self.ispb, now)
        steps, every_attempt = self._plan(idempotency_key, forced, now, e2e_prefix)
        masked = mask_pix_key(pix_key)
        created_at = utcnow(now)
        tail = json.dumps({"amount_cents": amount_cents, "created_at": created_at,
                           "external_id": external_id, "idempotency_key": idempotency_key,
                           "pix_key_masked": masked})[1:]
        args: list = [idempotency_key, ATTEMPTS_TTL_S, "*" if every_attempt else len(steps), tail]
        for step in steps:
            if step.outcome.kind == _TRANSIENT:
                args += ("T", step.outcome.code)
            else:
                args += ("S", step.head)
        transfer_key = self._transfer_key(idempotency_key)
        tag, attempt, payload = self._pay_script(
            keys=[transfer_key, self._attempts_key(idempotency_key), self._index_key], args=args)
        tag = as_str(tag)

        if tag == "E":
            return self._answer_existing(_transfer_from_json(payload), test_key)
        if tag == "B":  # an attempt past the plan: decide it now, store it if no one else has
            step = self._step(idempotency_key, forced, int(attempt), now, e2e_prefix)
        else:
            step = steps[0 if every_attempt else int(attempt) - 1]
        outcome = step.outcome
        if outcome.kind == _TRANSIENT:
            raise TransientProviderError(outcome.code, TRANSIENT_REASONS[outcome.code])
        if tag == "B":
            record_json = step.head + tail
            stored = self._create(keys=[transfer_key, self._index_key],
                                  args=[record_json, idempotency_key])
            if as_str(stored) != record_json:  # another call recorded this key first
                return self._answer_existing(_transfer_from_json(stored), test_key)
        if outcome.kind == _PERMANENT:
            raise PermanentProviderError(outcome.code, PERMANENT_REASONS[outcome.code])
        if outcome.kind in (_SETTLE_THEN_TIMEOUT, _SETTLE_LATE):
            # The transfer is on the ledger, but the answer is "lost": only a lookup or a replay
            # with the same idempotency key can tell the caller that the money moved.
            raise TransientProviderError(outcome.code, TRANSIENT_REASONS[outcome.code])
        return Transfer(idempotency_key=idempotency_key, external_id=external_id,
                        status="settled", amount_cents=amount_cents, pix_key_masked=masked,
                        created_at=created_at, e2e_id=step.e2e_id)

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
                and transfer.settles_at <= utcnow(self._clock()):
            return replace(transfer, status="settled")
        return transfer

    def transfers(self) -> Iterator[Transfer]:
        start = 0
        while True:
            keys = self._client.lrange(self._index_key, start, start + _INDEX_CHUNK - 1)
            if not keys:
                return
            raws = self._client.mget([self._transfer_key(as_str(k)) for k in keys])
            for raw in raws:
                if raw is not None:
                    yield self._as_of_now(_transfer_from_json(raw))
            start += len(keys)

    # -- helpers ---------------------------------------------------------------------------------

    def attempts(self, idempotency_key: str) -> int:
        """How many pay attempts reached the decision step for this key (within the TTL)."""
        raw = self._client.get(self._attempts_key(idempotency_key))
        return 0 if raw is None else int(as_str(raw))

    def _answer_existing(self, transfer: Transfer, test_key: str) -> Transfer:
        """A recorded key's answer: AB03 while pending (or for settle.late), else the replay."""
        transfer = self._as_of_now(transfer)
        if transfer.status == "pending" or test_key == "settle.late@pix.test":
            raise TransientProviderError("AB03", TRANSIENT_REASONS["AB03"])
        return self._replay(transfer)

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

    def _plan(self, idempotency_key: str, forced: Callable[[int], _Outcome] | None,
              now: datetime, e2e_prefix: str) -> tuple[list[_Step], bool]:
        """The decisions for the attempts this call may be, and whether one answers them all.

        Planning stops at the first attempt that records a transfer (that transfer answers every
        later call) or at PLANNED_ATTEMPTS; an unseeded random draw ignores the attempt number.
        """
        if forced is None and self.seed is None:
            return [self._step(idempotency_key, None, 1, now, e2e_prefix)], True
        steps = []
        for attempt in range(1, PLANNED_ATTEMPTS + 1):
            step = self._step(idempotency_key, forced, attempt, now, e2e_prefix)
            steps.append(step)
            if step.outcome.kind != _TRANSIENT:
                break
        return steps, False

    def _step(self, idempotency_key: str, forced: Callable[[int], _Outcome] | None,
              attempt: int, now: datetime, e2e_prefix: str) -> _Step:
        """One attempt's outcome and, if it records a transfer, the record's JSON head."""
        rng = None
        if forced is not None:
            outcome = forced(attempt)
        else:
            rng = self._rng(idempotency_key, attempt)
            outcome = self._draw(rng)
        if outcome.kind == _TRANSIENT:
            return _Step(outcome)
        if outcome.kind == _PERMANENT:
            return _Step(outcome, _REJECTED_HEADS[outcome.code])
        # A test key draws nothing, so its e2e id comes from a fresh generator for the attempt.
        e2e_id = e2e_prefix + _e2e_suffix(rng or self._rng(idempotency_key, attempt))
        if outcome.kind == _SETTLE_LATE:
            settles_at = utcnow(now + timedelta(seconds=self.settlement_timeout_s / 2))
            return _Step(outcome, f'{{"e2e_id": "{e2e_id}", "settles_at": "{settles_at}", '
                                  f'"status": "pending", ', e2e_id)
        return _Step(outcome, f'{{"e2e_id": "{e2e_id}", "status": "settled", ', e2e_id)

    def _rng(self, idempotency_key: str, attempt: int) -> random.Random:
        """Seeded: one generator per (seed, key, attempt), so outcomes ignore scheduling order."""
        if self.seed is None:
            return _UNSEEDED
        return random.Random(f"{self.seed}:{idempotency_key}:{attempt}")

    def _draw(self, rng: random.Random) -> _Outcome:
        """A random outcome at the configured rates (test keys are decided before this)."""
        # Transient first: a request that never reaches the receiver cannot be rejected by it.
        if rng.random() < self.transient_failure_rate:
            return _Outcome(_TRANSIENT, rng.choice(RANDOM_TRANSIENT_CODES))
        if rng.random() < self.permanent_failure_rate:
            return _Outcome(_PERMANENT, rng.choice(RANDOM_PERMANENT_CODES))
        return _SETTLED


def build_provider(settings: Settings, client: redis.Redis, *,
                   sleep: Callable[[float], object] = time.sleep) -> SimulatedPixProvider:
    """The provider configured by `Settings` (PIX_SIM_* variables), on the given Redis client."""
    sim = settings.simulator
    return SimulatedPixProvider(
        client,
        ispb=sim.ispb,
        latency_ms=sim.latency_ms,
        permanent_failure_rate=sim.permanent_failure_rate,
        transient_failure_rate=sim.transient_failure_rate,
        seed=sim.seed,
        settlement_timeout_s=sim.settlement_timeout_s,
        sleep=sleep,
    )

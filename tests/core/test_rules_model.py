"""The reference model (payouts_core/model.py) and the Lua scripts on a real Redis agree.

A hypothesis state machine drives both through random interleavings of every transition: two
clients, batches sharing external ids (with the same terms and with other terms), an external_id
twice in one batch, publishing leases expiring and taken over, redelivered settle tasks, provider
calls answered late or lost (a crash between the call and the record), lookups that find nothing
before and after the provider's final deadline, a late success, a wait given up, completion and
retirement to archived claims. After every step the items, orders, claims, counters and event
counts must be equal, and no external_id may be paid twice.

The provider here is a small honest fake: one transfer per idempotency key, and a key whose
final deadline passed settles nothing any more (SPEC §7: past 40 s SPI rejects), except through
the explicit `provider_settles_past_its_deadline` rule, after which the money invariant expects
reconciliation's case rather than a single transfer.

Examples: PAYOUTS_MODEL_EXAMPLES (default 500, a nightly run sets more).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from urllib.parse import quote, unquote

import redis
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from payouts_core.model import ArchivedClaim, Settlement
from payouts_core.rules import GAVE_UP_WAITING, Action, Verdict, idempotency_key, lookup_verdict
from payouts_core.store import BatchRef, Order, PayoutStore, batch_keys, claim_key, fingerprint

EXAMPLES = int(os.environ.get("PAYOUTS_MODEL_EXAMPLES", "500"))
DEADLINE_S = 40.0
EXTERNAL_IDS = ("x", "y", "z:1")  # a `:` too: ids are encoded in keys
AMOUNTS = (100, 250)  # two amounts: the same external_id with other terms


class SettlementMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.r = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
        self.raw = redis.Redis.from_url(os.environ["REDIS_URL"])  # archived claims hold bytes
        self.store = PayoutStore(self.r)
        self.model = Settlement()
        run = uuid.uuid4().hex[:8]  # every example has its own clients: claims never meet
        self.clients = (f"acme-{run}", f"globex-{run}")
        self.batches: list[tuple[str, str]] = []
        self.leases: dict[tuple[str, str], str] = {}
        self.external_ids: dict[tuple[str, str], list[str]] = {}
        self.calls: list[tuple[str, str, int, int]] = []  # provider calls not yet answered
        self.lookups: list[tuple[str, str, int, int]] = []  # items told to look up
        self.waiting: list[tuple[str, str, int]] = []  # items told to wait
        self.archived_duplicates: list[tuple[str, str, int]] = []
        self.transfers: dict[str, dict] = {}  # the provider's ledger: key -> transfer
        self.closed: set[str] = set()  # keys past their final deadline
        self.late: set[tuple[str, str]] = set()  # external ids settled past a deadline

    def teardown(self):
        self.r.close()
        self.raw.close()

    # -- helpers -----------------------------------------------------------------------------

    def _pick(self, seq, n):
        return seq[n % len(seq)]

    def _ref(self, batch) -> BatchRef:
        return BatchRef(*batch)

    def _external_id(self, batch, index) -> str:
        return self.external_ids[batch][index]

    # -- accepting and publishing ------------------------------------------------------------

    @rule(client=st.integers(0, 1),
          items=st.lists(st.tuples(st.sampled_from(EXTERNAL_IDS), st.sampled_from(AMOUNTS)),
                         min_size=1, max_size=4),
          publish=st.sampled_from([True, True, True, False]))
    def submit(self, client, items, publish):
        """A new batch, usually opened by its publisher at once (else left to the lease rules)."""
        client = self.clients[client]
        batch = (client, f"b{len(self.batches)}")
        orders = [Order(i, e, "u1", amount, f"{e}@pix.example", "x***@pix.example")
                  for i, (e, amount) in enumerate(items)]
        expected_conflicts = self.model.conflicting_claims(client, [
            {"index": o.index, "external_id": o.external_id, "terms": o.terms} for o in orders])
        assert self.store.conflicting_claims(client, orders) == expected_conflicts
        lease = uuid.uuid4().hex
        created, state = self.store.create_batch(self._ref(batch), fingerprint({"b": batch[1]}),
                                                 orders, lease_token=lease)
        assert (created, state) == (True, "accepting")
        assert self.model.create_batch(*batch, [
            {"external_id": o.external_id, "user_id": o.user_id, "amount_cents": o.amount_cents,
             "pix_key": o.pix_key, "pix_key_masked": o.pix_key_masked, "terms": o.terms}
            for o in orders], lease=lease)
        self.batches.append(batch)
        self.external_ids[batch] = [e for e, _ in items]
        self.leases[batch] = lease
        if publish:
            assert self.store.open_batch(self._ref(batch), lease)
            assert self.model.open_batch(*batch, lease)

    @precondition(lambda self: self.batches)
    @rule(n=st.integers(0, 99), own_lease=st.booleans())
    def open(self, n, own_lease):
        batch = self._pick(self.batches, n)
        publisher = self.leases[batch] if own_lease else "another-publisher"
        assert self.store.open_batch(self._ref(batch), publisher) == self.model.open_batch(
            *batch, publisher)

    @precondition(lambda self: self.batches)
    @rule(n=st.integers(0, 99))
    def mark_published(self, n):
        """The publisher that opened the batch has sent every message (as payouts.publish does)."""
        batch = self._pick(self.batches, n)
        model_batch = self.model.batches.get(batch)
        if model_batch is None or model_batch.publisher is None:
            return
        self.store.mark_published(self._ref(batch))
        self.model.mark_published(*batch)

    @precondition(lambda self: self.batches)
    @rule(n=st.integers(0, 99))
    def lease_expires(self, n):
        batch = self._pick(self.batches, n)
        self.r.delete(batch_keys(self._ref(batch))[3])
        if batch in self.model.batches:
            self.model.batches[batch].lease = None

    @precondition(lambda self: self.batches)
    @rule(n=st.integers(0, 99))
    def take_over_publishing(self, n):
        batch = self._pick(self.batches, n)
        token = self.store.take_over_publishing(self._ref(batch))
        assert self.model.take_over_publishing(*batch, token or "refused") == (token is not None)
        if token:
            self.leases[batch] = token

    @precondition(lambda self: self.batches)
    @rule(n=st.integers(0, 99))
    def discard(self, n):
        batch = self._pick(self.batches, n)
        lease = self.leases[batch]
        assert self.store.discard_batch(self._ref(batch), lease) == self.model.discard_batch(*batch, lease)

    # -- settling ----------------------------------------------------------------------------

    @precondition(lambda self: self.batches)
    @rule(n=st.integers(0, 99), i=st.integers(0, 99), max_attempts=st.integers(1, 3))
    def begin_settlement(self, n, i, max_attempts):
        """A settle task starts, or is redelivered: both decide alike."""
        batch = self._pick(self.batches, n)
        size = len(self.model.batches[batch].items) if batch in self.model.batches else 1
        index = i % (size + 1) if i == 99 else i % size  # now and then an index past the end
        self._begin(batch, index, max_attempts)

    def _begin(self, batch, index, max_attempts):
        decision = self.store.begin_settlement(self._ref(batch), index, max_attempts)
        expected = self.model.begin_settlement(*batch, index, max_attempts, now_ms=decision.called_ms)
        assert (decision.action, decision.claim_generation, decision.attempts,
                decision.waiting_on, decision.called_ms) == (
            expected.action, expected.claim_generation, expected.attempts,
            expected.waiting_on, expected.called_ms)
        event(f"begin_settlement -> {decision.action}")
        if decision.action == Action.SETTLE:
            assert decision.order["external_id"] == self._external_id(batch, index)
            self.calls.append((*batch, index, decision.claim_generation))
        elif decision.action == Action.LOOKUP:
            self.lookups.append((*batch, index, decision.claim_generation))
        elif decision.action == Action.WAIT:
            self.waiting.append((*batch, index))
        elif decision.action == Action.ARCHIVED_DUPLICATE:
            self.archived_duplicates.append((*batch, index))
        return decision

    @precondition(lambda self: self.batches)
    @rule(n=st.integers(0, 99), i=st.integers(0, 3), past_deadline=st.booleans())
    def redelivery_gives_up_while_the_first_still_pays(self, n, i, past_deadline):
        """A settle call is under way; a redelivery finds the attempts used up and looks up: no
        transfer yet is unknown (held), none past the deadline fails the item. The first call
        is still outstanding."""
        batch = self._pick(self.batches, n)
        if batch not in self.model.batches:
            return
        index = i % len(self.model.batches[batch].items)
        first = self._begin(batch, index, 3)
        if first.action == Action.SETTLE:
            again = self._begin(batch, index, first.attempts)
            assert again.action == Action.LOOKUP
            self.lookups.remove((*batch, index, again.claim_generation))
            self._lookup((*batch, index, again.claim_generation), past_deadline)

    @precondition(lambda self: self.batches)
    @rule(n=st.integers(0, 99), answer=st.sampled_from(["settled", "settled", "rejected"]))
    def settle_the_rest(self, n, answer):
        """Every unfinished item of a batch settles at once (paid), as a healthy worker does;
        items waiting on another give up. Then the batch completes: retire has work."""
        batch = self._pick(self.batches, n)
        if batch not in self.model.batches:
            return
        for index in range(len(self.model.batches[batch].items)):
            decision = self._begin(batch, index, 3)
            if decision.action == Action.SETTLE:
                self.calls.remove((*batch, index, decision.claim_generation))
                self._record(*batch, index, decision.claim_generation,
                             self._pay(self._key(*batch, index, decision.claim_generation), answer))
            elif decision.action == Action.WAIT:
                self.waiting.remove((*batch, index))
                self._give_up(*batch, index)
        self.complete(n)

    def _key(self, client, batch_id, index, gen) -> str:
        return idempotency_key(client, self._external_id((client, batch_id), index), gen)

    def _pay(self, key: str, answer: str) -> dict | None:
        """The provider's side of one call: one transfer per key, nothing settles once closed."""
        if key not in self.transfers and answer != "transient":
            status = "rejected" if key in self.closed or answer == "rejected" else "settled"
            self.transfers[key] = {"status": status, "e2e_id": f"E{len(self.transfers):031d}",
                                   "failure_code": "AC03" if answer == "rejected" else "AB03"}
        return self.transfers.get(key)

    @precondition(lambda self: self.calls)
    @rule(n=st.integers(0, 99), answer=st.sampled_from(["settled", "rejected", "transient", "lost"]))
    def provider_answers(self, n, answer):
        """An outstanding provider call returns: recorded, retried later, or lost with its
        worker (the transfer exists, nothing is recorded: the crash between call and record)."""
        call = self.calls.pop(n % len(self.calls))
        client, batch_id, index, gen = call
        transfer = self._pay(self._key(*call), "settled" if answer == "lost" else answer)
        if answer in ("transient", "lost"):
            return
        self._record(client, batch_id, index, gen, transfer)

    def _record(self, client, batch_id, index, gen, transfer):
        ref = BatchRef(client, batch_id)
        if transfer["status"] == "settled":
            outcome = self.store.record_paid(ref, index, transfer["e2e_id"], gen)
            expected = self.model.record_paid(client, batch_id, index, transfer["e2e_id"], gen)
        else:
            code = transfer["failure_code"]
            outcome = self.store.record_failed(ref, index, code, "rejected")
            expected = self.model.record_failed(client, batch_id, index, code, "rejected")
        event(f"record {transfer['status']} -> {outcome}")
        assert outcome == expected

    @precondition(lambda self: self.lookups)
    @rule(n=st.integers(0, 99), past_deadline=st.booleans())
    def lookup(self, n, past_deadline):
        """Attempts used up: ask the provider what it holds; unknown keeps the claim held."""
        self._lookup(self.lookups.pop(n % len(self.lookups)), past_deadline)

    def _lookup(self, call, past_deadline):
        key = self._key(*call)
        if past_deadline:  # a pending call can no longer settle: SPI rejects past its deadline
            self.closed.add(key)
        transfer = self.transfers.get(key)
        verdict = lookup_verdict(None if transfer is None else _Transfer(transfer["status"]),
                                 DEADLINE_S + 1 if past_deadline else 1.0, DEADLINE_S)
        event(f"lookup -> {verdict}{' past the deadline' if past_deadline else ''}")
        if verdict == Verdict.UNKNOWN:
            return
        self._record(*call, transfer or {"status": "rejected", "failure_code": "AB03"})

    @precondition(lambda self: self.calls)
    @rule(n=st.integers(0, 99))
    def provider_settles_past_its_deadline(self, n):
        """A misbehaving provider settles a call after its deadline: a late success."""
        client, batch_id, index, gen = call = self.calls.pop(n % len(self.calls))
        key = self._key(*call)
        transfer = self.transfers.setdefault(key, {"status": "settled", "e2e_id": f"L{len(self.transfers)}"})
        if transfer["status"] == "settled":
            self.late.add((client, self._external_id((client, batch_id), index)))
            was = self.model.batches.get((client, batch_id))
            was = was and was.items[index]["status"]
            self._record(*call, transfer)
            event(f"late success of a {was} item")

    @precondition(lambda self: self.waiting)
    @rule(n=st.integers(0, 99))
    def give_up_waiting(self, n):
        self._give_up(*self.waiting.pop(n % len(self.waiting)))

    def _give_up(self, client, batch_id, index):
        outcome = self.store.record_failed(BatchRef(client, batch_id), index, GAVE_UP_WAITING, "waited")
        assert outcome == self.model.record_failed(client, batch_id, index, GAVE_UP_WAITING, "waited")

    @precondition(lambda self: self.archived_duplicates)
    @rule(n=st.integers(0, 99))
    def record_archived_duplicate(self, n):
        client, batch_id, index = self.archived_duplicates.pop(n % len(self.archived_duplicates))
        where = {"batch_id": "from-the-ledger", "index": 0, "e2e_id": "E-ledger"}
        outcome = self.store.record_archived_duplicate(BatchRef(client, batch_id), index, where)
        assert outcome == self.model.record_archived_duplicate(client, batch_id, index, where)

    # -- completing and retiring --------------------------------------------------------------

    @precondition(lambda self: self.batches)
    @rule(n=st.integers(0, 99))
    def complete(self, n):
        batch = self._pick(self.batches, n)
        assert self.store.complete_batch(self._ref(batch))[0] == self.model.complete_batch(*batch)

    @precondition(lambda self: self.batches)
    @rule(n=st.integers(0, 99))
    def retire(self, n):
        """The ledger holds the batch: it leaves Redis, its final claims shrink to archived ones."""
        batch = self._pick(self.batches, n)
        model_batch = self.model.batches.get(batch)
        events = model_batch.events if model_batch else 0
        retired = self.store.retire(self._ref(batch), events)
        event(f"retire -> {retired}")
        assert retired == self.model.retire(*batch, events)

    # -- what must always hold ----------------------------------------------------------------

    @invariant()
    def model_and_redis_agree(self):
        with self.r.pipeline(transaction=False) as pipe:
            for batch in self.batches:
                for key in batch_keys(self._ref(batch))[:3]:
                    pipe.hgetall(key)
            for client in self.clients:
                for external_id in EXTERNAL_IDS:
                    pipe.hgetall(claim_key(client, external_id))
            replies = iter(pipe.execute())
        for batch in self.batches:
            head, items, orders = next(replies), next(replies), next(replies)
            expected = self.model.batches.get(batch)
            if expected is None:
                assert (head, items, orders) == ({}, {}, {}), batch
                continue
            assert {k: head.get(k) for k in ("state", "processed", "successful", "failed",
                                             "duplicates", "events", "published", "publisher")} == {
                "state": expected.state.value, "events": str(expected.events),
                "published": "1" if expected.published else None, "publisher": expected.publisher,
                **{k: str(v) for k, v in expected.counters.items()}}, batch
            assert [json.loads(items[str(i)]) for i in range(len(items))] == expected.items, batch
            stored_orders = [json.loads(orders[str(i)]) for i in range(len(orders))]
            assert [{k: v for k, v in o.items() if k != "claim"} for o in stored_orders] == expected.orders
        for client in self.clients:
            for external_id in EXTERNAL_IDS:
                stored = next(replies)
                claim = self.model.claims.get((client, external_id))
                if claim is None:
                    assert stored == {}, (client, external_id)
                    continue
                assert {k: stored.get(k) for k in ("state", "batch_id", "index", "gen", "terms",
                                                   "e2e_id")} == {
                    "state": claim.state, "batch_id": claim.batch_id, "index": claim.index,
                    "gen": None if claim.gen is None else str(claim.gen), "terms": claim.terms,
                    "e2e_id": claim.e2e_id}, (client, external_id)
                assert stored.get("called_ms") == (None if claim.called_ms is None else str(claim.called_ms))

    @invariant()
    def counters_equal_the_counts_of_statuses(self):
        """Read from Redis alone, counted here: processed = paid + failed + duplicate."""
        for batch in self.batches:
            head = self.r.hgetall(batch_keys(self._ref(batch))[0])
            if not head:
                continue
            statuses = [json.loads(v)["status"] for v in self.r.hvals(batch_keys(self._ref(batch))[1])]
            paid, failed, duplicates = (statuses.count(s) for s in ("paid", "failed", "duplicate"))
            assert (int(head["successful"]), int(head["failed"]), int(head["duplicates"]),
                    int(head["processed"])) == (paid, failed, duplicates, paid + failed + duplicates)

    @invariant()
    def archived_claims_agree(self):
        for client in self.clients:
            for external_id in EXTERNAL_IDS:
                archived = self.model.archived.get((client, external_id))
                assert _archived(self.raw, client, external_id) == archived

    @invariant()
    def no_external_id_is_paid_twice(self):
        paid: dict[tuple[str, str], int] = {}
        for (client, _), batch in self.model.batches.items():
            for item in batch.items:
                if item["status"] == "paid":
                    key = (client, item["external_id"])
                    paid[key] = paid.get(key, 0) + 1
        assert all(count == 1 for count in paid.values()), paid
        settled: dict[tuple[str, str], int] = {}
        for key, transfer in self.transfers.items():
            if transfer["status"] == "settled":
                _, client, external_id, _ = key.split(":")
                ident = (unquote(client), unquote(external_id))
                settled[ident] = settled.get(ident, 0) + 1
        assert all(count == 1 or ident in self.late for ident, count in settled.items()), settled


class _Transfer:
    def __init__(self, status):
        self.status = status


def _archived(r: redis.Redis, client: str, external_id: str) -> ArchivedClaim | None:
    """An archived claim as its bucket holds it (layout: payouts_core/lua/lib.lua):
    bucket by the first 3 hex digits of SHA-1(claim key), field the next 24, value
    state letter, generation, 8 raw bytes of the terms digest."""
    h = hashlib.sha1(claim_key(client, external_id).encode()).hexdigest()
    raw = r.hget(f"payouts:claims:{quote(client, safe='')}:{h[:3]}", bytes.fromhex(h[3:27]))
    if raw is None:
        return None
    return ArchivedClaim({b"p": "paid", b"f": "failed"}[raw[:1]], int(raw[1:-8]), raw[-8:].hex())


SettlementMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_model_and_lua_agree = SettlementMachine.TestCase

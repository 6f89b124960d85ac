"""Webhooks: the clients' endpoints, events and their deliveries in Redis; signing; the SSRF guard.

Signing follows Standard Webhooks (standardwebhooks.com, the layout Svix and others ship):
`webhook-id` (the delivery id, the same on every retry: receivers deduplicate on it),
`webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`, several space-separated while a rotated secret is in its grace
period. Chosen over a home-made header because receivers verify it with a published library in
any language (`standardwebhooks` on PyPI), and the id in the signed text stops replays under
another id.

A batch event's final delivery outcome also joins the batch's trail in the ledger: the script
that ends the attempt appends it to the outbox through lib.lua's `record_event`, the one writer
of outbox events, so the store's event format and sequence stay its own.

Keys ({c} = encoded client; everything expires after RETENTION_S):
- `payouts:webhook:endpoints:{c}`          hash: endpoint id -> JSON (url, events, secrets)
- `payouts:webhook:emitted:{c}:{fact}`     the event id emitted for a fact (one per batch)
- `payouts:webhook:event:{c}:{event id}`   hash: type, body (the exact bytes every attempt
                                            signs), its delivery ids
- `payouts:webhook:delivery:{c}:{id}`      hash: endpoint, event, status, attempts, last status
                                            code and error, next attempt (ms)
- `payouts:webhook:log:{c}:{endpoint id}`  sorted set: delivery ids by creation (ms)
- `payouts:webhook:lease:{c}:{id}`         one attempt of a delivery at a time
- `payouts:webhook:previous:{c}:{endpoint id}` the secret a rotation replaced, expiring with its
                                            grace period (Redis drops it: nothing keeps it later)
- `payouts:webhook:inflight:{c}`           sorted set: a token per attempt running -> when it
                                            started (a per-client cap; a crashed worker's entry
                                            ages out with the attempt's lease)
- `payouts:webhooks:due`                   sorted set: `{c}:{id}` -> when the sweeper sends it
                                            (the next attempt, plus a grace when a task message
                                            is already scheduled for it)
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import redis
from standardwebhooks import Webhook

from payouts_core.rules import encode_id
from payouts_core.scripts import script_text
from payouts_core.store import BatchRef, TransitionScript, batch_keys, newest_first
from payouts_core.text import as_str as _s
from payouts_core.text import utcnow

PREFIX = "payouts:webhook:"
DUE = "payouts:webhooks:due"
EVENT_TYPES = ("batch.completed",)
MAX_ENDPOINTS = 10  # per client: each is one more outbound request per event
RETENTION_S = 30 * 24 * 3600
MAX_URL_LENGTH = 2048


class DestinationRefused(ValueError):
    """The URL may not be called: scheme, syntax, or an address the SSRF guard refuses."""


class TooManyEndpoints(Exception):
    pass


def _ms(seconds: float | None = None) -> int:
    return int((time.time() if seconds is None else seconds) * 1000)


def _iso_ms(ms: int | str | None) -> str | None:
    return utcnow(datetime.fromtimestamp(int(ms) / 1000, UTC)) if ms not in (None, "") else None


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secrets_: list[str], delivery_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header: one `v1,<sig>` per secret, space-separated."""
    at = datetime.fromtimestamp(timestamp, UTC)
    return " ".join(Webhook(secret).sign(delivery_id, at, body) for secret in secrets_)


# -- the SSRF guard ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent on the request line
    host_header: str


def allowed_ports(configured: tuple[int, ...] | None, allow_http: bool) -> frozenset[int] | None:
    """The ports a webhook may use: PAYOUTS_WEBHOOK_PORTS when set (None: any), else 443, and 80
    when plain HTTP is allowed. Any port would let a client probe the operator's other services
    (a mail or database port on a public address answers differently from a closed one)."""
    if configured is None:
        return None
    return frozenset(configured or ((443, 80) if allow_http else (443,)))


def parse_url(url: str, allow_http: bool, ports: Collection[int] | None = None) -> Destination:
    """An endpoint URL's parts, or DestinationRefused: https only (http when allowed), a host,
    no user info (it would travel in clear to whoever answers), no fragment, and a port among
    `ports` (None: any)."""
    if len(url) > MAX_URL_LENGTH:
        raise DestinationRefused(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DestinationRefused("Not a valid URL.") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise DestinationRefused("Use an https:// URL." if not allow_http else "Use an http(s):// URL.")
    if not parts.hostname or any(c.isspace() for c in url) or not url.isascii():
        raise DestinationRefused("The URL needs a host, and no spaces or non-ASCII characters.")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("The URL may not carry a user name or password.")
    if parts.fragment:
        raise DestinationRefused("The URL may not carry a #fragment.")
    default = 443 if parts.scheme == "https" else 80
    if ports is not None and (port or default) not in ports:
        raise DestinationRefused(f"Use port {' or '.join(map(str, sorted(ports)))}.")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Destination(parts.scheme, parts.hostname, port or default, target, parts.netloc)


# IPv6 prefixes that carry an IPv4 address to a relay or translator, which Python's is_global
# calls public: 6to4 2002::/16 (2002:a9fe:a9fe:: is 169.254.169.254), Teredo 2001::/32 and NAT64's
# well-known prefixes. Refused whole: a public host has a native address.
TUNNELLED = tuple(ipaddress.ip_network(n) for n in ("2002::/16", "2001::/32", "64:ff9b::/96",
                                                    "64:ff9b:1::/48"))


def refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why the guard refuses this address (private, loopback, ...), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv6Address) and any(address in n for n in TUNNELLED):
        return "tunnelled (6to4, Teredo or NAT64)"
    for flag in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{flag}"):
            return flag.replace("_", "-")
    return None if address.is_global else "not-global"


def check_literal_host(destination: Destination, allow_private: bool) -> None:
    """At registration: refuse a host that is a refused address or `localhost`, without DNS."""
    if allow_private:
        return
    if destination.host.lower().rstrip(".") == "localhost" or destination.host.lower().endswith(".localhost"):
        raise DestinationRefused("The URL points at this machine (localhost).")
    try:
        address = ipaddress.ip_address(destination.host)
    except ValueError:
        return
    if why := refused_address(address):
        raise DestinationRefused(f"The URL points at a {why} address.")


def resolve(destination: Destination, allow_private: bool,
            resolver: Callable = socket.getaddrinfo) -> list[str]:
    """The addresses to connect to, decided before any connection: every address the host
    resolves to must be public unless private ones are allowed (one refused address refuses
    the host, so a name cannot mix a public and an internal answer). Raises DestinationRefused;
    a failed lookup raises OSError (retried: DNS may be down)."""
    infos = resolver(destination.host, destination.port, type=socket.SOCK_STREAM)
    addresses = []
    for info in infos:
        text = info[4][0].split("%")[0]
        address = ipaddress.ip_address(text)
        if not allow_private and (why := refused_address(address)):
            raise DestinationRefused(f"{destination.host} resolves to a {why} address")
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise OSError(f"{destination.host} has no address")
    return addresses


# -- storage -------------------------------------------------------------------------------------

def _public(endpoint: dict, now_ms: int) -> dict:
    """An endpoint as the API shows it: never a secret."""
    shown = {k: endpoint[k] for k in ("id", "url", "events", "description", "created_at")}
    expires = endpoint.get("previous_secret_expires_ms")
    shown["previous_secret_expires_at"] = _iso_ms(expires) if expires and expires > now_ms else None
    return shown


def _delivery_view(fields: dict) -> dict:
    status = fields["status"]
    return {
        "id": fields["id"], "endpoint_id": fields["endpoint_id"], "event_id": fields["event_id"],
        "event_type": fields["event_type"], "status": status, "attempts": int(fields["attempts"]),
        "last_status_code": int(fields["last_status_code"]) if fields["last_status_code"] else None,
        "last_error": fields["last_error"] or None,
        "created_at": _iso_ms(fields["created_ms"]),
        "next_attempt_at": _iso_ms(fields["next_attempt_ms"]) if status == "pending" else None,
        "completed_at": _iso_ms(fields["completed_ms"]),
    }


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt needs (holds the secrets: never log it)."""

    client: str
    delivery_id: str
    url: str
    secrets: list[str]
    body: str
    attempts: int  # made before this one
    window_start_ms: int


@dataclass(frozen=True)
class LedgerEvent:
    """A batch event's final delivery outcome, as it joins the batch's trail (SPEC §10)."""

    batch_id: str
    event_type: str  # webhook.delivered or webhook.failed
    detail: dict


class WebhookStore:
    """The webhook keys: endpoints per client, events once per fact, deliveries and their log."""

    _end_webhook_attempt = TransitionScript()

    def __init__(self, client: redis.Redis):
        self.client = client
        self._emit = client.register_script(script_text("emit_event.lua"))

    def _endpoints_key(self, client: str) -> str:
        return f"{PREFIX}endpoints:{encode_id(client)}"

    def _delivery_key(self, client: str, delivery_id: str) -> str:
        return f"{PREFIX}delivery:{encode_id(client)}:{delivery_id}"

    def _log_key(self, client: str, endpoint_id: str) -> str:
        return f"{PREFIX}log:{encode_id(client)}:{endpoint_id}"

    def _event_key(self, client: str, event_id: str) -> str:
        return f"{PREFIX}event:{encode_id(client)}:{event_id}"

    def _previous_key(self, client: str, endpoint_id: str) -> str:
        return f"{PREFIX}previous:{encode_id(client)}:{endpoint_id}"

    def _lease_key(self, client: str, delivery_id: str) -> str:
        return f"{PREFIX}lease:{encode_id(client)}:{delivery_id}"

    # -- endpoints -----------------------------------------------------------------------

    def _endpoint(self, client: str, endpoint_id: str) -> dict | None:
        raw = self.client.hget(self._endpoints_key(client), endpoint_id)
        return json.loads(raw) if raw else None

    def add_endpoint(self, client: str, url: str, events: list[str], description: str) -> dict:
        """Register an endpoint; returns it with its secret (shown this once)."""
        endpoint = {"id": f"we_{uuid.uuid4().hex}", "url": url, "events": events,
                    "description": description, "created_at": utcnow(), "secret": new_secret()}
        key = self._endpoints_key(client)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.hlen(key) >= MAX_ENDPOINTS:
                        raise TooManyEndpoints
                    pipe.multi()
                    pipe.hset(key, endpoint["id"], json.dumps(endpoint))
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        return {**_public(endpoint, _ms()), "secret": endpoint["secret"]}

    def endpoints(self, client: str) -> list[dict]:
        now = _ms()
        found = [json.loads(v) for v in self.client.hvals(self._endpoints_key(client))]
        return [_public(e, now) for e in sorted(found, key=lambda e: (e["created_at"], e["id"]))]

    def endpoint(self, client: str, endpoint_id: str) -> dict | None:
        found = self._endpoint(client, endpoint_id)
        return _public(found, _ms()) if found else None

    def delete_endpoint(self, client: str, endpoint_id: str) -> bool:
        """Remove it and its delivery log; its pending deliveries fail when next attempted."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self._endpoints_key(client), endpoint_id)
            pipe.delete(self._log_key(client, endpoint_id), self._previous_key(client, endpoint_id))
            removed, _ = pipe.execute()
        return bool(removed)

    def rotate_secret(self, client: str, endpoint_id: str, grace_s: int) -> dict | None:
        """A new secret; the current one keeps signing beside it for `grace_s` seconds."""
        key = self._endpoints_key(client)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.hget(key, endpoint_id)
                    if raw is None:
                        pipe.unwatch()
                        return None
                    endpoint = json.loads(raw)
                    previous = endpoint["secret"]
                    endpoint.pop("previous_secret", None)  # an older build kept it in the endpoint
                    endpoint["previous_secret_expires_ms"] = _ms() + grace_s * 1000
                    endpoint["secret"] = new_secret()
                    pipe.multi()
                    pipe.hset(key, endpoint_id, json.dumps(endpoint))
                    if grace_s > 0:
                        pipe.set(self._previous_key(client, endpoint_id), previous, ex=grace_s)
                    else:
                        pipe.delete(self._previous_key(client, endpoint_id))
                    pipe.execute()
                    return {**_public(endpoint, _ms()), "secret": endpoint["secret"]}
                except redis.WatchError:
                    continue

    # -- events and deliveries -------------------------------------------------------------

    def emit(self, client: str, event_type: str, fact: str, data: dict,
             due_grace_ms: int) -> tuple[bool, list[str]]:
        """Emit `event_type` once per `fact` (e.g. one batch.completed per batch): returns
        (created, delivery ids); a repeat writes nothing and returns the first emission's ids."""
        event_id = f"evt_{uuid.uuid4().hex}"
        now = _ms()
        body = json.dumps({"id": event_id, "type": event_type, "created_at": _iso_ms(now), "data": data},
                          separators=(",", ":"), ensure_ascii=False)
        c = encode_id(client)
        fresh = [f"msg_{uuid.uuid4().hex}" for _ in range(MAX_ENDPOINTS)]
        reply = self._emit(
            keys=[f"{PREFIX}emitted:{c}:{encode_id(fact)}", self._endpoints_key(client),
                  self._event_key(client, event_id), DUE],
            args=[event_id, event_type, body, now, now + due_grace_ms, RETENTION_S,
                  f"{PREFIX}delivery:{c}:", f"{PREFIX}log:{c}:", f"{c}:", *fresh])
        return bool(int(reply[0])), [_s(x) for x in reply[2:]]

    def delivery(self, client: str, delivery_id: str) -> dict | None:
        fields = self.client.hgetall(self._delivery_key(client, delivery_id))
        return _delivery_view({_s(k): _s(v) for k, v in fields.items()}) if fields else None

    def event_body(self, client: str, delivery_id: str) -> str | None:
        event_id = self.client.hget(self._delivery_key(client, delivery_id), "event_id")
        return _s(self.client.hget(self._event_key(client, _s(event_id)), "body")) if event_id else None

    def deliveries(self, client: str, endpoint_id: str, limit: int,
                   after: tuple[int, str] | None) -> tuple[list[dict], tuple[int, str] | None]:
        """The endpoint's delivery log, newest first (same cursor walk as the batch history)."""
        def views(ids: list[str]) -> list[dict | None]:
            with self.client.pipeline(transaction=False) as pipe:
                for delivery_id in ids:
                    pipe.hgetall(self._delivery_key(client, delivery_id))
                rows = pipe.execute()
            return [_delivery_view({_s(k): _s(v) for k, v in row.items()}) if row else None
                    for row in rows]

        return newest_first(self.client, self._log_key(client, endpoint_id), limit, after, views)

    def redeliver(self, client: str, endpoint_id: str, delivery_id: str, due_grace_ms: int) -> bool:
        """Make a delivery pending again, due now, with a fresh retry window (a manual resend
        keeps its id: a receiver that processed it already recognises it)."""
        key = self._delivery_key(client, delivery_id)
        if _s(self.client.hget(key, "endpoint_id")) != endpoint_id or not self._endpoint(client, endpoint_id):
            return False
        now = _ms()
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"status": "pending", "next_attempt_ms": now, "window_start_ms": now,
                                    "completed_ms": ""})
            pipe.expire(key, RETENTION_S)
            pipe.zadd(DUE, {f"{encode_id(client)}:{delivery_id}": now + due_grace_ms})
            pipe.execute()
        return True

    def _inflight_key(self, client: str) -> str:
        return f"{PREFIX}inflight:{encode_id(client)}"

    def take_slot(self, client: str, cap: int, lease_s: float) -> str | None:
        """One of the client's `cap` attempt slots (its token for release_slot), or None when all
        are taken (a sorted-set semaphore: add, then keep the slot only if it ranks among the
        first `cap`; two racing takers may both give up, never both exceed the cap)."""
        key, now, token = self._inflight_key(client), _ms(), uuid.uuid4().hex
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now - int(lease_s * 1000))
            pipe.zadd(key, {token: now})
            pipe.expire(key, int(lease_s) + 60)
            pipe.zrank(key, token)
            rank = pipe.execute()[-1]
        if rank is not None and rank < cap:
            return token
        self.client.zrem(key, token)
        return None

    def release_slot(self, client: str, token: str) -> None:
        self.client.zrem(self._inflight_key(client), token)

    def begin_attempt(self, client: str, delivery_id: str, lease_s: float) -> Attempt | str:
        """The attempt to make now, or why none is: `done` (not pending), `not-due` (a later
        attempt is scheduled), `busy` (another worker is sending it), `endpoint-deleted`."""
        lease = self._lease_key(client, delivery_id)
        if not self.client.set(lease, "1", nx=True, px=int(lease_s * 1000)):
            return "busy"
        stored = self.client.hgetall(self._delivery_key(client, delivery_id))
        fields = {_s(k): _s(v) for k, v in stored.items()}
        reason = None
        if not fields or fields["status"] != "pending":
            reason = "done"
        elif int(fields["next_attempt_ms"]) > _ms() + 1000:
            reason = "not-due"
        if reason:
            with self.client.pipeline(transaction=True) as pipe:
                if reason == "done":  # delivered, failed or gone: nothing for the sweeper to send
                    pipe.zrem(DUE, f"{encode_id(client)}:{delivery_id}")
                pipe.delete(lease)
                pipe.execute()
            return reason
        endpoint = self._endpoint(client, fields["endpoint_id"])
        if endpoint is None:
            return "endpoint-deleted"
        signing = [endpoint["secret"]]
        if previous := self.client.get(self._previous_key(client, fields["endpoint_id"])):
            signing.append(_s(previous))
        body = _s(self.client.hget(self._event_key(client, fields["event_id"]), "body"))
        return Attempt(client, delivery_id, endpoint["url"], signing, body, int(fields["attempts"]),
                       int(fields["window_start_ms"]))

    def end_attempt(self, client: str, delivery_id: str, status: str, status_code: int | None,
                    error: str, next_attempt_ms: int | None = None, due_ms: int | None = None,
                    attempts: int | None = None, ledger: LedgerEvent | None = None) -> bool:
        """Record one attempt: `delivered`/`failed`/`refused` are final; `pending` is tried again
        at next_attempt_ms (the sweeper sends it at due_ms if no message does before).

        `attempts` is the count including this attempt (None: no request was sent), written, not
        incremented. `ledger`: the batch event a final outcome adds to the batch's trail, in the
        same script (end_webhook_attempt.lua), so the two are recorded together or not at all.
        Returns False when nothing was recorded: the delivery was no longer pending or a later
        attempt was recorded (a call the store client replays after a Redis restart lost its
        reply, or a second worker ending the attempt after the first ended it as final)."""
        key = self._delivery_key(client, delivery_id)
        event_key = batch_keys(BatchRef(client, ledger.batch_id))[0] if ledger else key
        return bool(self._end_webhook_attempt(
            [key, DUE, self._lease_key(client, delivery_id), event_key],
            status=status, code=status_code or None, error=error[:300], next_ms=next_attempt_ms,
            due_ms=due_ms, attempts=attempts, member=f"{encode_id(client)}:{delivery_id}",
            event={"type": ledger.event_type, "detail": ledger.detail} if ledger else None))

    def take_due(self, now_ms: int, grace_ms: int, limit: int = 500) -> list[tuple[str, str]]:
        """(client, delivery id) of deliveries no message is known to carry, due by now: each is
        pushed `grace_ms` ahead, so the next sweep leaves it to the message sent now."""
        members = [_s(m) for m in self.client.zrangebyscore(DUE, "-inf", now_ms, start=0, num=limit)]
        if members:
            self.client.zadd(DUE, {m: now_ms + grace_ms for m in members}, xx=True)
        due = []
        for member in members:
            client, _, delivery_id = member.rpartition(":")
            due.append((unquote(client), delivery_id))
        return due

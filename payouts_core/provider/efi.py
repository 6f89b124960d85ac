"""Efí's Pix API as a PixProvider: a Pix sent to a key under an idEnvio we choose, looked up by it.

Routes (Efí's API docs and its SDK's constants): `POST /oauth/token` (HTTP Basic, mutual TLS),
`PUT /v3/gn/pix/{idEnvio}`, `GET /v2/gn/pix/enviados/id-envio/{idEnvio}`,
`GET /v2/gn/pix/enviados?inicio&fim` (reconciliation). Every answer maps to settled, rejected
or unknown, and unknown is never failed (SPEC §5, §11); the table is in docs/RELIABILITY.md.

Not Efí's SDK (`efipay`): it sets no timeout, returns errors as strings and opens a connection
per call. Here one urllib3 connection pool per worker process (requests' own transport, without
the Session layer that cost 274 us of CPU per request) holds a kept-alive mutual-TLS connection
for every greenlet, each request gets what remains of the call's deadline, and one OAuth token is
shared by the process and refreshed by one greenlet at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

import redis
import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError as Urllib3SSLError

from payouts_core.pix_keys import mask_pix_key
from payouts_core.provider import (
    PermanentProviderError,
    PixProvider,
    Transfer,
    TransientProviderError,
)

if TYPE_CHECKING:
    from payouts_core.settings import EfiSettings, Settings

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "efi:"

# Efí's send statuses -> Transfer.status. Anything else is read as pending: unknown, asked again.
STATUSES = {"REALIZADO": "settled", "NAO_REALIZADO": "rejected", "EM_PROCESSAMENTO": "pending"}
# 4xx `nome` values with an SPI equivalent; any other becomes EFI_<NOME>.
NAMED_CODES = {"chave_nao_pertence_ao_documento": "BE01"}
_SPI_CODE = re.compile(r"[A-Z]{2}[0-9]{2}")

# Codes of the outcomes this adapter cannot settle (transient: the item is retried or looked up).
NO_ANSWER = "EFI_NO_ANSWER"  # timeout, reset or 5xx: the PSP may or may not hold the transfer
PROCESSING = "EFI_EM_PROCESSAMENTO"  # accepted, not yet final when the call's deadline came
RATE_LIMITED = "EFI_RATE_LIMITED"  # 429: nothing was done; asked again after Retry-After
UNAUTHORIZED = "EFI_UNAUTHORIZED"  # 401 after one token refresh: credentials to fix
ID_ENVIO_COLLISION = "EFI_ID_ENVIO_COLLISION"

# Lookups while a transfer is EM_PROCESSAMENTO, in seconds from the send (SPI p50 2.8 s, p99
# 4.6 s): most transfers are final by the third look, and the deadline bounds the rest.
PENDING_POLLS_S = (0.5, 0.5, 1.0, 1.0, 2.0)
TOKEN_REFRESH_MARGIN_S = 60.0  # refresh this long before `expires_in` ends (or at 1/10 of it)
MAX_RETRY_AFTER_S = 60.0  # a larger Retry-After is read as this
LIST_PAGE_SIZE = 1000
# A send may take this part of the call's deadline: an unanswered one leaves time to look it up.
SEND_SHARE = 2 / 3


def id_envio(idempotency_key: str) -> str:
    """The idEnvio Efí receives for one idempotency key: the first 128 bits of the key's SHA-256,
    as 32 lowercase hex characters (Efí allows `[a-zA-Z0-9]{1,35}`).

    Deterministic, so a redelivered settle sends the same idEnvio and Efí refuses a second
    transfer (409 id_envio_duplicado). Two keys share an idEnvio with probability about
    n^2 / 2^129 among n keys: 1.5e-21 for a billion payouts. Even then no money moves wrongly:
    the adapter records which key owns each idEnvio before sending, and refuses the second key.
    """
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def valor(amount_cents: int) -> str:
    """Cents as Efí's `valor`: a decimal string with two places ("12.34")."""
    return f"{amount_cents // 100}.{amount_cents % 100:02d}"


def cents(value: str) -> int:
    """Efí's `valor` as cents; -1 (never an item's amount, so reconciliation reports it) when
    unreadable or finer than a cent."""
    try:
        amount = Decimal(str(value)) * 100
    except InvalidOperation:
        return -1
    return int(amount) if amount.is_finite() and amount == amount.to_integral_value() else -1


def error_code(status: int, body: dict) -> tuple[str, str]:
    """(our code, reason) for an Efí error body: `{"nome", "mensagem"}`, or the Pix API's
    problem+json `{"type", "title", "detail"}`."""
    name = str(body.get("nome") or str(body.get("type") or "").rsplit("/", 1)[-1] or f"http_{status}")
    reason = str(body.get("mensagem") or body.get("detail") or body.get("title") or f"HTTP {status}")
    code = NAMED_CODES.get(name) or "EFI_" + re.sub(r"[^A-Z0-9_]", "_", name.upper())[:40]
    return code, reason[:200]


def failure_of(record: dict) -> tuple[str, str]:
    """A NAO_REALIZADO transfer's reason: an SPI code (AC03, ...) passes through."""
    extras = record.get("gnExtras") or {}
    erro = extras.get("erro") or record.get("erro") or {}
    codigo = str(erro.get("codigo") or "")
    motivo = str(erro.get("motivo") or "not sent by the PSP (NAO_REALIZADO)")
    return (codigo if _SPI_CODE.fullmatch(codigo) else "EFI_NAO_REALIZADO"), motivo[:200]


class _NoAnswer(Exception):
    """The request may or may not have reached the PSP: timeout, reset, deadline spent."""


class EfiHttp:
    """One mutual-TLS connection pool and one OAuth token per process; every request within a
    deadline."""

    def __init__(self, settings: EfiSettings, pool_size: int, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], object] = time.sleep):
        url = urlsplit(settings.base_url)
        self.prefix = url.path.rstrip("/")
        self.connect_timeout_s = settings.connect_timeout_s
        self._basic = urllib3.make_headers(basic_auth=f"{settings.client_id}:{settings.client_secret}")
        self._clock, self._sleep = clock, sleep
        context = ssl.create_default_context(cafile=settings.ca_file)  # None: the system store
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # what Efí requires
        context.load_cert_chain(settings.cert_file)  # the account's certificate and key
        # One host: one pool of keep-alive connections, one per greenlet that may call at once.
        # No urllib3 retries and no redirects: a repeated PUT is safe (same idEnvio), but we decide.
        self.pool = urllib3.HTTPSConnectionPool(url.hostname, url.port or 443, maxsize=pool_size,
                                                block=False, ssl_context=context, retries=False)
        self._token: tuple[str, float, float] | None = None  # (token, expires at, refresh from)
        self._token_lock = threading.Lock()  # gevent's lock once the worker is patched
        self._not_before = 0.0  # a 429's Retry-After holds every greenlet of the process
        self.token_requests = 0

    def close(self) -> None:
        self.pool.close()

    # -- token ----------------------------------------------------------------------------------

    def token(self, deadline: float) -> str:
        """A valid token. Near its expiry one greenlet refreshes it while the others go on with
        the still-valid one; once expired, everyone waits for that one refresh."""
        current = self._token
        now = self._clock()
        if current is not None and now < current[1]:
            if now < current[2] or not self._token_lock.acquire(blocking=False):
                return current[0]
            try:
                if self._token is current:
                    self._fetch_token(deadline)
            except (_NoAnswer, TransientProviderError):
                pass  # the current token is still valid: the next call refreshes it
            finally:
                self._token_lock.release()
            return self._token[0]
        if not self._token_lock.acquire(timeout=max(0.0, deadline - now)):
            raise _NoAnswer("waited for the token refresh past the call's deadline")
        try:
            if self._token is current:  # nobody refreshed it while we waited
                self._fetch_token(deadline)
            return self._token[0]
        finally:
            self._token_lock.release()

    def invalidate(self, token: str) -> None:
        """A 401 for this token: drop it (unless another greenlet already replaced it)."""
        if self._token is not None and self._token[0] == token:
            self._token = None

    def _fetch_token(self, deadline: float) -> None:
        started = self._clock()
        self.token_requests += 1
        response = self._send("POST", "/oauth/token", deadline, headers=self._basic,
                              body={"grant_type": "client_credentials"})
        if response.status != 200:
            _, reason = error_code(response.status, _body(response))
            raise TransientProviderError(UNAUTHORIZED if response.status in (400, 401, 403)
                                         else NO_ANSWER, f"token: HTTP {response.status} {reason}")
        body = _body(response)
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not token or not isinstance(expires_in, int | float):
            raise TransientProviderError(NO_ANSWER, "token: answer without access_token/expires_in")
        lifetime = float(expires_in)
        margin = min(TOKEN_REFRESH_MARGIN_S, lifetime / 10)
        self._token = (str(token), started + lifetime, started + lifetime - margin)

    # -- requests -------------------------------------------------------------------------------

    def request(self, method: str, path: str, deadline: float, *, share: float = 1.0,
                **kwargs) -> urllib3.BaseHTTPResponse:
        """An authorised request. 401: one token refresh and one retry. 429: wait Retry-After
        when it fits in the deadline (nothing was done, so asking again is safe), else answer it.
        `share`: the part of the remaining time the request itself may take (a send leaves room
        for the lookup that follows an unanswered one)."""
        refreshed = False
        while True:
            token = self.token(deadline)
            now = self._clock()
            response = self._send(method, path, now + (deadline - now) * share,
                                  headers={"Authorization": f"Bearer {token}"}, **kwargs)
            if response.status == 401 and not refreshed:
                refreshed = True
                self.invalidate(token)
                continue
            if response.status == 429:
                wait = retry_after_s(response.headers.get("Retry-After"))
                self._not_before = max(self._not_before, self._clock() + wait)
                if self._clock() + wait < deadline - self.connect_timeout_s:
                    continue  # _send waits for the Retry-After
            return response

    def _send(self, method: str, path: str, deadline: float, *, headers: dict,
              body: dict | None = None, params: dict | None = None) -> urllib3.BaseHTTPResponse:
        now = self._clock()
        if self._not_before > now:
            if self._not_before >= deadline:
                raise TransientProviderError(RATE_LIMITED, "rate limited by the PSP (Retry-After)")
            self._sleep(self._not_before - now)
            now = self._clock()
        remaining = deadline - now
        if remaining <= 0:
            raise _NoAnswer("the call's deadline was spent")
        url = self.prefix + path + (f"?{urlencode(params)}" if params else "")
        if body is not None:
            headers = {**headers, "Content-Type": "application/json"}
        try:
            return self.pool.urlopen(
                method, url, body=None if body is None else _dumps(body), headers=headers,
                timeout=urllib3.Timeout(connect=min(self.connect_timeout_s, remaining), read=remaining),
                redirect=False, retries=False, preload_content=True)
        except Urllib3SSLError as exc:  # the handshake: nothing was sent
            raise TransientProviderError(NO_ANSWER, f"TLS: {type(exc).__name__}") from None
        except (Urllib3Error, OSError) as exc:  # timeouts, resets, refused connections
            raise _NoAnswer(type(exc).__name__) from None


def retry_after_s(header: str | None) -> float:
    """Retry-After in seconds (delta-seconds or an HTTP date); 1 s when absent or unreadable."""
    if not header:
        return 1.0
    try:
        seconds = float(header)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(header) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            seconds = 1.0
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def _body(response: urllib3.BaseHTTPResponse) -> dict:
    try:
        body = json.loads(response.data or b"null")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _dumps(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


class EfiPixProvider(PixProvider):
    """Pays through Efí. Redis keeps, per idEnvio, which idempotency key sent it (`efi:sent`),
    so the PSP's list of sent Pix reads back as our transfers in reconciliation."""

    def __init__(self, settings: EfiSettings, client: redis.Redis, *, pool_size: int = 10,
                 prefix: str = DEFAULT_PREFIX, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep):
        self.settings = settings
        self.http = EfiHttp(settings, pool_size, clock=clock, sleep=sleep)
        self._client = client
        self._sent_key = f"{prefix}sent"
        self._first_key = f"{prefix}first_sent_at"
        self._first_marked = False
        self._clock, self._sleep = clock, sleep

    @property
    def final_deadline_s(self) -> float:
        """How long after our last call "Efí holds no such idEnvio" is taken as definite."""
        return self.settings.final_deadline_s

    # -- PixProvider ----------------------------------------------------------------------------

    def pay(self, *, idempotency_key: str, external_id: str, amount_cents: int,
            pix_key: str) -> Transfer:
        deadline = self._clock() + self.settings.timeout_s
        ident = id_envio(idempotency_key)
        meta = self._remember(ident, idempotency_key, external_id, amount_cents)
        body = {"valor": valor(amount_cents), "pagador": {"chave": self.settings.payer_key},
                "favorecido": {"chave": pix_key}}
        try:
            response = self.http.request("PUT", f"/v3/gn/pix/{ident}", deadline, share=SEND_SHARE,
                                         body=body)
        except _NoAnswer as exc:
            return self._after_no_answer(ident, meta, deadline, str(exc))
        status = response.status
        if status in (200, 201):
            return self._final(self._transfer(_body(response), ident, meta), ident, meta, deadline)
        if status == 409:  # id_envio_duplicado: sent before (a redelivery); answer with it
            return self._after_no_answer(ident, meta, deadline, "idEnvio already used")
        code, reason = error_code(status, _body(response))
        if status == 429:
            raise TransientProviderError(RATE_LIMITED, reason)
        if status == 401:
            raise TransientProviderError(UNAUTHORIZED, reason)
        if 400 <= status < 500:  # validation and refusals: nothing was sent
            raise PermanentProviderError(code, reason)
        return self._after_no_answer(ident, meta, deadline, f"HTTP {status} {reason}")

    def lookup(self, idempotency_key: str) -> Transfer | None:
        """Efí's transfer under this key's idEnvio; None only on Efí's definite 404. When Efí
        cannot be asked, a pending transfer: unknown, so settle asks again (never a failure)."""
        ident = id_envio(idempotency_key)
        deadline = self._clock() + self.settings.timeout_s
        meta = self._meta(ident)
        try:
            return self._lookup(ident, meta, deadline)
        except (_NoAnswer, TransientProviderError) as exc:
            meta = meta or {}
            return Transfer(idempotency_key=idempotency_key, external_id=meta.get("external_id", ""),
                            status="pending", amount_cents=meta.get("amount_cents", 0),
                            pix_key_masked="", created_at="", failure_code=NO_ANSWER,
                            failure_reason=f"lookup unanswered: {exc}")

    def transfers(self) -> Iterator[Transfer]:
        """Every Pix Efí lists as sent since our first send, read back as our transfers."""
        first = self._client.get(self._first_key)
        if first is None:
            return
        start = datetime.fromisoformat(_text(first)) - timedelta(minutes=1)
        end = datetime.now(UTC) + timedelta(minutes=1)
        page = 0
        while True:
            deadline = self._clock() + self.settings.timeout_s
            params = {"inicio": _iso(start), "fim": _iso(end), "paginacao.paginaAtual": page,
                      "paginacao.itensPorPagina": LIST_PAGE_SIZE}
            try:
                response = self.http.request("GET", "/v2/gn/pix/enviados", deadline, params=params)
            except _NoAnswer as exc:
                raise TransientProviderError(NO_ANSWER, f"listing sent Pix: {exc}") from None
            if response.status != 200:
                raise TransientProviderError(NO_ANSWER, f"listing sent Pix: HTTP {response.status}")
            body = _body(response)
            records = body.get("pix") or []
            metas = self._metas([str(r.get("idEnvio", "")) for r in records])
            for record, meta in zip(records, metas, strict=True):
                yield self._transfer(record, str(record.get("idEnvio", "")), meta)
            pages = ((body.get("parametros") or {}).get("paginacao") or {}).get("quantidadeDePaginas", 1)
            page += 1
            if not records or page >= int(pages):
                return

    # -- helpers --------------------------------------------------------------------------------

    def _remember(self, ident: str, key: str, external_id: str, amount_cents: int) -> dict:
        """Record which key owns this idEnvio before sending it; another key owning it is a
        collision (see id_envio): refused, nothing sent."""
        meta = {"key": key, "external_id": external_id, "amount_cents": amount_cents}
        pipe = self._client.pipeline(transaction=False)
        pipe.hsetnx(self._sent_key, ident, json.dumps(meta))
        pipe.hget(self._sent_key, ident)
        if not self._first_marked:  # where reconciliation's window starts; once per process
            pipe.set(self._first_key, datetime.now(UTC).isoformat(), nx=True)
        stored = pipe.execute()[1]
        self._first_marked = True
        if json.loads(_text(stored))["key"] != key:
            raise PermanentProviderError(ID_ENVIO_COLLISION, "another payout owns this idEnvio")
        return meta

    def _meta(self, ident: str) -> dict | None:
        return self._metas([ident])[0]

    def _metas(self, idents: list[str]) -> list[dict | None]:
        if not idents:
            return []
        return [None if raw is None else json.loads(_text(raw))
                for raw in self._client.hmget(self._sent_key, idents)]

    def _lookup(self, ident: str, meta: dict | None, deadline: float) -> Transfer | None:
        response = self.http.request("GET", f"/v2/gn/pix/enviados/id-envio/{ident}", deadline)
        if response.status == 404:
            return None
        if response.status != 200:
            raise TransientProviderError(NO_ANSWER, f"lookup: HTTP {response.status}")
        return self._transfer(_body(response), ident, meta)

    def _after_no_answer(self, ident: str, meta: dict, deadline: float, why: str) -> Transfer:
        """The send's outcome is unknown: ask Efí what it holds under the idEnvio."""
        try:
            transfer = self._lookup(ident, meta, deadline)
        except (_NoAnswer, TransientProviderError):
            transfer = None
        if transfer is None:  # not (yet) there: settle sends the same idEnvio again, or looks up
            log.warning("efi send unanswered", extra={"id_envio": ident, "why": why})
            raise TransientProviderError(NO_ANSWER, f"no answer from the PSP ({why})")
        return self._final(transfer, ident, meta, deadline)

    def _final(self, transfer: Transfer, ident: str, meta: dict, deadline: float) -> Transfer:
        """Settled: the transfer. Rejected: the PSP's reason. EM_PROCESSAMENTO: looked up until
        final while the call's deadline allows, then unknown (settle asks again)."""
        for wait in PENDING_POLLS_S:
            if transfer.status != "pending" or self._clock() + wait >= deadline - self.http.connect_timeout_s:
                break
            self._sleep(wait)
            try:
                transfer = self._lookup(ident, meta, deadline) or transfer
            except (_NoAnswer, TransientProviderError):
                break
        if transfer.status == "settled":
            return transfer
        if transfer.status == "rejected":
            raise PermanentProviderError(transfer.failure_code or "EFI_NAO_REALIZADO",
                                         transfer.failure_reason or "not sent by the PSP")
        raise TransientProviderError(PROCESSING, "accepted by the PSP, not final yet")

    def _transfer(self, record: dict, ident: str, meta: dict | None) -> Transfer:
        """Efí's record as a Transfer; `meta` (our key for the idEnvio) None: not sent by us."""
        status = STATUSES.get(str(record.get("status")), "pending")
        code, reason = failure_of(record) if status == "rejected" else (None, None)
        favorecido = record.get("favorecido") or {}
        return Transfer(
            idempotency_key=meta["key"] if meta else f"efi:{ident}",
            external_id=meta["external_id"] if meta else "",
            status=status,
            amount_cents=cents(record.get("valor", "")),
            pix_key_masked=mask_pix_key(str(favorecido.get("chave") or "")),
            created_at=str((record.get("horario") or {}).get("solicitacao") or ""),
            e2e_id=record.get("endToEndId") or record.get("e2eId") or None,
            failure_code=code, failure_reason=reason)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def build_provider(settings: Settings, client: redis.Redis) -> EfiPixProvider:
    """The provider configured by `Settings` (EFI_* variables): a connection per greenlet."""
    if settings.efi is None:
        raise ValueError("PAYOUTS_PROVIDER=efi needs the EFI_* settings")
    return EfiPixProvider(settings.efi, client, pool_size=settings.worker_concurrency)

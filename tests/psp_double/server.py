"""A double of Efí's Pix API over HTTPS that requires a client certificate, with faults on demand.

It implements what the adapter uses, as Efí documents it: `POST /oauth/token` (HTTP Basic),
`PUT /v3/gn/pix/{idEnvio}` (201 EM_PROCESSAMENTO; 400 `valor_invalido` / `chave_invalida` /
`chave_nao_pertence_ao_documento`; 409 `id_envio_duplicado`; 422 `pagamento_negado`; 500
`erro_aplicacao`), `GET /v2/gn/pix/enviados/id-envio/{idEnvio}` (200, or 404 problem+json) and
`GET /v2/gn/pix/enviados?inicio&fim` (paginated). A transfer is EM_PROCESSAMENTO until its
settlement time, then REALIZADO or NAO_REALIZADO. Its state is in memory, so tests running it in
their own process read it directly (`transfers`, `puts`); workers reach it over HTTPS.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import secrets
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import trustme

ISPB = "09089356"  # Efí's
PAYER_KEY = "payer-evp-0000-double"
CLIENT_ID = "Client_Id_double"
CLIENT_SECRET = "Client_Secret_double"
_ID_ENVIO = re.compile(r"[a-zA-Z0-9]{1,35}")
_VALOR = re.compile(r"[0-9]{1,10}\.[0-9]{2}")

#: Favorecido keys that force a behaviour (like the simulator's test keys).
TEST_KEYS = {
    "accept.500@psp.test": "records the transfer, then answers 500 erro_aplicacao",
    "accept.timeout@psp.test": "records the transfer, then answers only after `slow_s` (client times out)",
    "accept.reset@psp.test": "records the transfer, then resets the connection (TCP RST)",
    "flaky.500@psp.test": "first PUT per idEnvio answers 500 without recording; later ones work",
    "ratelimited@psp.test": "first PUT per idEnvio answers 429 Retry-After: 1 without recording",
    "processing@psp.test": "EM_PROCESSAMENTO for `processing_s`, then REALIZADO",
    "nao.realizado@psp.test": "EM_PROCESSAMENTO, then NAO_REALIZADO with SPI code AC03",
    "holder.mismatch@psp.test": "400 chave_nao_pertence_ao_documento, nothing recorded",
    "denied@psp.test": "422 pagamento_negado, nothing recorded",
    "slow@psp.test": "answers 201 after `slow_answer_s` (below the client's deadline)",
}


@dataclass(frozen=True)
class Certs:
    """A test CA, the double's server certificate, and client certificates (one trusted, one not)."""

    ca_file: str  # trust anchor for the double's server certificate (EFI_CA_FILE)
    client_pem: str  # certificate + private key the double accepts (EFI_CERT_FILE)
    stranger_pem: str  # a certificate from another CA: refused at the handshake
    server_context: ssl.SSLContext


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # Efí: TLS 1.2 at least
    context.verify_mode = ssl.CERT_REQUIRED
    server.configure_cert(context)
    ca.configure_trust(context)
    paths = {name: directory / f"{name}.pem" for name in ("ca", "client", "stranger")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    ca.issue_cert("payouts-client.test").private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    other_ca.issue_cert("stranger.test").private_key_and_cert_chain_pem.write_to_path(str(paths["stranger"]))
    for path in paths.values():
        path.chmod(0o600)
    return Certs(str(paths["ca"]), str(paths["client"]), str(paths["stranger"]), context)


@dataclass
class _Sent:
    record: dict
    settles_at: float  # monotonic: EM_PROCESSAMENTO until then
    final: str  # REALIZADO | NAO_REALIZADO
    erro: dict | None = None

    def view(self, now: float) -> dict:
        if now < self.settles_at:
            return {**self.record, "status": "EM_PROCESSAMENTO"}
        record = {**self.record, "status": self.final}
        if self.final == "REALIZADO":
            record["horario"] = {**record["horario"], "liquidacao": _iso(datetime.now(UTC))}
        if self.erro:
            record["gnExtras"] = {"idEnvio": record["idEnvio"], "erro": self.erro}
        return record


@dataclass
class PspDouble:
    """The PSP side. Knobs: token TTL, settlement delay range, per-request latency, random
    NAO_REALIZADO / 500 rates with a seed (the seed profile), and the faults in TEST_KEYS."""

    certs: Certs
    token_ttl_s: float = 3600.0
    settle_after_ms: tuple[int, int] = (0, 0)
    latency_ms: tuple[int, int] = (0, 0)
    permanent_rate: float = 0.0
    transient_rate: float = 0.0
    seed: str = "double"
    slow_s: float = 5.0
    slow_answer_s: float = 0.5
    processing_s: float = 3.0
    sent: dict[str, _Sent] = field(default_factory=dict)
    puts: Counter = field(default_factory=Counter)  # PUTs per idEnvio, whatever the answer
    routes: Counter = field(default_factory=Counter)
    tokens: dict[str, float] = field(default_factory=dict)
    token_requests: int = 0
    _rate_limited: int = 0
    _retry_after: str = "1"
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _connections: set = field(default_factory=set)

    # -- controls -------------------------------------------------------------------------------

    def start(self, port: int = 0) -> str:
        double = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024

            def handle_error(self, request, client_address):  # handshakes refused, clients gone
                pass

        self._server = Server(("127.0.0.1", port), _handler(double))
        # The handshake runs in each connection's thread (not in accept), so one slow or refused
        # client never holds the others.
        self._server.socket = self.certs.server_context.wrap_socket(
            self._server.socket, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="psp-double").start()
        return self.base_url

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        """Stop listening and cut the keep-alive connections still open (a PSP gone away)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def expire_tokens(self) -> None:
        """Every token issued so far stops working (a token that expires mid-batch)."""
        with self._lock:
            self.tokens.clear()

    def rate_limit_next(self, requests: int, retry_after: str = "1") -> None:
        """The next `requests` authorised requests answer 429 with this Retry-After."""
        with self._lock:
            self._rate_limited, self._retry_after = requests, retry_after

    def transfers_by_id(self) -> dict[str, dict]:
        now = time.monotonic()
        with self._lock:
            return {ident: sent.view(now) for ident, sent in self.sent.items()}

    # -- routes ---------------------------------------------------------------------------------

    def token(self, authorization: str) -> tuple[int, dict]:
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if authorization != f"Basic {expected}":
            return 401, {"error": "invalid_client", "error_description": "Invalid or inactive credentials"}
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.token_requests += 1
            self.tokens[token] = time.monotonic() + self.token_ttl_s
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": int(self.token_ttl_s),
                     "scope": "pix.send gn.pix.send.read"}

    def authorised(self, authorization: str) -> tuple[int, dict, dict] | None:
        """None when the bearer token is valid and no 429 is due; else the answer to give."""
        token = authorization.removeprefix("Bearer ")
        with self._lock:
            expiry = self.tokens.get(token)
            if expiry is None or expiry <= time.monotonic():
                return 401, {"nome": "nao_autorizado", "mensagem": "Token inválido ou expirado"}, {}
            if self._rate_limited > 0:
                self._rate_limited -= 1
                return 429, {"nome": "limite_excedido", "mensagem": "Limite de requisições excedido"}, \
                    {"Retry-After": self._retry_after}
        return None

    def send(self, ident: str, body: dict) -> tuple[int, dict, str]:
        """(status, body, after): `after` is "", "reset" or "timeout" (faults after recording)."""
        with self._lock:
            self.puts[ident] += 1
            attempt = self.puts[ident]
        key = str((body.get("favorecido") or {}).get("chave") or "").lower()
        valor = str(body.get("valor") or "")
        if not _ID_ENVIO.fullmatch(ident):
            return 400, {"nome": "valor_invalido", "mensagem": "Campo idEnvio é inválido"}, ""
        if not _VALOR.fullmatch(valor) or float(valor) <= 0:
            return 400, {"nome": "valor_invalido", "mensagem": "Campo valor deve ser maior que zero"}, ""
        if (body.get("pagador") or {}).get("chave") != PAYER_KEY:
            return 400, {"nome": "chave_invalida",
                         "mensagem": "A chave informada não faz referência à conta Efí autenticada"}, ""
        if not key:
            return 400, {"nome": "valor_invalido", "mensagem": "Campo favorecido.chave é obrigatório"}, ""
        if key == "holder.mismatch@psp.test":
            return 400, {"nome": "chave_nao_pertence_ao_documento",
                         "mensagem": "O cpf do favorecido é diferente do documento em posse da chave"}, ""
        if key == "denied@psp.test":
            return 422, {"nome": "pagamento_negado", "mensagem": "Pagamento negado por análises"}, ""
        rng = random.Random(f"{self.seed}:{ident}:{attempt}")
        if (key == "flaky.500@psp.test" and attempt == 1) or rng.random() < self.transient_rate:
            return 500, {"nome": "erro_aplicacao", "mensagem": "Ocorreu um erro ao validar a chave"}, ""
        if key == "ratelimited@psp.test" and attempt == 1:
            return 429, {"nome": "limite_excedido", "mensagem": "Limite de requisições excedido"}, ""
        now = time.monotonic()
        with self._lock:
            if ident in self.sent:
                return 409, {"nome": "id_envio_duplicado",
                             "mensagem": "O id de envio informado já foi utilizado em outro pagamento"}, ""
            settle_s = rng.uniform(*self.settle_after_ms) / 1000
            final, erro = "REALIZADO", None
            if key == "processing@psp.test":
                settle_s = self.processing_s
            if key == "nao.realizado@psp.test" or rng.random() < self.permanent_rate:
                final, erro = "NAO_REALIZADO", {"codigo": "AC03", "motivo": "Conta do recebedor inválida"}
            stamp = datetime.now(UTC)
            record = {"idEnvio": ident, "endToEndId": f"E{ISPB}{stamp:%Y%m%d%H%M}API{secrets.token_hex(4)}",
                      "valor": valor, "chave": PAYER_KEY, "horario": {"solicitacao": _iso(stamp)},
                      "favorecido": {"chave": key}}
            self.sent[ident] = _Sent(record, now + settle_s, final, erro)
        answer = {"idEnvio": ident, "e2eId": record["endToEndId"], "valor": valor,
                  "horario": {"solicitacao": record["horario"]["solicitacao"]}, "status": "EM_PROCESSAMENTO"}
        if key == "accept.500@psp.test":
            return 500, {"nome": "erro_aplicacao", "mensagem": "Ocorreu um erro ao processar o envio"}, ""
        if key == "accept.reset@psp.test":
            return 201, answer, "reset"
        if key == "accept.timeout@psp.test":
            return 201, answer, "timeout"
        if key == "slow@psp.test":
            time.sleep(self.slow_answer_s)
        return 201, answer, ""

    def lookup(self, ident: str) -> tuple[int, dict]:
        now = time.monotonic()
        with self._lock:
            sent = self.sent.get(ident)
            view = None if sent is None else sent.view(now)
        if view is None:
            return 404, {"type": "https://pix.bcb.gov.br/api/v2/error/PixEnviadoNaoEncontrado",
                         "title": "Não Encontrado", "status": 404,
                         "detail": "Pix enviado não encontrado para o idEnvio informado."}
        return 200, view

    def listing(self, query: dict[str, list[str]]) -> tuple[int, dict]:
        try:
            start, end = (_parse(query[name][0]) for name in ("inicio", "fim"))
            page = int(query.get("paginacao.paginaAtual", ["0"])[0])
            size = int(query.get("paginacao.itensPorPagina", ["100"])[0])
        except (KeyError, ValueError):
            return 400, {"nome": "valor_invalido", "mensagem": "Campos inicio e fim são obrigatórios"}
        now = time.monotonic()
        with self._lock:
            views = [s.view(now) for s in self.sent.values()]
        inside = [v for v in views if start <= _parse(v["horario"]["solicitacao"]) <= end]
        pages = max(1, -(-len(inside) // size))
        return 200, {"parametros": {"inicio": query["inicio"][0], "fim": query["fim"][0],
                                    "paginacao": {"paginaAtual": page, "itensPorPagina": size,
                                                  "quantidadeDePaginas": pages,
                                                  "quantidadeTotalDeItens": len(inside)}},
                     "pix": inside[page * size:(page + 1) * size]}


def _handler(double: PspDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the adapter's pool expects

        def setup(self):
            self.request.settimeout(30)
            # Headers and body leave in two writes: without this, Nagle holds the body until the
            # client's delayed ACK (measured: 42 ms per answer).
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.request.do_handshake()  # a client without an accepted certificate stops here
            double._connections.add(self.request)
            super().setup()

        def finish(self):
            double._connections.discard(self.request)
            super().finish()

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass

        def do_POST(self):
            self._body()
            if urlsplit(self.path).path != "/oauth/token":
                return self._answer(404, {"nome": "nao_encontrado", "mensagem": "Rota não encontrada"})
            double.routes["token"] += 1
            self._answer(*double.token(self.headers.get("Authorization", "")))

        def do_PUT(self):
            body = self._body()
            match = re.fullmatch(r"/v3/gn/pix/([^/?]*)", urlsplit(self.path).path)
            if match is None:
                return self._answer(404, {"nome": "nao_encontrado", "mensagem": "Rota não encontrada"})
            double.routes["send"] += 1
            if refused := double.authorised(self.headers.get("Authorization", "")):
                return self._answer(*refused)
            self._latency()
            try:
                parsed = json.loads(body or b"{}")
            except ValueError:
                return self._answer(400, {"nome": "json_invalido", "mensagem": "JSON inválido"})
            status, answer, after = double.send(match.group(1), parsed if isinstance(parsed, dict) else {})
            if after == "reset":
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.request.close()
                self.close_connection = True
                return None
            if after == "timeout":
                time.sleep(double.slow_s)
            headers = {"Retry-After": "1"} if status == 429 else {}
            return self._answer(status, answer, headers)

        def do_GET(self):
            url = urlsplit(self.path)
            if refused := double.authorised(self.headers.get("Authorization", "")):
                return self._answer(*refused)
            self._latency()
            if match := re.fullmatch(r"/v2/gn/pix/enviados/id-envio/([^/]*)", url.path):
                double.routes["lookup"] += 1
                return self._answer(*double.lookup(match.group(1)))
            if url.path == "/v2/gn/pix/enviados":
                double.routes["list"] += 1
                return self._answer(*double.listing(parse_qs(url.query)))
            return self._answer(404, {"nome": "nao_encontrado", "mensagem": "Rota não encontrada"})

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _latency(self):
            low, high = double.latency_ms
            if high:
                time.sleep(random.uniform(low, high) / 1000)

        def _answer(self, status: int, body: dict, headers: dict | None = None):
            payload = json.dumps(body).encode()
            self.send_response(status)
            content_type = "application/problem+json" if "type" in body else "application/json"
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            try:
                self.wfile.write(payload)
            except OSError:
                self.close_connection = True

    return Handler


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def efi_env(double: PspDouble, **overrides: str) -> dict[str, str]:
    """The environment that points the service at this double (PAYOUTS_PROVIDER=efi)."""
    return {"PAYOUTS_PROVIDER": "efi", "EFI_BASE_URL": double.base_url, "EFI_CLIENT_ID": CLIENT_ID,
            "EFI_CLIENT_SECRET": CLIENT_SECRET, "EFI_CERT_FILE": double.certs.client_pem,
            "EFI_CA_FILE": double.certs.ca_file, "EFI_PAYER_KEY": PAYER_KEY, **overrides}

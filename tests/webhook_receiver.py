"""A real HTTP receiver on 127.0.0.1 for webhook tests: answers from a script, records requests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    headers: dict
    body: str


@dataclass
class Receiver:
    """Each request takes the next answer of `script` (the last one repeats): a status code, or
    ("sleep", seconds, status) to answer late, (status, {"Retry-After": ...}), or ("trickle",
    seconds) to send a 200 answer one byte every `seconds` until the sender hangs up."""

    script: list = field(default_factory=lambda: [200])
    received: list[Received] = field(default_factory=list)
    hung_up: list[float] = field(default_factory=list)  # when a trickled answer's sender hung up

    def start(self, port: int = 0) -> Receiver:
        """Serve on 127.0.0.1 (on `port`, to come back where an endpoint points after an outage)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                receiver.received.append(Received(dict(self.headers), body))
                answer = receiver.script[min(len(receiver.received), len(receiver.script)) - 1]
                headers = {}
                if isinstance(answer, tuple) and answer[0] == "trickle":
                    self.trickle(answer[1])
                    return
                if isinstance(answer, tuple) and answer[0] == "sleep":
                    time.sleep(answer[1])
                    answer = answer[2]
                elif isinstance(answer, tuple):
                    answer, headers = answer
                self.send_response(answer)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def trickle(self, seconds: float) -> None:
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * 1000:
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:  # the sender gave up: what the test waits for
                        receiver.hung_up.append(time.monotonic())
                        return
                    time.sleep(seconds)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks?src=test"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} requests arrived"
            time.sleep(0.02)
        return self.received

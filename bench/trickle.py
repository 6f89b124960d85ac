"""Webhook receivers that never finish answering: each connection gets one byte every `interval`
seconds until the sender hangs up (issue 20's slow receivers). One threaded server stands for
any number of endpoints (they differ by path)."""

from __future__ import annotations

import socketserver
import threading
import time
from contextlib import suppress


class TrickleServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, interval: float):
        self.interval = interval
        self.connections = 0  # accepted so far
        self.open = 0  # being trickled now
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Trickle)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> TrickleServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Trickle(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: TrickleServer = self.server
        with server.lock:
            server.connections += 1
            server.open += 1
        try:
            self.request.settimeout(server.interval * 3)
            self.request.recv(65536)  # the request (its head at least); the answer never ends
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * 100:
                self.request.sendall(bytes([byte]))
                time.sleep(server.interval)
        except OSError:  # the sender hung up (its deadline): what is measured
            pass
        finally:
            with server.lock:
                server.open -= 1
            with suppress(OSError):
                self.request.close()

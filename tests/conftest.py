"""Shared fixtures: a private Redis on a free port for the whole session.

Tests never touch a Redis they did not start; each test uses unique ids instead of flushing.
"""

from __future__ import annotations

import uuid

import pytest
import redis

from payouts_cli.local_redis import free_port, start_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server started for this test session: yields its URL."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def uid():
    """A short unique suffix so tests sharing the session Redis never collide."""
    return uuid.uuid4().hex[:10]

"""`make run`: the API, the Celery workers (one process per core), beat, the ledger's archiver and
Flower under honcho (every Procfile line), in the foreground with their output interleaved; the
Redis and PostgreSQL starts and the processes' env come from payouts_devstack.

When nothing answers at REDIS_URL and it names this machine, a private redis-server is started
on that port (data in var/redis) and stopped again on exit, so a machine with only Python can
run the product. The ledger likewise: with DATABASE_URL unset, a private PostgreSQL in
var/postgres on port 54320 (never a system server's databases); with DATABASE_URL naming this
machine without a password and nothing listening there, a private one on that port. Either way
the ledger is migrated (`payouts db upgrade`) before anything starts.
Settings come from the environment, then `.env` (which wins, as in honcho).
What it starts runs as PAYOUTS_ENV=development unless that is set, with an API key and a Flower
login generated for the run when none is configured.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from honcho.environ import parse as parse_dotenv

from payouts_cli.local_redis import redact_url
from payouts_core.settings import Settings, SettingsError
from payouts_devstack import RedisUnavailable, is_answering, process_env, start_redis
from payouts_devstack.postgres_server import (
    DEV_PORT,
    PostgresUnavailable,
    database_url,
    local_postgres_port,
    start_postgres,
)
from payouts_devstack.postgres_server import is_answering as postgres_answers

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def say(message: str) -> None:
    print(f"run: {message}", file=sys.stderr, flush=True)


def load_env() -> dict[str, str]:
    """os.environ overlaid with `.env`, exactly what honcho will hand the processes."""
    env = dict(os.environ)
    dotenv = ROOT / ".env"
    if dotenv.is_file():
        env.update(parse_dotenv(dotenv.read_text()))
    return env


def local_redis_port(url: str) -> int | None:
    """The port to start a redis-server on, or None when the URL is not ours to serve."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.hostname not in LOCAL_HOSTS or parts.password:
        return None
    return parts.port or 6379


def run_honcho(env: dict[str, str]) -> int:
    """Run `honcho start`, forwarding SIGINT/SIGTERM to it; return its exit code."""
    honcho = VENV_BIN / "honcho"
    # honcho hands the first process $PORT (its own default is 5000): make it the API's port.
    cmd = [str(honcho), "start", "-f", "Procfile", "--port", env["PORT"]]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    return proc.wait()


def ensure_dev_api_key(env: dict[str, str]) -> None:
    """No PAYOUTS_API_KEYS configured: make a development key for this run and show it."""
    if env.get("PAYOUTS_API_KEYS") or env.get("PAYOUTS_AUTH_DISABLED", "").lower() in ("1", "true"):
        return
    key = "dev-" + secrets.token_urlsafe(24)
    env["PAYOUTS_API_KEYS"] = f"dev:{key}"
    env.setdefault("PAYOUTS_API_KEY", key)
    say(f"development API key for this run: {key}")
    say(f"  export PAYOUTS_API_KEY={key}   # for the payouts CLI; curl -H 'Authorization: Bearer {key}'")


def ensure_flower_login(env: dict[str, str]) -> None:
    """No FLOWER_BASIC_AUTH configured: make a login for this run and show it (Flower has no default)."""
    if env.get("FLOWER_BASIC_AUTH"):
        return
    password = secrets.token_urlsafe(18)
    env["FLOWER_BASIC_AUTH"] = f"dev:{password}"  # Flower reads it from its environment, not argv
    say(f"Flower login for this run: user dev, password {password}")


def start_ledger(env: dict[str, str], data_dir: Path = ROOT / "var" / "postgres"):
    """The ledger at DATABASE_URL, a private PostgreSQL started for it when needed (data in
    `data_dir`; returned, to stop on exit; None when one answered already), migrated to this
    code's schema."""
    from payouts_core.ledger.schema import upgrade  # noqa: PLC0415 - needs the URL decided first

    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = database_url(DEV_PORT)
    url = env["DATABASE_URL"]
    proc = None
    if not postgres_answers(url):
        port = local_postgres_port(url)
        if port is None:
            raise PostgresUnavailable(
                f"nothing answers at DATABASE_URL={redact_url(url)}; start that PostgreSQL or point "
                "DATABASE_URL at one (unset: a private one in var/postgres)")
        proc = start_postgres(port, data_dir,
                              database=urlsplit(url).path.lstrip("/") or "payouts")
        say(f"no PostgreSQL answered at {redact_url(url)}: started one on port {port} "
            f"(pid {proc.pid}, data in {data_dir}); it stops when this does")
    try:
        before, after = upgrade(url)
    except Exception:
        if proc is not None:
            proc.stop(grace=15)
        raise
    change = f"already at {after}" if before == after else f"{before or 'none'} -> {after}"
    say(f"ledger schema {change} (payouts db upgrade)")
    return proc


def main() -> int:
    env = load_env()
    env["PAYOUTS_ENV"] = env.get("PAYOUTS_ENV") or "development"
    ensure_dev_api_key(env)
    ensure_flower_login(env)
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        say(f"invalid setting: {exc}")
        return 2
    env["REDIS_URL"] = settings.redis_url
    env["PORT"] = env.get("PORT") or "8000"
    env = process_env(env)  # the venv's gunicorn and celery, even when it is not activated
    for name in [k for k, v in env.items() if k.startswith("FLOWER_") and not v]:
        del env[name]  # flower parses every FLOWER_* variable and fails on an empty one

    redis_proc = None
    if not is_answering(settings.redis_url, timeout=1.0):
        port = local_redis_port(settings.redis_url)
        if port is None:
            say(f"nothing answers at REDIS_URL={redact_url(settings.redis_url)}; start that Redis "
                "or point REDIS_URL at one (a local URL without password gets one started)")
            return 1
        try:
            # In its own session: Ctrl-C reaches honcho's processes, and Redis stops after them.
            redis_proc = start_redis(port, ROOT / "var" / "redis")
        except RedisUnavailable as exc:
            say(f"could not start a local Redis on port {port}: {exc}")
            return 1
        say(f"no Redis answered at {settings.redis_url}: started redis-server on port {port} "
            f"(pid {redis_proc.pid}, data in var/redis); it stops when this does")
    postgres_proc = None
    try:
        postgres_proc = start_ledger(env)
    except Exception as exc:  # PostgresUnavailable, a failed migration: say why, stop Redis
        say(f"ledger: {exc}")
        if redis_proc is not None:
            redis_proc.stop(grace=15)
        return 1

    say(f"API http://127.0.0.1:{env['PORT']} (docs at /docs), "
        f"Flower http://127.0.0.1:{env.get('FLOWER_PORT') or 5555}; Ctrl-C stops everything")
    processes = settings.worker_processes
    say(f"{processes} Celery worker process{'es' if processes > 1 else ''} (gevent, "
        f"{settings.worker_concurrency} greenlets each; WORKER_PROCESSES, default one per usable core)"
        f" and the webhook worker ({settings.webhook_concurrency} greenlets)")
    try:
        return run_honcho(env)
    finally:
        if postgres_proc is not None:
            say("stopping the local PostgreSQL")
            postgres_proc.stop(grace=15)
        if redis_proc is not None:
            say("stopping the local redis-server")
            redis_proc.stop(grace=15)


if __name__ == "__main__":
    sys.exit(main())

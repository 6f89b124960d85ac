"""A private PostgreSQL server: the system's binaries (`/usr/lib/postgresql/*/bin`, PATH), else
the ones in the `pgserver` wheel, so a machine with only Python can run the product and its
tests, as `redis_server` does for Redis. Data in a directory of the caller's; trust auth on
127.0.0.1 only, one database."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from payouts_devstack.process import Process, StackError

# `make run`'s private ledger when DATABASE_URL is unset: off 5432, so a system PostgreSQL there
# (whose databases are not ours) is never mistaken for it.
DEV_PORT = 54320
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


class PostgresUnavailable(StackError):
    """No PostgreSQL binaries could be found, or the server did not start."""


def find_postgres_bin() -> Path:
    """The directory holding `initdb` and `postgres`: newest system install first."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                        reverse=True)
    if found := shutil.which("initdb"):
        candidates.append(str(Path(found).parent))
    for path in candidates:
        if (Path(path) / "initdb").exists() and (Path(path) / "postgres").exists():
            return Path(path)
    try:
        import pgserver  # noqa: PLC0415 - optional fallback, imported only when needed
    except ImportError:
        raise PostgresUnavailable(
            "no PostgreSQL binaries (/usr/lib/postgresql/*/bin or initdb on PATH); install them "
            "(apt-get install postgresql) or `pip install pgserver`") from None
    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def _server_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: as root, run it as `postgres` (else `nobody`)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and no `postgres` or `nobody` user to run PostgreSQL as")


def _as_user(user: pwd.struct_passwd | None):
    if user is None:
        return None

    def demote() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    return demote


def database_url(port: int, database: str = "payouts") -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def local_postgres_port(url: str) -> int | None:
    """The port to start a private PostgreSQL on for `url`, or None when the URL is not ours to
    serve (another host, a password, or something already listening on that port)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql") or parts.hostname not in LOCAL_HOSTS \
            or parts.password:
        return None
    port = parts.port or 5432
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            return None  # a server is there (its database, or its password, is not this URL's)
    return port


def is_answering(url: str, timeout: float = 1.0) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout))) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def start_postgres(port: int, data_dir: Path, database: str = "payouts") -> Process:
    """`postgres` on 127.0.0.1:port with its cluster in data_dir (made by initdb on first use)
    and `database` created; returns once it answers. Its log is data_dir/postgres.log."""
    import subprocess  # noqa: PLC0415

    bin_dir = find_postgres_bin()
    user = _server_user()
    data_dir = Path(data_dir).resolve()
    cluster = data_dir / "cluster"
    data_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        # The server's user must reach its directory (a parent may be root's private temp dir).
        os.chown(data_dir, user.pw_uid, user.pw_gid)
        for parent in data_dir.parents:
            if parent.stat().st_mode & 0o001 == 0 and str(parent).startswith(("/tmp/", "/var/tmp/")):
                parent.chmod(parent.stat().st_mode | 0o711)
    if not (cluster / "PG_VERSION").exists():
        result = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(cluster), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, preexec_fn=_as_user(user), check=False)
        if result.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {result.stderr[-1000:]}")
    argv = [str(bin_dir / "postgres"), "-D", str(cluster), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data_dir}",
            "-c", "max_connections=200", "-c", "fsync=on", "-c", "shared_buffers=64MB"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = Process("postgres", argv, data_dir / "postgres.log", env, preexec=_as_user(user))
    admin = database_url(port, "postgres")
    deadline = time.monotonic() + 30
    while not is_answering(admin, timeout=1):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.stop(grace=0)
            tail = proc.log_path.read_text(errors="replace")[-1000:]
            raise PostgresUnavailable(f"postgres did not answer on port {port}:\n{tail}")
        time.sleep(0.1)
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(f'CREATE DATABASE "{database}"')
    return proc

"""RabbitMQ for development stacks: a throwaway vhost on the machine's broker, or a private node.

A stack never touches a vhost or node it did not create: it adds its own vhost (unique name)
and deletes it when it closes; a scenario that restarts the broker starts its own
`rabbitmq-server` node (own ports, data and log directories) instead of the shared one.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import suppress
from functools import lru_cache
from pathlib import Path

from payouts_devstack.process import Process, StackError
from payouts_devstack.redis_server import free_port

# The machine's broker; its guest user may only log in over loopback, as here.
SHARED_HOST = os.environ.get("PAYOUTS_TEST_RABBITMQ_HOST", "127.0.0.1")
SHARED_PORT = int(os.environ.get("PAYOUTS_TEST_RABBITMQ_PORT", "5672"))
USER = PASSWORD = "guest"


class RabbitMQUnavailable(StackError):
    """No RabbitMQ to create a vhost on, or no rabbitmq-server to start a node with."""


def _ctl(*args: str, node: str | None = None, timeout: float = 60) -> str:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RabbitMQUnavailable("rabbitmqctl is not on PATH (apt-get install rabbitmq-server)")
    argv = [ctl, *(["-n", node] if node else []), "-q", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RabbitMQUnavailable(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def _answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@lru_cache(maxsize=1)
def unavailable_reason() -> str:
    """Why RabbitMQ tests cannot run here ('' when they can): checked once per process."""
    if not _answers(SHARED_HOST, SHARED_PORT):
        return f"no RabbitMQ answers on {SHARED_HOST}:{SHARED_PORT}"
    try:
        _ctl("list_vhosts", timeout=30)
    except (RabbitMQUnavailable, subprocess.TimeoutExpired) as exc:
        return f"rabbitmqctl cannot manage the local node (it needs root or the rabbitmq user): {exc}"
    return ""


class Vhost:
    """A vhost of its own on the shared broker, with the guest user allowed in; `delete()` drops it
    and every queue and message in it."""

    def __init__(self, prefix: str = "payouts-test"):
        reason = unavailable_reason()
        if reason:
            raise RabbitMQUnavailable(reason)
        self.name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        _ctl("add_vhost", self.name)
        try:
            _ctl("set_permissions", "-p", self.name, USER, ".*", ".*", ".*")
        except RabbitMQUnavailable:
            self.delete()
            raise
        self.url = f"amqp://{USER}:{PASSWORD}@{SHARED_HOST}:{SHARED_PORT}/{self.name}"

    def queue_types(self) -> dict[str, str]:
        """Queue name -> its type (classic, quorum) in this vhost."""
        rows = (line.split("\t") for line in _ctl("list_queues", "-p", self.name, "name", "type",
                                                   "--no-table-headers").splitlines())
        return {row[0]: row[1] for row in rows if len(row) == 2}

    def delete(self) -> None:
        _ctl("delete_vhost", self.name)


class RabbitNode:
    """A private `rabbitmq-server` node (own name, AMQP and distribution ports, data directory, no
    plugins), so a test may stop and start the broker without disturbing anyone; its server
    output goes to `log_dir`. `delete()` stops it and removes its data."""

    def __init__(self, log_dir: Path):
        if shutil.which("rabbitmq-server") is None:
            raise RabbitMQUnavailable("rabbitmq-server is not on PATH (apt-get install rabbitmq-server)")
        # Data in a directory of its own under the system temp dir: the packaged wrapper runs the
        # server as the rabbitmq user, who cannot enter a root-only test directory.
        self.workdir = Path(tempfile.mkdtemp(prefix="payouts-rabbitmq-"))
        self.log_path = Path(log_dir) / "rabbitmq-server.log"
        self.name = f"payouts-{uuid.uuid4().hex[:10]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.url = f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.port}//"
        self.process: Process | None = None
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            # The test machine's disk may be nearly full; a stopped publisher would fail the test.
            "disk_free_limit.absolute = 50MB\n"
        )
        self._env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(self.workdir / "feature_flags"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.workdir / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbitmq.pid"),
        }
        for sub in ("mnesia", "log"):
            (self.workdir / sub).mkdir()
        if os.geteuid() == 0:
            owner = pwd.getpwnam("rabbitmq")
            for path in [self.workdir, *self.workdir.rglob("*")]:
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def start(self, timeout: float = 90) -> None:
        """Start the node (again, with its data) and return once it accepts AMQP connections."""
        self.process = Process("rabbitmq", ["rabbitmq-server"], self.log_path, self._env)
        deadline = time.monotonic() + timeout
        while not _answers("127.0.0.1", self.port, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.stop(grace=5)
                tail = self.process.log_path.read_text(errors="replace")[-1500:]
                raise RabbitMQUnavailable(f"private RabbitMQ node {self.name} did not start:\n{tail}")
            time.sleep(0.2)
        _ctl("await_startup", node=self.name, timeout=timeout)

    def stop(self, grace: float = 60) -> None:
        """A clean node shutdown (`rabbitmqctl stop`), as in a broker restart; the group is killed
        if that does not finish within `grace` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            _ctl("stop", node=self.name, timeout=grace)
        except (RabbitMQUnavailable, subprocess.TimeoutExpired):
            # `su -c` (the packaged wrapper) puts the server in a session of its own, out of the
            # group's reach: end it by the pid it wrote.
            with suppress(OSError, ValueError):
                os.kill(int((self.workdir / "rabbitmq.pid").read_text()), signal.SIGKILL)
        self.process.stop(grace=grace)
        self.process = None

    def delete(self) -> None:
        """Stop the node and remove its data."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

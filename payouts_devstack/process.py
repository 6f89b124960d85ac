"""A child process that takes its whole process group with it when stopped."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
_PR_SET_PDEATHSIG = 1
# Looked up before any fork: the child should only call it, not load a library.
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the harness still stops what it started
    _prctl = None


class StackError(RuntimeError):
    """A process of the stack could not be started, exited early or did not answer in time."""


def process_env(base: Mapping[str, str]) -> dict[str, str]:
    """`base` with this venv's bin first on PATH (the Procfile names bare `gunicorn`, `celery`)
    and the checkout on PYTHONPATH (apps that are not installed, such as bench.floor_app)."""
    env = dict(base)
    env["PATH"] = os.pathsep.join(filter(None, [str(VENV_BIN), env.get("PATH")]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel SIGTERMs it if the harness dies without cleaning up."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _preexec(then: Callable[[], None] | None) -> Callable[[], None]:
    """`then` (e.g. drop root for PostgreSQL), then die with the parent: a change of user
    clears the parent-death signal, so it is set last."""
    if then is None:
        return _die_with_parent

    def both() -> None:
        then()
        _die_with_parent()
    return both


class Process(subprocess.Popen):
    """A child in its own session, so a stop reaches its whole group (gunicorn's workers, prefork's
    pool children) and a Ctrl-C at the terminal does not; its output goes to `log_path`."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: Mapping[str, str],
                 hostname: str = "", preexec: Callable[[], None] | None = None):
        self.name = name
        self.log_path = log_path
        self.hostname = hostname  # a Celery worker's node name, to ping it
        self._terminated = False
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            super().__init__(argv, cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=_preexec(preexec))

    def signal_group(self, sig: int) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def shutdown(self) -> None:
        """SIGTERM the group once (a second one could turn Celery's warm shutdown into a cold one)."""
        if self.poll() is None and not self._terminated:
            self._terminated = True
            self.signal_group(signal.SIGTERM)

    def stop(self, grace: float = 15.0) -> int:
        """SIGTERM (warm shutdown), then SIGKILL whatever is left of the group after `grace` seconds."""
        self.shutdown()
        with suppress(subprocess.TimeoutExpired):
            self.wait(timeout=grace)
        self.signal_group(signal.SIGKILL)  # also pool children that outlived their parent
        return self.wait()

    def check_alive(self) -> None:
        if self.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise StackError(f"{self.name} exited with {self.returncode} (log {self.log_path}):\n{tail}")

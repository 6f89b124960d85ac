"""`payouts-worker ARGS`: `celery -A payouts_tasks worker ARGS`, once per core (WORKER_PROCESSES);
`payouts-worker --webhooks ARGS`: the one webhook worker process (see `role`).

A gevent worker runs all its greenlets in one process, so it uses one core, and Celery has no pool
that runs several gevent processes (docs/BENCHMARKS.md, scale-1w / scale-2w). This
launcher starts WORKER_PROCESSES workers and supervises them as gunicorn's arbiter does its
workers. With one process it execs celery itself, so that worker is exactly the process
`celery ... worker` is. It never imports gevent (each child patches itself at its start) and
keeps nothing but its children.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from celery.utils.nodenames import host_format

from payouts_core.logs import configure_logging
from payouts_core.settings import Settings, SettingsError
from payouts_tasks.routing import WEBHOOK_QUEUE

log = logging.getLogger(__name__)

CELERY_WORKER = ("-A", "payouts_tasks", "worker")
WEBHOOKS_FLAG = "--webhooks"
# Forwarded one for one: SIGTERM is Celery's warm shutdown, SIGINT warm then cold, SIGQUIT cold.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# A dead child's first restart waits this long; the wait doubles while it keeps dying young (a
# crash loop does not hammer the broker), and starts over once a child lived HEALTHY_AFTER_S.
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
# How often exited children are looked for (signals are forwarded at once, not on this tick).
POLL_S = 0.2
# click's usage error and EX_USAGE: the command line is wrong, a restart cannot help.
USAGE_EXIT_CODES = (2, 64)
_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: children may outlive a SIGKILLed launcher
    _prctl = None


def celery_command() -> list[str]:
    """The `celery` of this interpreter's environment (the venv's, the image's), not PATH's."""
    script = Path(sys.executable).with_name("celery")
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "celery"]
    return [*base, *CELERY_WORKER]


def split_hostname(args: list[str]) -> tuple[list[str], str | None]:
    """`args` without their `--hostname`/`-n` option, and its value (None when absent)."""
    rest, hostname = [], None
    words = iter(args)
    for arg in words:
        if arg in ("--hostname", "-n"):
            hostname = next(words, None)
        elif arg.startswith("--hostname="):
            hostname = arg.partition("=")[2]
        elif arg.startswith("-n") and not arg.startswith("--"):
            hostname = arg[2:]
        else:
            rest.append(arg)
    return rest, hostname


def child_hostnames(hostname: str | None, processes: int) -> list[str]:
    """The node names the workers answer pings with: `hostname` itself for one process, else
    `w<i>.<hostname>` (`w<i>@%h` without one), so that no two share a name."""
    if processes == 1 and hostname:
        return [hostname]
    return [f"w{i}.{hostname}" if hostname else f"w{i}@%h" for i in range(1, processes + 1)]


@dataclass
class Child:
    """One slot of the launcher: its worker's command line and the process now running it."""

    hostname: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None


def _in_child(parent: int) -> None:
    """Runs in each child before exec: signals unblocked (the mask survives exec), and a SIGKILL
    from the kernel when the launcher dies, so a SIGKILL of the launcher (a harness's, a
    supervisor's after its grace period, the OOM killer's) takes the workers with it."""
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)


class Supervisor:
    """Starts the children, forwards the stop signals to them, restarts one that died unasked."""

    def __init__(self, children: list[Child]):
        self.children = children
        self.stopping: int | None = None  # the first stop signal
        self.exit_code = 0

    def run(self) -> int:
        for sig in FORWARDED:
            signal.signal(sig, self._forward)
        for child in self.children:
            self._start(child)
        log.info("started %d worker processes", len(self.children),
                 extra={"processes": len(self.children), "hostnames": [c.hostname for c in self.children],
                        "pids": [c.proc.pid for c in self.children if c.proc]})
        announced = False
        while any(c.proc or (c.restart_at and not self.stopping) for c in self.children):
            if self.stopping and not announced:
                announced = True
                log.info("%s: stopping the worker processes", signal.Signals(self.stopping).name)
            self._reap()
            self._restart_due()
            time.sleep(POLL_S)
        log.info("all worker processes exited", extra={"exit_code": self.exit_code})
        return self.exit_code

    def _forward(self, signum: int, _frame) -> None:
        """Each child sits in a process group of its own, so a signal to the launcher's group
        (Ctrl-C, honcho, a harness) reaches it once, from here: Celery counts SIGINTs."""
        self.stopping = self.stopping or signum
        for child in self.children:
            child.restart_at = None
            if child.proc is not None:
                child.proc.send_signal(signum)  # a no-op for a child already reaped

    def _start(self, child: Child) -> None:
        # Blocked meanwhile: a stop signal arriving now is forwarded to this child too, on unblock.
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            parent = os.getpid()
            child.proc = subprocess.Popen(child.argv, env=child.env, process_group=0,
                                          preexec_fn=lambda: _in_child(parent))
            child.started = time.monotonic()
            child.restart_at = None
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)

    def _reap(self) -> None:
        for child in self.children:
            if child.proc is None or child.proc.poll() is None:
                continue
            code, pid = child.proc.returncode, child.proc.pid
            child.proc = None
            facts = {"worker": child.hostname, "pid": pid, "exit": _describe(code)}
            if self.stopping:
                if code != 0 and not self.exit_code:
                    self.exit_code = code if code > 0 else 128 - code
                log.info("worker process %s exited (%s)", child.hostname, facts["exit"], extra=facts)
            elif code == 0:  # asked to stop by other means (celery control shutdown): stays stopped
                log.info("worker process %s stopped on its own, not restarted", child.hostname,
                         extra=facts)
            elif code in USAGE_EXIT_CODES:
                log.error("worker process %s refused its command line (%s): stopping", child.hostname,
                          facts["exit"], extra=facts)
                self.exit_code = code
                self._forward(signal.SIGTERM, None)
            else:
                if time.monotonic() - child.started >= HEALTHY_AFTER_S:
                    child.failures = 0
                delay = min(RESTART_BACKOFF_S * 2 ** child.failures, RESTART_BACKOFF_MAX_S)
                child.failures += 1
                child.restart_at = time.monotonic() + delay
                log.warning("worker process %s died (%s): restarting it in %.0f s", child.hostname,
                            facts["exit"], delay, extra={**facts, "restart_in_s": delay})

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None and child.restart_at <= now and not self.stopping:
                self._start(child)
                log.info("worker process %s restarted", child.hostname,
                         extra={"worker": child.hostname, "pid": child.proc.pid})


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def child_env(env: dict[str, str], settings: Settings, index: int) -> dict[str, str]:
    """Child `index` (from 1) serves its Prometheus metrics on the configured port + index - 1,
    so every worker on the machine has an exporter (the first one alone would get the port)."""
    port = settings.worker_metrics_port
    if port and port + settings.worker_processes - 1 <= 65535:
        env = {**env, "PAYOUTS_WORKER_METRICS_PORT": str(port + index - 1)}
    return env


def webhook_worker_env(env: dict[str, str], settings: Settings) -> dict[str, str]:
    """The webhook worker serves its metrics on PAYOUTS_WEBHOOK_METRICS_PORT, not on the first
    settlement worker's port: on one machine, as `make run` starts them, none takes another's."""
    return {**env, "PAYOUTS_WORKER_METRICS_PORT": str(settings.webhook_metrics_port)}


def role(args: list[str], settings: Settings) -> tuple[list[str], int]:
    """(celery worker arguments, processes) for the Procfile's two worker lines.

    `--webhooks`: the webhook worker, one process of PAYOUTS_WEBHOOK_CONCURRENCY greenlets on the
    webhooks queue only. Otherwise a settlement worker, WORKER_PROCESSES processes on every queue
    but the webhooks one, so a slow receiver never holds a settlement greenlet (issue 20); a
    command line that names its own queues (-Q) is left as it is.
    """
    if WEBHOOKS_FLAG in args:
        rest = [a for a in args if a != WEBHOOKS_FLAG]
        return [*rest, "--queues", WEBHOOK_QUEUE, "--concurrency", str(settings.webhook_concurrency)], 1
    if any(a in ("-Q", "--queues") or a.startswith(("-Q", "--queues=")) for a in args):
        return args, settings.worker_processes
    return [*args, "--exclude-queues", WEBHOOK_QUEUE], settings.worker_processes


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"payouts-worker: {exc}", file=sys.stderr)
        return 2
    command = celery_command()
    webhooks = WEBHOOKS_FLAG in args
    args, processes = role(args, settings)
    if processes == 1:
        env = webhook_worker_env(dict(os.environ), settings) if webhooks else os.environ
        os.execvpe(command[0], [*command, *args], env)  # no parent left: the worker is this process
    configure_logging(settings.log_level, settings.log_format)
    rest, hostname = split_hostname(args)
    # Expanded here as Celery would (%h, %n, %d), so the launcher's log names the nodes Flower shows.
    names = [host_format(name) for name in child_hostnames(hostname, processes)]
    children = [Child(name, [*command, *rest, "--hostname", name], child_env(dict(os.environ), settings, i))
                for i, name in enumerate(names, start=1)]
    return Supervisor(children).run()


if __name__ == "__main__":
    sys.exit(main())

"""payouts-worker (issue 12): one Celery worker process per core, real processes on a private Redis.

The Procfile's worker line is the launcher; payouts_devstack starts it as production does, with
WORKER_PROCESSES from its `processes` argument. Timeouts here only bound the waits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery

from payouts_core.settings import Settings
from payouts_devstack import Stack, StackError
from payouts_tasks.worker_processes import child_env, child_hostnames, split_hostname
from tests.conftest import wait_for

VENV_BIN = Path(sys.executable).parent


def pids_by_hostname(stack: Stack, hostnames: list[str]) -> dict[str, int]:
    """The pid each of these workers reports in `celery inspect stats` (those that answer)."""
    control = Celery("test-control", broker=stack.env.get("CELERY_BROKER_URL") or stack.redis_url)
    try:
        replies = control.control.inspect(destination=hostnames, timeout=1).stats() or {}
    finally:
        control.close()
    return {name: stats["pid"] for name, stats in replies.items()}


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_two_processes_answer_a_killed_one_comes_back_and_sigterm_stops_them_all(tmp_path):
    with Stack(tmp_path) as stack:
        stack.start_redis()
        launcher = stack.start_worker(concurrency=5, processes=2)  # returns once both answer
        assert len(launcher.hostnames) == 2
        assert all(name.endswith("." + launcher.hostname) for name in launcher.hostnames)
        pids = pids_by_hostname(stack, launcher.hostnames)
        assert set(pids) == set(launcher.hostnames) and len(set(pids.values())) == 2
        assert launcher.pid not in pids.values()
        assert all(parent_of(pid) == launcher.pid for pid in pids.values())
        assert b"payouts-worker" in Path(f"/proc/{launcher.pid}/cmdline").read_bytes()

        victim, survivor = launcher.hostnames
        os.kill(pids[victim], signal.SIGKILL)

        def new_pid() -> int | None:
            pid = pids_by_hostname(stack, [victim]).get(victim)
            return pid if pid not in (None, pids[victim]) else None

        replaced = wait_for(new_pid, 90, f"{victim} answering again from a new process")
        assert parent_of(replaced) == launcher.pid
        assert pids_by_hostname(stack, [survivor]) == {survivor: pids[survivor]}  # left alone

        launcher.send_signal(signal.SIGTERM)  # the launcher only, as `docker stop` sends it
        assert launcher.wait(timeout=60) == 0
        assert not alive(replaced) and not alive(pids[survivor])
        log = launcher.log_path.read_text()
        assert f"worker process {victim} died (killed by SIGKILL): restarting it" in log
        assert "SIGTERM: stopping the worker processes" in log and "all worker processes exited" in log
        assert os.environ["PAYOUTS_API_KEY"] not in log


def test_a_sigkilled_launcher_takes_its_workers_with_it(tmp_path):
    """What a supervisor's SIGKILL after its grace period (or the OOM killer) does: no orphans."""
    with Stack(tmp_path) as stack:
        stack.start_redis()
        launcher = stack.start_worker(concurrency=5, processes=2)
        children = list(pids_by_hostname(stack, launcher.hostnames).values())
        assert len(children) == 2
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=10)
        wait_for(lambda: not any(alive(pid) for pid in children), 30, "the workers gone")


def test_ctrl_c_to_the_group_reaches_each_worker_once(tmp_path):
    """A terminal's Ctrl-C signals the whole foreground group; Celery takes a second SIGINT as a
    cold shutdown, so the children (in groups of their own) get it once, from the launcher."""
    with Stack(tmp_path) as stack:
        stack.start_redis()
        launcher = stack.start_worker(concurrency=5, processes=2)
        children = list(pids_by_hostname(stack, launcher.hostnames).values())
        os.killpg(launcher.pid, signal.SIGINT)
        assert launcher.wait(timeout=60) == 1  # Celery's exit code after a Ctrl-C, as one worker's
        assert not any(alive(pid) for pid in children)
        log = launcher.log_path.read_text()
        assert log.count("worker: Warm shutdown (MainProcess)") == 2 and "Cold shutdown" not in log


def test_one_process_is_celery_itself(tmp_path):
    """WORKER_PROCESSES=1: the launcher execs celery, so the process a harness (or the fault
    suite) signals and kills is the worker, with the hostname it was given."""
    with Stack(tmp_path) as stack:
        stack.start_redis()
        worker = stack.start_worker(concurrency=5)
        assert worker.hostnames == [worker.hostname]
        assert pids_by_hostname(stack, [worker.hostname]) == {worker.hostname: worker.pid}
        assert parent_of(worker.pid) == os.getpid()
        cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().split(b"\0")
        assert str(VENV_BIN / "celery").encode() in cmdline and b"payouts-worker" not in b" ".join(cmdline)


def test_a_refused_command_line_stops_the_launcher_instead_of_restarting(tmp_path):
    with Stack(tmp_path) as stack, pytest.raises(StackError, match="exited with 2"):
        stack.start_worker(pool="no-such-pool", processes=2, timeout=60)


def test_a_bad_setting_is_refused_before_any_worker_starts():
    done = subprocess.run([str(VENV_BIN / "payouts-worker"), "--pool", "solo"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "WORKER_PROCESSES": "0"})
    assert done.returncode == 2
    assert "WORKER_PROCESSES must be >= 1" in done.stderr


def test_launcher_never_imports_gevent():
    """Each child patches itself at start; a patched launcher would hand its children a patched
    interpreter state (and gain nothing)."""
    code = "import sys, payouts_tasks.worker_processes; print('gevent' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(("args", "hostname"), [
    (["--pool", "gevent", "--hostname", "a@b"], "a@b"),
    (["--hostname=a@b", "--pool", "gevent"], "a@b"),
    (["-n", "a@b", "--pool", "gevent"], "a@b"),
    (["-na@b", "--pool", "gevent"], "a@b"),
    (["--pool", "gevent"], None),
])
def test_hostname_is_taken_out_of_the_arguments(args, hostname):
    assert split_hostname(args) == (["--pool", "gevent"], hostname)


def test_child_hostnames_are_distinct_and_one_process_keeps_its_name():
    assert child_hostnames("a@b", 1) == ["a@b"]
    assert child_hostnames("a@b", 3) == ["w1.a@b", "w2.a@b", "w3.a@b"]
    assert child_hostnames(None, 2) == ["w1@%h", "w2@%h"]


def test_each_child_gets_its_own_metrics_port():
    settings = Settings.from_env({"WORKER_PROCESSES": "3", "PAYOUTS_WORKER_METRICS_PORT": "9808"})
    assert [child_env({}, settings, i)["PAYOUTS_WORKER_METRICS_PORT"] for i in (1, 2, 3)] == \
        ["9808", "9809", "9810"]
    off = Settings.from_env({"WORKER_PROCESSES": "3", "PAYOUTS_WORKER_METRICS_PORT": "0"})
    assert child_env({"A": "1"}, off, 2) == {"A": "1"}



# --- issue 20: the settlement and webhook roles ---------------------------------------------------

def test_settlement_workers_never_consume_webhooks_and_the_webhook_worker_only_them():
    from payouts_core.settings import Settings
    from payouts_tasks.routing import WEBHOOK_QUEUE
    from payouts_tasks.worker_processes import role

    settings = Settings.from_env({"WORKER_PROCESSES": "3", "PAYOUTS_WEBHOOK_CONCURRENCY": "40"})

    assert role(["--pool", "gevent"], settings) == (
        ["--pool", "gevent", "--exclude-queues", WEBHOOK_QUEUE], 3)
    assert role(["--webhooks", "--pool", "gevent"], settings) == (
        ["--pool", "gevent", "--queues", WEBHOOK_QUEUE, "--concurrency", "40"], 1)
    assert role(["-Q", "celery"], settings) == (["-Q", "celery"], 3)  # chosen by hand: as given


def test_the_webhook_worker_serves_metrics_beside_the_others_not_on_their_ports():
    """Settlement processes on 9808, 9809; the archiver on 9807; the webhook worker on 9806."""
    from payouts_tasks.worker_processes import webhook_worker_env

    settings = Settings.from_env({"WORKER_PROCESSES": "2", "PAYOUTS_WORKER_METRICS_PORT": "9808"})
    assert webhook_worker_env({"A": "1"}, settings) == {"A": "1", "PAYOUTS_WORKER_METRICS_PORT": "9806"}
    off = Settings.from_env({"PAYOUTS_WEBHOOK_METRICS_PORT": "0"})
    assert webhook_worker_env({"A": "1"}, off) == {"A": "1", "PAYOUTS_WORKER_METRICS_PORT": "0"}

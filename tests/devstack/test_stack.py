"""payouts_devstack: Procfile lines as argv, and a stack that starts, answers and leaves nothing."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from payouts_devstack import Stack, StackError, procfile_command
from payouts_devstack.procfile import set_option

VENV_BIN = Path(sys.executable).parent


def test_worker_line_expands_env_and_defaults_and_takes_options():
    env = {"PATH": str(VENV_BIN)}
    argv = procfile_command("worker", env, {"--pool": "solo", "--hostname": "a@b"}, ["--without-gossip"])

    assert argv[0] == str(VENV_BIN / "payouts-worker")  # celery -A payouts_tasks worker, per core
    assert argv[argv.index("--loglevel") + 1] == "info"  # ${LOG_LEVEL:-info}, LOG_LEVEL unset
    assert argv.count("--pool") == 1 and argv[argv.index("--pool") + 1] == "solo"
    assert argv[-3:] == ["--hostname", "a@b", "--without-gossip"]
    debug = procfile_command("worker", {**env, "LOG_LEVEL": "debug"})
    assert debug[debug.index("--loglevel") + 1] == "debug"


def test_api_bind_is_replaced_not_repeated():
    """gunicorn binds every --bind it is given: a second one would take the production port."""
    argv = procfile_command("api", {"PORT": "9999"}, {"--bind": "127.0.0.1:1234"})

    assert argv.count("--bind") == 1 and argv[argv.index("--bind") + 1] == "127.0.0.1:1234"
    assert "payouts_api:create_app()" in argv


def test_set_option_handles_the_equals_form():
    assert set_option(["flower", "--port=5555"], "--port", "1") == ["flower", "--port=1"]
    assert set_option(["x"], "--port", "1") == ["x", "--port", "1"]


def test_shell_lines_and_unknown_names_are_refused():
    with pytest.raises(StackError, match="honcho"):
        procfile_command("flower", {})  # a guard, `&&` and `exec`: honcho runs it under sh
    with pytest.raises(StackError, match="no 'nope' process"):
        procfile_command("nope", {})


def test_stack_starts_redis_api_worker_and_beat_and_leaves_nothing_running(tmp_path):
    with Stack(tmp_path) as stack:
        redis_proc = stack.start_redis()
        assert stack.env["REDIS_URL"] == stack.redis_url != os.environ["REDIS_URL"]
        assert redis.Redis.from_url(stack.redis_url).ping()
        api = stack.start_api()
        worker = stack.start_worker(concurrency=5)
        beat = stack.start_beat()
        assert requests.get(f"{stack.api_url}/healthz", timeout=5).ok
        assert f"{worker.hostname}" in worker.log_path.read_text()  # its own log, by name
        groups = [p.pid for p in (api, worker, beat, redis_proc)]
        members = _group_members(groups)
        assert len(members) > len(groups)  # gunicorn's workers are in the API's group

    assert all(p.poll() is not None for p in (api, worker, beat, redis_proc))
    assert _group_members(groups) == []
    assert not stack.processes


def test_a_worker_that_exits_at_start_raises_with_its_log(tmp_path):
    with Stack(tmp_path) as stack, pytest.raises(StackError, match="exited") as failed:
        stack.start_worker(pool="no-such-pool", timeout=30)
    assert "no-such-pool" in str(failed.value)


def _group_members(pgids: list[int]) -> list[int]:
    """Live processes in any of these process groups."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in pgids and fields[0] != "Z":
            found.append(int(entry))
    return found


def test_stop_kills_what_ignores_sigterm(tmp_path):
    with Stack(tmp_path) as stack:
        ignore_term = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                       "print('ignoring', flush=True); time.sleep(60)")
        stubborn = stack.spawn("stubborn", [sys.executable, "-c", ignore_term])
        while "ignoring" not in stubborn.log_path.read_text():
            time.sleep(0.01)
        stack.stop([stubborn], grace=0.5)
    assert stubborn.returncode == -signal.SIGKILL
    assert _group_members([stubborn.pid]) == []


def test_a_private_postgres_dies_with_a_harness_that_dies_without_cleaning_up(tmp_path):
    """PostgreSQL runs as another user when we are root; the parent-death signal must survive
    that change of user, or a killed test run leaves servers behind."""
    import subprocess
    import sys
    import time

    script = (
        "import os; from pathlib import Path\n"
        "from payouts_devstack.postgres_server import start_postgres\n"
        "from payouts_devstack import free_port\n"
        f"p = start_postgres(free_port(), Path({str(tmp_path)!r}) / 'pg')\n"
        "print(p.pid, flush=True)\n"
        "os._exit(0)\n")
    pid = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True, timeout=60).stdout.split()[-1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    raise AssertionError("postgres outlived the harness that started it")

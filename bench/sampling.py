"""Resource use of the run's processes: peak RSS and CPU seconds per role, read from /proc.

RSS is sampled every 200 ms in a thread while a window is open; CPU is the difference of
utime + stime at its ends (and, from the same samples, over any part of the window:
`Sampler.cpu_between`). Linux only, no dependency beyond the standard library.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from `state` on; comm may hold spaces


def _tree(root: int) -> list[int]:
    """root and all its descendants, from the ppid of every process in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        if fields := _stat(pid):
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / _TICK


def _wait_seconds(pids: list[int]) -> float:
    """Seconds the processes' threads spent runnable but waiting for a CPU (schedstat's second
    field): a process slowed by a busy machine, not by its own work, shows it here."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
    return total / 1e9


def _machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _TICK


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Usage:
    """Peak RSS (sum over a role's process trees, and of its largest process) and CPU seconds."""

    rss_peak: dict[str, int] = field(default_factory=dict)
    rss_proc_peak: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)


class Sampler:
    """Samples the RSS of each role's processes every `interval` s while a window is open."""

    def __init__(self, roles, interval: float = 0.2):
        self._roles = roles  # callable -> {role: [root pids]}, read at each sample
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.usage = Usage()
        self.redis_ops = None  # a bench.redis_ops.RedisOps when the window also counts Redis commands
        # (epoch s, CPU s per role, machine busy s, run-queue wait s per role) at each sample
        self.cpu_series: list[tuple[float, dict[str, float], float, dict[str, float]]] = []
        self._cpu_start: dict[str, float] = {}
        self._wall_start = 0.0

    def _trees(self) -> dict[str, list[int]]:
        return {role: [p for root in roots for p in _tree(root)] for role, roots in self._roles().items()}

    def _sample(self) -> None:
        trees = self._trees()
        for role, pids in trees.items():
            sizes = [_rss(p) for p in pids]
            self.usage.rss_peak[role] = max(self.usage.rss_peak.get(role, 0), sum(sizes))
            self.usage.rss_proc_peak[role] = max(self.usage.rss_proc_peak.get(role, 0), max(sizes, default=0))
        self.cpu_series.append((time.time(), {role: _cpu_seconds(pids) for role, pids in trees.items()},
                                _machine_busy_seconds(),
                                {role: _wait_seconds(pids) for role, pids in trees.items()}))

    def cpu_between(self, start: float, end: float) -> dict[str, float] | None:
        """CPU % of a core per role, and of the whole machine, between two epoch times (the
        samples around them, 200 ms apart): what the processes used in part of the window;
        `<role>_wait`: % of the window its threads were runnable but waited for a CPU."""
        before = [s for s in self.cpu_series if s[0] <= start]
        after = [s for s in self.cpu_series if s[0] >= end]
        if not before or not after:
            return None
        (t0, roles0, busy0, wait0), (t1, roles1, busy1, wait1) = before[-1], after[0]
        wall = max(t1 - t0, 1e-9)
        pct = {role: round(100 * (roles1[role] - roles0[role]) / wall) for role in roles1 if role in roles0}
        waits = {f"{role}_wait": round(100 * (wait1[role] - wait0[role]) / wall)
                 for role in wait1 if role in wait0}
        return {**pct, **waits, "machine": round(100 * (busy1 - busy0) / wall), "seconds": round(wall, 2)}

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> Sampler:
        self._cpu_start = {role: _cpu_seconds(pids) for role, pids in self._trees().items()}
        self._cpu_start.update(bench=_own_cpu_seconds(), machine=_machine_busy_seconds())
        self._wall_start = time.monotonic()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample()
        wall = max(time.monotonic() - self._wall_start, 1e-9)
        now = {role: _cpu_seconds(pids) for role, pids in self._trees().items()}
        now.update(bench=_own_cpu_seconds(), machine=_machine_busy_seconds())
        used = {role: now[role] - self._cpu_start.get(role, 0.0) for role in now}
        # Whatever else ran on the machine meanwhile (other users' tests): the noise in this window.
        used["other"] = max(0.0, used["machine"] - sum(v for k, v in used.items() if k != "machine"))
        for role, seconds in used.items():
            self.usage.cpu_s[role] = round(seconds, 2)
            self.usage.cpu_s[f"{role}_pct"] = round(100 * seconds / wall)

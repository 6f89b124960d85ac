"""Redis operations per item, for a saturation model: what one scenario cost the run's Redis.

`INFO commandstats`, `INFO stats` and `INFO cpu` of the bench's private Redis are read when a
scenario's measuring window opens and when it closes; the difference is divided by the scenario's
units (items settled, or GET requests). Server-wide, so it counts every client of that Redis in
the window: API, workers (their idle `BRPOP`s included), the harness's own polls and, for the
floor, database 1. The snapshots' own `INFO` calls are left out. Redis 7 counts the commands a Lua
script (EVALSHA) or a MULTI/EXEC runs as commands of their own, so "commands" is the work Redis
did, not the round trips clients made; CPU seconds and network bytes per unit are the figures that
saturate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import redis

# Left out of the counts: the measurement itself.
_OWN = {"info"}


def _snapshot(client: redis.Redis) -> dict:
    commands = {name.removeprefix("cmdstat_"): (int(stat["calls"]), int(stat["usec"]))
                for name, stat in client.info("commandstats").items()}
    stats, cpu = client.info("stats"), client.info("cpu")
    return {"commands": commands, "total": int(stats["total_commands_processed"]),
            "net_in": int(stats["total_net_input_bytes"]), "net_out": int(stats["total_net_output_bytes"]),
            "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            "at": time.monotonic()}


@dataclass
class RedisOps:
    """The difference between two snapshots; `per_unit` once the scenario knows its units."""

    seconds: float = 0.0
    commands: int = 0  # calls over the window, without the snapshots' INFO
    total_commands_processed: int = 0  # INFO stats delta (also without INFO)
    cpu_s: float = 0.0
    command_us: int = 0  # time Redis spent inside the commands (commandstats usec)
    net_in_bytes: int = 0
    net_out_bytes: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    usec: dict[str, int] = field(default_factory=dict)  # time inside each command (the model's split)
    peak_ops_per_s: int | None = None  # highest INFO stats instantaneous_ops_per_sec seen in the window

    def per_unit(self, units: int, unit: str = "item") -> dict:
        """JSON-ready: totals and per-unit figures, the commands sorted by calls."""
        data = {"unit": unit, "units": units, "seconds": round(self.seconds, 2),
                "commands": self.commands, "total_commands_processed": self.total_commands_processed,
                "cpu_s": round(self.cpu_s, 3), "command_us": self.command_us,
                "net_in_bytes": self.net_in_bytes, "net_out_bytes": self.net_out_bytes,
                "avg_ops_per_s": round(self.commands / self.seconds) if self.seconds else None,
                "peak_ops_per_s": self.peak_ops_per_s,
                "cpu_pct": round(100 * self.cpu_s / self.seconds) if self.seconds else None,
                "calls": dict(sorted(self.calls.items(), key=lambda kv: -kv[1])),
                "usec": dict(sorted(self.usec.items(), key=lambda kv: -kv[1]))}
        if units:
            data.update(
                commands_per_unit=round(self.commands / units, 2),
                calls_per_unit={k: round(v / units, 3) for k, v in data["calls"].items()},
                usec_per_unit={k: round(v / units, 1) for k, v in data["usec"].items()},
                cpu_us_per_unit=round(1e6 * self.cpu_s / units, 1),
                command_us_per_unit=round(self.command_us / units, 1),
                net_in_bytes_per_unit=round(self.net_in_bytes / units),
                net_out_bytes_per_unit=round(self.net_out_bytes / units),
                # One Redis runs commands on one core: the rate it would carry at 100 % of it.
                units_per_s_at_one_core=round(units / self.cpu_s) if self.cpu_s > 0 else None)
        return data


class RedisOpsMeter:
    """Snapshots around a window, and instantaneous ops/s sampled every `interval` s within it."""

    def __init__(self, url: str, interval: float = 0.5):
        self._url, self._interval = url, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self._start: dict = {}
        self.ops = RedisOps()

    def _sample_ops(self, client: redis.Redis) -> None:
        try:
            ops = int(client.info("stats")["instantaneous_ops_per_sec"])
        except redis.RedisError:
            return
        self.ops.peak_ops_per_s = max(self.ops.peak_ops_per_s or 0, ops)

    def _poll(self) -> None:
        client = redis.Redis.from_url(self._url)
        try:
            while not self._stop.wait(self._interval):
                self._sample_ops(client)
        finally:
            client.close()

    def __enter__(self) -> RedisOpsMeter:
        self._client = redis.Redis.from_url(self._url)
        self._start = _snapshot(self._client)
        self._thread = threading.Thread(target=self._poll, name="bench-redis-ops", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        try:
            self._sample_ops(self._client)  # Redis's own estimate over its last ~1.6 s
            end = _snapshot(self._client)
        except redis.RedisError:
            return  # Redis gone (an interrupted run): no figures rather than wrong ones
        finally:
            self._client.close()
        before = self._start["commands"]
        calls = {name: calls - before.get(name, (0, 0))[0]
                 for name, (calls, _) in end["commands"].items()}
        own = sum(calls.pop(name, 0) for name in list(calls) if name in _OWN)
        calls = {name: n for name, n in calls.items() if n > 0}
        self.ops.seconds = end["at"] - self._start["at"]
        self.ops.calls = calls
        self.ops.commands = sum(calls.values())
        self.ops.total_commands_processed = end["total"] - self._start["total"] - own
        self.ops.cpu_s = end["cpu_s"] - self._start["cpu_s"]
        self.ops.net_in_bytes = end["net_in"] - self._start["net_in"]
        self.ops.net_out_bytes = end["net_out"] - self._start["net_out"]
        usec = {name: spent - before.get(name, (0, 0))[1]
                for name, (_, spent) in end["commands"].items() if name not in _OWN}
        self.ops.usec = {name: us for name, us in usec.items() if us > 0}
        self.ops.command_us = sum(self.ops.usec.values())

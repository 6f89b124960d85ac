"""A bounded GET load on loopback: wrk when installed, else Python threads (slower, noted as such)."""

from __future__ import annotations

import http.client
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.report import percentile

# wrk reports p50/p95 and error counts from its own histogram through this `done` hook.
_WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass
class LoadResult:
    tool: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p95_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_load(url: str, seconds: float, headers: dict[str, str], connections: int = 32) -> LoadResult:
    if shutil.which("wrk"):
        return _wrk(url, seconds, headers, connections)
    return _python_load(url, seconds, headers, min(connections, 16))


def _wrk(url: str, seconds: float, headers: dict[str, str], connections: int) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT)
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script.name,
             *(arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")), url],
            capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    finally:
        Path(script.name).unlink()
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH "))
    requests_, duration_us, p50_us, p95_us, errors = (int(x) for x in line.split()[1:])
    return LoadResult(f"wrk -t2 -c{connections}", requests_, duration_us / 1e6, errors,
                      p50_us / 1000, p95_us / 1000)


def _python_load(url: str, seconds: float, headers: dict[str, str], threads: int) -> LoadResult:
    parts = urlsplit(url)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def hammer() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        mine, failed = [], 0
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                conn.request("GET", parts.path, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failed += 1
            except (OSError, http.client.HTTPException):
                failed += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            mine.append(time.perf_counter() - start)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    started = time.perf_counter()
    workers = [threading.Thread(target=hammer, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    p50, p95 = (1000 * (percentile(latencies, q) or 0.0) for q in (0.50, 0.95))
    return LoadResult(f"python threads x{threads}", len(latencies), elapsed, errors[0], p50, p95)

"""Rows of results, the printed table and the JSON file."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

MB = 1024 * 1024


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of the values, or None without any."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Row:
    scenario: str
    items: int
    seconds: float | None = None
    items_per_s: float | None = None
    post_ms: list[float] = field(default_factory=list)
    get_ms: list[float] = field(default_factory=list)
    completed: bool = True
    batches: int = 0
    batches_completed: int = 0
    usage: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        data = asdict(self)
        for name, values in (("post", self.post_ms), ("get", self.get_ms)):
            data[f"{name}_p50_ms"] = _round(percentile(values, 0.50))
            data[f"{name}_p95_ms"] = _round(percentile(values, 0.95))
            data[f"{name}_count"] = len(values)
            del data[f"{name}_ms"]
        return data


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def machine_info(redis_url: str) -> dict:
    with open("/proc/meminfo") as meminfo:
        mem_kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    client = redis.Redis.from_url(redis_url)
    info = {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": client.info("server")["redis_version"],
        "wrk": _wrk_version(),
    }
    client.close()
    for package in ("celery", "kombu", "redis", "gevent", "gunicorn", "flask"):
        info[package] = version(package)
    return info


def code_state() -> dict:
    """Which code was measured: the commit, and the files changed on top of it (read-only git)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).resolve().parent.parent).stdout.strip()
        except OSError:
            return ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()
               if not line[3:].startswith(("bench/", "docs/BENCHMARKS.md", "tests/test_bench_quick.py"))]
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_files": changed}


def _wrk_version() -> str | None:
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
    except OSError:
        return None
    return (out.stdout + out.stderr).split()[1] if out.stdout + out.stderr else None


def _ms_pair(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
    return f"{p50:,.0f}" if len(values) == 1 else f"{p50:,.0f} / {p95:,.0f}"


def _mb(value: int | None) -> str:
    return "-" if not value else f"{value / MB:,.0f}"


def floor_ratios(rows: list[Row]) -> None:
    """Add 'N.NN x floor' to each product row once the floor's items/s is known."""
    floor = next((r for r in rows if r.scenario == "floor" and r.items_per_s), None)
    if floor is None:
        return
    for row in rows:
        if row.scenario not in ("floor", "get", "get-load") and row.items_per_s:
            ratio = row.items_per_s / floor.items_per_s
            row.extra["floor_ratio"] = round(ratio, 2)
            row.notes.insert(0, f"{ratio:.2f}x floor")


def render(rows: list[Row], console: Console | None = None) -> None:
    table = Table(title="payouts benchmark", show_lines=False)
    for name, justify in (("scenario", "left"), ("items", "right"), ("seconds", "right"),
                          ("items/s", "right"), ("POST p50/p95 ms", "right"),
                          ("GET p50/p95 ms", "right"), ("RSS API MB sum (max/proc)", "right"),
                          ("RSS worker MB (max/proc)", "right"), ("completed", "center"), ("notes", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for row in rows:
        usage = row.usage
        api = "-" if not usage.get("rss_peak", {}).get("api") else (
            f"{_mb(usage['rss_peak']['api'])} ({_mb(usage['rss_proc_peak']['api'])})")
        table.add_row(
            row.scenario, f"{row.items:,}",
            "-" if row.seconds is None else f"{row.seconds:,.1f}",
            "-" if row.items_per_s is None else f"{row.items_per_s:,.0f}",
            _ms_pair(row.post_ms), _ms_pair(row.get_ms), api,
            _mb(usage.get("rss_proc_peak", {}).get("worker")),
            ("yes" if row.completed else "NO")
            + (f" {row.batches_completed}/{row.batches}" if row.batches else ""),
            "; ".join(row.notes + row.problems),
        )
    (console or Console(width=200)).print(table)


def write_json(path: Path, rows: list[Row], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**meta, "all_completed": all(r.completed for r in rows),
            "rows": [r.as_json() for r in rows]}
    path.write_text(json.dumps(data, indent=2) + "\n")


def markdown(data: dict) -> str:
    """The table of a results JSON as Markdown, for docs/BENCHMARKS.md."""
    def pair(row: dict, name: str) -> str:
        p50, p95, count = row[f"{name}_p50_ms"], row[f"{name}_p95_ms"], row[f"{name}_count"]
        return "-" if p50 is None else f"{p50:,.0f}" if count == 1 else f"{p50:,.0f} / {p95:,.0f}"

    lines = ["| scenario | items | seconds | items/s | POST p50/p95 ms | GET p50/p95 ms "
             "| RSS API MB sum (max/proc) | RSS worker MB (max/proc) | completed | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:-:|---|"]
    for row in data["rows"]:
        usage = row["usage"]
        api = usage.get("rss_peak", {}).get("api")
        lines.append("| " + " | ".join([
            row["scenario"], f"{row['items']:,}",
            "-" if row["seconds"] is None else f"{row['seconds']:,.1f}",
            "-" if row["items_per_s"] is None else f"{row['items_per_s']:,.0f}",
            pair(row, "post"), pair(row, "get"),
            "-" if not api else f"{_mb(api)} ({_mb(usage['rss_proc_peak']['api'])})",
            _mb(usage.get("rss_proc_peak", {}).get("worker")),
            ("yes" if row["completed"] else "NO")
            + (f" {row['batches_completed']}/{row['batches']}" if row["batches"] else ""),
            "; ".join(row["notes"] + row["problems"]).replace("|", "/"),
        ]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m bench.report [results.json]: the table as Markdown
    import sys

    default = Path(__file__).resolve().parent / "results" / "latest.json"
    print(markdown(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else default).read_text())))

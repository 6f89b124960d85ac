"""Rows of results, the printed tables (scenarios, targets of issue 12, wall time against the
critical path, Redis operations per item) and the JSON file."""

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


# -- targets (issue 12) -------------------------------------------------------------------------

# Product rows (not the floor) whose worker RSS counts against the per-process cap.
_NOT_PRODUCT_WORKERS = ("floor",)


def _find(rows: list[Row], name: str) -> Row | None:
    return next((r for r in rows if r.scenario == name), None)


def evaluate_targets(rows: list[Row]) -> list[dict]:
    """Every target of issue 12 with the number measured in this run: met, missed, or not run
    (its scenario was not in the run). A row that ran but gave no number is missed."""
    targets: list[dict] = []

    def add(target: str, scenario: str, measured: str, value: float | None, met: bool | None) -> None:
        targets.append({"target": target, "scenario": scenario, "measured": measured,
                        "value": None if value is None else round(value, 3),
                        "status": "not run" if met is None else "met" if met else "missed"})

    def judged(row: Row | None, value: float | None, ok) -> bool | None:
        return None if row is None else bool(value is not None and ok(value))

    seed = _find(rows, "seed-profile")
    rate = seed.items_per_s if seed else None
    add("seed-profile >= 300 items/s", "seed-profile",
        "-" if seed is None else "no result" if rate is None else
        f"{rate:,.0f} items/s ({seed.extra.get('worker_processes', '?')} worker processes)",
        rate, judged(seed, rate, lambda v: v >= 300))

    # Issue 20 item 4: the same bound as the items/s target, stated as what it is (the batch
    # ends with its slowest item), on server-side times (bench/critical_path.py).
    path = seed.extra.get("critical_path", {}) if seed else {}
    ratio = path.get("ratio") if path.get("complete") else None
    add("seed-profile wall <= 1.15x its critical path", "seed-profile",
        "-" if seed is None else "no result" if ratio is None else
        f"{path['accepted_to_completed_s']:.2f} s accepted -> completed (server) = {ratio:.2f}x "
        f"{path['critical_path_s']:.2f} s (item {path['set_by']['index']}, "
        f"{path['set_by']['attempts']} attempts); client 202 -> completed "
        f"{_num(path.get('client_ratio'), '.2f')}x", ratio, judged(seed, ratio, lambda v: v <= 1.15))

    t95, t100 = (seed.extra.get("t95_s"), seed.extra.get("t100_s")) if seed else (None, None)
    tail = t100 / t95 if t95 and t100 else None
    add("seed-profile: 100 % of items done <= 1.3x the time 95 % are done", "seed-profile",
        "-" if seed is None else "no result" if tail is None else
        f"100 % at {t100:.1f} s, 95 % at {t95:.1f} s: {tail:.2f}x", tail,
        judged(seed, tail, lambda v: v <= 1.3))

    zero, floor = _find(rows, "zero-latency"), _find(rows, "floor")
    ratio = (zero.items_per_s / floor.items_per_s
             if zero and floor and zero.items_per_s and floor.items_per_s else None)
    add("zero-latency >= 0.8x the plain-Celery floor (same run)", "zero-latency, floor",
        "-" if zero is None or floor is None else "no result" if ratio is None else
        f"{zero.items_per_s:,.0f} items/s = {ratio:.2f}x floor ({floor.items_per_s:,.0f} items/s)",
        ratio, None if zero is None or floor is None else ratio is not None and ratio >= 0.8)

    post = _find(rows, "post-10k")
    p50 = percentile(post.post_ms, 0.5) / 1000 if post and post.post_ms else None
    add("post-10k POST p50 <= 1.0 s", "post-10k",
        "-" if post is None else "no result" if p50 is None else
        f"p50 {p50:.2f} s, p95 {percentile(post.post_ms, 0.95) / 1000:.2f} s "
        f"({len(post.post_ms)} POST{'s' if len(post.post_ms) != 1 else ''})",
        p50, judged(post, p50, lambda v: v <= 1.0))

    first = post.extra.get("first_final_p50_s") if post else None
    add("first item final <= 1 s after the 202 (p50 over the post-10k runs)", "post-10k",
        "-" if post is None else "not seen" if first is None else
        f"p50 {first:.2f} s (max {max(post.extra['first_final_s']):.2f} s; polled every 20 ms)",
        first, judged(post, first, lambda v: v <= 1.0))

    one, two = _find(rows, "scale-1w"), _find(rows, "scale-2w")
    speedup = two.extra.get("speedup_vs_1") if one and two else None
    add("scale: 2 worker processes >= 1.6x one on seed-profile", "scale-1w, scale-2w",
        "-" if one is None or two is None else "no result" if speedup is None else
        f"{two.items_per_s:,.0f} vs {one.items_per_s:,.0f} items/s = {speedup:.2f}x", speedup,
        None if one is None or two is None else speedup is not None and speedup >= 1.6)

    get = _find(rows, "get")
    get_p50 = percentile(get.get_ms, 0.5) if get else None
    add("GET p50 <= 100 ms on a 10,000-item report", "get",
        "-" if get is None else "no result" if get_p50 is None else
        f"p50 {get_p50:,.0f} ms, p95 {percentile(get.get_ms, 0.95):,.0f} ms ({get.items:,} items)",
        get_p50, judged(get, get_p50, lambda v: v <= 100))

    load = _find(rows, "get-load")
    rps = load.items_per_s if load else None
    add("small GET >= 1,500 req/s", "get-load",
        "-" if load is None else "no result" if rps is None else f"{rps:,.0f} req/s", rps,
        judged(load, rps, lambda v: v >= 1500))

    def peak(role: str, skip: tuple[str, ...] = ()) -> tuple[int | None, str]:
        found = [(r.usage.get("rss_proc_peak", {}).get(role) or 0, r.scenario) for r in rows
                 if r.scenario not in skip]
        found = [f for f in found if f[0]]
        return max(found) if found else (None, "")

    worker_rss, where = peak("worker", _NOT_PRODUCT_WORKERS)
    add("worker RSS <= 400 MB per process", "every product row",
        "no worker measured" if worker_rss is None else f"max {worker_rss / MB:,.0f} MB ({where})",
        None if worker_rss is None else worker_rss / MB,
        None if worker_rss is None else worker_rss <= 400 * MB)

    api_rss, where = peak("api")
    add("API RSS <= 200 MB per process", "every row",
        "no API measured" if api_rss is None else f"max {api_rss / MB:,.0f} MB ({where})",
        None if api_rss is None else api_rss / MB, None if api_rss is None else api_rss <= 200 * MB)

    for profile in ("zero", "seed"):  # issue 18: the ledger costs settlement at most 10 %
        on = _find(rows, f"ledger-on-{profile}")
        ratio = on.extra.get("ledger_ratio") if on else None
        add(f"ledger-{profile}: archiver running >= 0.9x the rate with it stopped (same run)",
            f"ledger-off-{profile}, ledger-on-{profile}",
            "-" if on is None else "no result" if ratio is None else f"{ratio:.2f}x", ratio,
            judged(on, ratio, lambda v: v >= 0.9))
    on = _find(rows, "ledger-on-zero")
    lag = on.extra.get("archive_lag_p99_le_s") if on else None
    add("archive lag p99 <= 5 s while settling at the zero-latency rate", "ledger-on-zero",
        "-" if on is None else "no result" if lag is None else
        f"p99 <= {lag} s (histogram bucket); oldest unarchived event at most "
        f"{on.extra.get('oldest_age_max_s', 0):.1f} s old", lag, judged(on, lag, lambda v: v <= 5))

    failed = [r.scenario for r in rows if not r.completed]
    batches = sum(r.batches for r in rows)
    add("no chord left incomplete", "every row",
        f"{sum(r.batches_completed for r in rows)}/{batches} batches completed and checked"
        + (f"; problems in {', '.join(failed)}" if failed else "; no open chord, brokers drained"),
        len(failed), bool(rows) and not failed)
    return targets


def render_targets(targets: list[dict], console: Console | None = None, quick: bool = False) -> None:
    title = "targets (issue 12), this run" + (
        " — --quick sizes: verdicts do not judge the product" if quick else "")
    table = Table(title=title)
    for name, justify in (("target", "left"), ("measured", "left"), ("", "center")):
        table.add_column(name, justify=justify, overflow="fold")
    for t in targets:
        style = {"met": "green", "missed": "red"}.get(t["status"], "dim")
        table.add_row(t["target"], t["measured"], f"[{style}]{t['status']}[/{style}]")
    (console or Console(width=200)).print(table)


# -- critical path (issue 20 item 4) ------------------------------------------------------------

_CRITICAL_COLUMNS = ("scenario", "items", "POST sent -> completed s (client)",
                     "202 -> completed s (client)", "accepted -> completed s (server)",
                     "critical path s", "wall / critical path (server; client)",
                     "set by: item, outcome, attempts, provider + backoff ms, first call at s",
                     "start bound s (max of first call + own path)",
                     "items' first call p50 / max s; items started /s",
                     "in flight peak / greenlets",
                     "% of a core while items start: workers' CPU (their wait for a CPU) / machine",
                     "95 % / 100 % final s (server)", "last final -> completed s")
_CRITICAL_ALIGN = "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"


def critical_rows(rows: list[dict]) -> list[list[str]]:
    """Cells of the critical-path table, from JSON rows (as_json) that carry `extra.critical_path`."""
    cells = []
    for row in rows:
        cp = row.get("extra", {}).get("critical_path")
        if not cp:
            continue
        head = [row["scenario"], f"{row['items']:,}", _num(cp.get("post_sent_to_completed_s"), ".2f"),
                _num(cp.get("accepted_202_to_completed_s"), ".2f")]
        if not cp.get("complete"):
            cells.append(head + ["-", "-", "-", "; ".join(cp.get("problems", []))]
                         + ["-"] * (len(_CRITICAL_COLUMNS) - len(head) - 4))
            continue
        by, cpu = cp["set_by"], cp.get("cpu_while_starting_pct") or {}
        cells.append(head + [
            _num(cp["accepted_to_completed_s"], ".2f"), _num(cp["critical_path_s"], ".2f"),
            f"{_num(cp['ratio'], '.2f')}x; {_num(cp.get('client_ratio'), '.2f')}x",
            f"#{by['index']} {by['outcome']}, {by['attempts']}, {by['provider_ms']:,} + "
            f"{by['backoff_ms']:,}, {_num(by['first_call_s'], '.2f')}",
            _num(cp.get("start_bound_s"), ".2f"),
            f"{_num(cp['start_s']['p50'], '.2f')} / {_num(cp['start_s']['max'], '.2f')}; "
            f"{_num(cp.get('dispatch_per_s'))}",
            f"{_num(cp.get('in_flight_peak'))} / {_num(cp.get('slots'))}",
            f"{_num(cpu.get('worker'))} ({_num(cpu.get('worker_wait'))}) / {_num(cpu.get('machine'))}"
            if cpu else "-",
            f"{_num(cp['t95_s'], '.2f')} / {_num(cp['t100_s'], '.2f')}",
            _num(cp["completion_lag_s"], ".2f")])
    return cells


def render_critical(rows: list[Row], console: Console | None = None) -> None:
    cells = critical_rows([{"scenario": r.scenario, "items": r.items, "extra": r.extra} for r in rows])
    if not cells:
        return
    table = Table(title="wall time against the critical path (issue 20 item 4; server = the "
                        "outbox events' times, client = the harness's polls every 100 ms)")
    for i, name in enumerate(_CRITICAL_COLUMNS):
        table.add_column(name, justify="left" if i in (0, 7) else "right", overflow="fold")
    for line in cells:
        table.add_row(*line)
    (console or Console(width=200)).print(table)


# -- Redis operations per item -------------------------------------------------------------------

def _top_calls(ops: dict, count: int = 8) -> str:
    calls = ops.get("calls_per_unit", {})
    shown = [f"{name.upper()} {per:,.2f}" for name, per in list(calls.items())[:count] if per >= 0.005]
    return ", ".join(shown) or "-"


def _num(value, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _kb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:,.1f}"


def redis_rows(rows: list[dict]) -> list[list[str]]:
    """Cells of the Redis table, from JSON rows (as_json) that carry `extra.redis_ops`."""
    cells = []
    for row in rows:
        ops = row.get("extra", {}).get("redis_ops")
        if not ops:
            continue
        cells.append([row["scenario"], f"{ops['units']:,} {ops['unit']}s",
                      _num(ops.get("commands_per_unit"), ",.1f"), _top_calls(ops),
                      _num(ops.get("cpu_us_per_unit")), _num(ops.get("command_us_per_unit")),
                      f"{_kb(ops.get('net_in_bytes_per_unit'))} / {_kb(ops.get('net_out_bytes_per_unit'))}",
                      f"{_num(ops.get('avg_ops_per_s'))} / {_num(ops.get('peak_ops_per_s'))}",
                      _num(ops.get("cpu_pct")), _num(ops.get("units_per_s_at_one_core"))])
    return cells


_REDIS_COLUMNS = ("scenario", "units", "commands / unit", "top commands / unit", "Redis CPU µs / unit",
                  "in commands µs / unit", "net KiB in / out / unit", "ops/s avg / peak",
                  "Redis CPU % of a core", "units/s at 100 % of one Redis core")


def render_redis(rows: list[Row], console: Console | None = None) -> None:
    table = Table(title="Redis operations per unit (INFO commandstats / stats / cpu deltas over each "
                        "scenario; every client of the run's Redis; commands inside Lua scripts and "
                        "MULTI counted as commands)")
    for i, name in enumerate(_REDIS_COLUMNS):
        table.add_column(name, justify="left" if i in (0, 3) else "right", overflow="fold")
    for cells in redis_rows([{"scenario": r.scenario, "extra": r.extra} for r in rows]):
        table.add_row(*cells)
    (console or Console(width=200)).print(table)


def write_json(path: Path, rows: list[Row], meta: dict, targets: list[dict] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**meta, "all_completed": all(r.completed for r in rows),
            "targets": targets if targets is not None else evaluate_targets(rows),
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
    if data.get("targets"):
        lines += ["", "| target | measured | |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | "
                  f"{'**missed**' if t['status'] == 'missed' else t['status']} |" for t in data["targets"]]
    if cells := critical_rows(data["rows"]):
        lines += ["", "| " + " | ".join(_CRITICAL_COLUMNS) + " |", _CRITICAL_ALIGN]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
    if cells := redis_rows(data["rows"]):
        lines += ["", "| " + " | ".join(_REDIS_COLUMNS) + " |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m bench.report [results.json]: the table as Markdown
    import sys

    default = Path(__file__).resolve().parent / "results" / "latest.json"
    print(markdown(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else default).read_text())))

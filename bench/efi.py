"""Efí adapter numbers (issue 19), against the PSP double over mTLS in its own process.

- `efi-seed-sim` / `efi-seed-profile`: the seed profile (settlement 0.5-2 s, 15 % NAO_REALIZADO,
  5 % 500 before recording) with the simulator, then through Efí's adapter, back to back in the
  same run; the target is at least 0.8x the simulator's rate.
- `efi-zero-sim` / `efi-zero-latency`: the same at zero latency, where worker CPU is the limit: the
  difference in worker CPU per item is what the adapter costs per settled item.
- `efi-call-cpu`: CPU of one pay() in one process (client side: TLS, JSON, the Redis write),
  measured over concurrent calls in threads, for each provider.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from bench.report import Row
from bench.sampling import _cpu_seconds
from payouts_core.provider.efi import EfiPixProvider
from payouts_core.provider.simulated import SimulatedPixProvider
from payouts_core.settings import EfiSettings

ROOT = Path(__file__).resolve().parent.parent
SEED_RATES = ("0.15", "0.05")  # NAO_REALIZADO, 500 before recording: the simulator's seed rates
CALL_THREADS = 50
CALLS_PER_THREAD = 6


@contextmanager
def psp_double(workdir: Path, settle_after_ms: str, permanent: str = "0", transient: str = "0"):
    """The double in a process of its own; yields the EFI_* environment that points at it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.psp_double", "--dir", str(workdir), "--seed", "bench",
         "--settle-after-ms", settle_after_ms, "--permanent-rate", permanent, "--transient-rate", transient],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the PSP double did not start")
        yield proc, json.loads(line)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run(bench) -> list[Row]:
    sizes, stack = bench.sizes, bench.stack
    rows: list[Row] = []
    workers = bench.processes
    seed_latency = sizes.seed_latency_ms
    with psp_double(stack.workdir / "psp-seed", seed_latency, *SEED_RATES) as (double, env):
        sim = bench.seed_profile("efi-seed-sim", workers=workers)
        efi = _efi_batch(bench, "efi-seed-profile", {**bench.seed_env(), **env}, sizes.seed_items, double,
                         f"settlement {seed_latency} ms at the double, 15% NAO_REALIZADO + 5% HTTP 500")
        _ratio(efi, sim)
        rows += [sim, efi]
    with psp_double(stack.workdir / "psp-zero", "0") as (double, env):
        items = sizes.floor_items
        sim = bench.zero_latency("efi-zero-sim", workers=workers, items=items)
        efi = _efi_batch(bench, "efi-zero-latency", {**bench.zero_env(), **env}, items, double,
                         "settlement 0 at the double (answers EM_PROCESSAMENTO, final at the first lookup)")
        _ratio(efi, sim)
        per_item = {r.scenario: r.usage.get("cpu_s", {}).get("worker", 0) * 1000 / items for r in (sim, efi)}
        efi.extra["worker_cpu_ms_per_item"] = round(per_item["efi-zero-latency"], 2)
        sim.extra["worker_cpu_ms_per_item"] = round(per_item["efi-zero-sim"], 2)
        efi.notes.insert(0, f"worker CPU {per_item['efi-zero-latency']:.2f} ms/item vs simulator "
                            f"{per_item['efi-zero-sim']:.2f} ms/item")
        rows += [sim, efi]
        with bench.measure("efi-call-cpu") as sampler:
            call_row = _call_cpu(bench, env)
        call_row.extra["redis_ops"] = sampler.redis_ops.per_unit(call_row.items)
        bench.rows.append(call_row)
        rows.append(call_row)
    return rows


def _efi_batch(bench, scenario: str, env: dict, items: int, double: subprocess.Popen, note: str) -> Row:
    bench.stack.ensure_workers(env, bench.processes)
    psp_cpu = _cpu_seconds([double.pid])
    with bench.measure(scenario) as sampler:
        run = bench.run_batch(scenario, items)
    psp_cpu = _cpu_seconds([double.pid]) - psp_cpu
    row = bench.row(scenario, [run], sampler, [bench.worker_note(bench.processes), note])
    row.extra.update(worker_processes=bench.processes, psp_double_cpu_s=round(psp_cpu, 2))
    # The double (Python threads, TLS) shares the machine's cores with the workers it answers.
    row.notes.insert(-1, f"PSP double CPU {psp_cpu:.1f} s ({psp_cpu * 1000 / items:.1f} ms/item), "
                         "counted in 'other'")
    return row


def _ratio(efi: Row, sim: Row) -> None:
    if efi.items_per_s and sim.items_per_s:
        ratio = efi.items_per_s / sim.items_per_s
        efi.extra["vs_simulator"] = round(ratio, 2)
        efi.notes.insert(0, f"{ratio:.2f}x the simulator's rate in this run (target >= 0.8x)")


def _call_cpu(bench, env: dict) -> Row:
    """CPU per pay() in this process, concurrent calls in threads, Efí vs the simulator."""
    efi = EfiPixProvider(EfiSettings.from_env(env, strict=False), bench.redis, pool_size=CALL_THREADS,
                         prefix=f"bench-efi-{uuid.uuid4().hex[:6]}:")
    sim = SimulatedPixProvider(bench.redis, ispb="13935893", prefix=f"bench-sim-{uuid.uuid4().hex[:6]}:")
    results = {}
    for name, provider in (("simulated", sim), ("efi", efi)):
        _pay_all(provider, f"warm-{name}", 1)  # the token, the pool's first connections
        cpu, wall = time.process_time(), time.perf_counter()
        errors = _pay_all(provider, name, CALLS_PER_THREAD)
        results[name] = ((time.process_time() - cpu) / (CALL_THREADS * CALLS_PER_THREAD) * 1e6,
                         time.perf_counter() - wall, errors)
    calls = CALL_THREADS * CALLS_PER_THREAD
    row = Row("efi-call-cpu", calls, results["efi"][1], calls / results["efi"][1], batches=1,
              batches_completed=1)
    row.extra.update(efi_cpu_us_per_call=round(results["efi"][0]),
                     simulated_cpu_us_per_call=round(results["simulated"][0]))
    row.notes = [f"CPU per pay(): efi {results['efi'][0]:.0f} us, simulator {results['simulated'][0]:.0f} us "
                 f"({CALL_THREADS} threads x {CALLS_PER_THREAD} calls, one process, client side)",
                 "efi: PUT + one lookup per call (the double settles at once) over kept-alive mTLS"]
    row.problems = [f"{name}: {errors} calls failed" for name, (_, _, errors) in results.items() if errors]
    row.completed = not row.problems
    efi.http.close()
    return row


def _pay_all(provider, tag: str, calls: int) -> int:
    errors = []

    def one(thread: int) -> None:
        for i in range(calls):
            try:
                provider.pay(idempotency_key=f"payout:bench:{tag}-{thread}-{i}-{uuid.uuid4().hex}:1",
                             external_id=f"{tag}-{thread}-{i}", amount_cents=100 + i,
                             pix_key="bench@example.com")
            except Exception as exc:  # noqa: BLE001 - counted and reported in the row
                errors.append(exc)

    threads = [threading.Thread(target=one, args=(t,)) for t in range(CALL_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(errors)

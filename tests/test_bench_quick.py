"""The benchmark harness keeps working: `python -m bench --quick` runs every scenario end to end.

Only that it ran and that every batch and chord completed is asserted; no timing is (CI machines
are too noisy for that, and the numbers belong in docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIO_ROWS = {"seed-profile", "zero-latency", "post-10k", "get", "get-load", "scale-1w", "scale-2w",
                 "floor"}


@pytest.mark.timeout(300)
def test_quick_benchmark_completes_every_batch(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    results = json.loads(out.read_text())
    assert results["quick"] is True
    assert results["all_completed"] is True
    rows = {row["scenario"]: row for row in results["rows"]}
    assert set(rows) == SCENARIO_ROWS
    for name, row in rows.items():
        assert row["completed"], (name, row["problems"])
        assert row["batches_completed"] == row["batches"], name
        assert not row["problems"], (name, row["problems"])

"""`--profile DIR`: py-spy records the API and the workers for the span of each scenario.

Each recording is kept raw (collapsed stacks, one line per stack) and summarised next to it in
a `.top.txt`: self time by function, inclusive time by function, self time by package.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.processes import BIN

_LINE = re.compile(r":\d+\)$")  # "func (path.py:123)" -> "func (path.py)"


class Profiler:
    def __init__(self, out_dir: Path | None, rate: int = 100):
        self.out_dir = out_dir
        self.rate = rate
        self.exe = shutil.which("py-spy") or str(BIN / "py-spy")
        if out_dir is not None:
            if not Path(self.exe).exists():
                raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
            out_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def record(self, scenario: str, roles: dict[str, list[int]]) -> Iterator[None]:
        if self.out_dir is None:
            yield
            return
        recorders = []
        for role, pids in roles.items():
            for n, pid in enumerate(pids, 1):
                out = self.out_dir / f"{scenario}-{role}{n if len(pids) > 1 else ''}.txt"
                argv = [self.exe, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                        "--rate", str(self.rate), "--format", "raw", "--output", str(out)]
                recorders.append((out, subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                        stderr=subprocess.DEVNULL)))
        time.sleep(0.5)  # let py-spy attach before the scenario starts
        try:
            yield
        finally:
            for _, proc in recorders:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            for out, proc in recorders:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                if out.exists():
                    out.with_suffix(".top.txt").write_text(summarise(out.read_text()))


def _frames(stack: str) -> list[str]:
    """Python frames of one collapsed stack, without the process/thread prefixes and line numbers."""
    return [_LINE.sub(")", f) for f in stack.split(";")
            if not f.startswith(("process ", "thread ")) and f.endswith(")")]


def _package(frame: str) -> str:
    path = frame[frame.rfind("(") + 1:-1]
    return path.split("/", 1)[0].removesuffix(".py") if "/" in path else path.removesuffix(".py")


def summarise(raw: str, top: int = 25) -> str:
    own, inclusive, packages = Counter(), Counter(), Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames, n = _frames(stack), int(count)
        total += n
        if not frames:
            continue
        own[frames[-1]] += n
        packages[_package(frames[-1])] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no samples\n"

    def block(title: str, counter: Counter) -> list[str]:
        return [title] + [f"{100 * n / total:6.1f}%  {name}" for name, n in counter.most_common(top)] + [""]

    return "\n".join([f"{total} samples (non-idle)", ""]
                     + block("self time by package (leaf frame's top-level module)", packages)
                     + block("self time by function", own)
                     + block("inclusive time by function", inclusive))

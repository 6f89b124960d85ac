"""Run the PSP double on its own: `python -m tests.psp_double --dir /tmp/psp` prints the EFI_*
settings that point the service at it (one JSON line), then serves until interrupted."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

from tests.psp_double.server import PspDouble, efi_env, make_certs


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.psp_double", description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="where the test CA and certificates go")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--settle-after-ms", type=_range, default=(0, 0),
                        help="EM_PROCESSAMENTO this long (range, e.g. 500-2000) before final")
    parser.add_argument("--latency-ms", type=_range, default=(0, 0), help="delay of every answer")
    parser.add_argument("--permanent-rate", type=float, default=0.0, help="share ending NAO_REALIZADO")
    parser.add_argument("--transient-rate", type=float, default=0.0, help="share of PUTs answering 500")
    parser.add_argument("--seed", default="double")
    parser.add_argument("--token-ttl-s", type=float, default=3600.0)
    args = parser.parse_args()
    double = PspDouble(make_certs(args.dir), token_ttl_s=args.token_ttl_s,
                       settle_after_ms=args.settle_after_ms, latency_ms=args.latency_ms,
                       permanent_rate=args.permanent_rate, transient_rate=args.transient_rate,
                       seed=args.seed)
    double.start(args.port)
    print(json.dumps(efi_env(double)), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


if __name__ == "__main__":
    main()

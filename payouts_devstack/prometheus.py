"""A real Prometheus (Debian's `prometheus` package) for tests and the bench: its own port and
data directory, scraping given targets every second with the repository's alert rules."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import requests
import yaml

from payouts_devstack.process import Process
from payouts_devstack.redis_server import free_port

OBSERVABILITY = Path(__file__).resolve().parents[1] / "observability"


def binary(name: str) -> str:
    """`prometheus` or `promtool` from PATH; `make test` installs the package when missing."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} not on PATH: install Debian's prometheus package "
                             "(`make test` does: apt-get install -y prometheus)")
    return path


class Prometheus:
    """Scrapes `jobs` ({job: (targets, bearer token or None)}) every second, with the alert rules."""

    def __init__(self, workdir: Path, jobs: dict[str, tuple[list[str], str | None]]):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(OBSERVABILITY / "alerts.yml", self.workdir / "alerts.yml")
        scrape_configs = []
        for job, (targets, token) in jobs.items():
            config = {"job_name": job, "static_configs": [{"targets": targets}]}
            if token:
                config["authorization"] = {"credentials": token}
            scrape_configs.append(config)
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": ["alerts.yml"], "scrape_configs": scrape_configs}
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: Process | None = None

    def __enter__(self) -> Prometheus:
        self.process = Process("prometheus", [
            binary("prometheus"), f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}"], self.workdir / "prometheus.log", {})
        return self

    def __exit__(self, *exc) -> None:
        self.process.stop(10)

    def api(self, path: str, **params) -> dict:
        answer = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert answer["status"] == "success", answer
        return answer["data"]

    def targets_up(self) -> bool:
        try:
            targets = self.api("targets")["activeTargets"]
        except requests.RequestException:
            return False
        self.down = [(t["scrapeUrl"], t["lastError"]) for t in targets if t["health"] != "up"]
        return bool(targets) and not self.down

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step="1s")["result"]

    def metric_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def wait(self, check, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.process.check_alive()
            if result := check():
                return result
            time.sleep(0.2)
        raise AssertionError(f"{what} not within {timeout} s (down: {getattr(self, 'down', '?')}; "
                             f"log: {self.workdir / 'prometheus.log'})")

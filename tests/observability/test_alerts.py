"""The alert rules and the compose scrape config, checked by promtool (Debian's prometheus package)."""

from __future__ import annotations

import subprocess

from payouts_devstack.prometheus import OBSERVABILITY, binary


def _promtool(*args: str, cwd=OBSERVABILITY) -> str:
    done = subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_alert_rules_are_valid():
    assert "SUCCESS: 9 rules found" in _promtool("check", "rules", "alerts.yml")


def test_each_alert_fires_on_its_series_and_not_on_a_healthy_neighbour():
    """alerts_test.yml: every alert firing (labels, annotations) and a near miss that must not."""
    assert "SUCCESS" in _promtool("test", "rules", "alerts_test.yml")


def test_every_alert_has_a_unit_test():
    import yaml

    rules = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())
    tests = yaml.safe_load((OBSERVABILITY / "alerts_test.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]
              if case.get("exp_alerts")}
    assert alerts == tested


def test_compose_scrape_config_is_valid(tmp_path):
    """observability/prometheus.yml as compose mounts it (the token file is a secret: a stand-in)."""
    token = tmp_path / "metrics_token"
    token.write_text("stand-in")
    text = (OBSERVABILITY / "prometheus.yml").read_text().replace("/run/secrets/metrics_token", str(token))
    (tmp_path / "prometheus.yml").write_text(text)
    (tmp_path / "alerts.yml").write_text((OBSERVABILITY / "alerts.yml").read_text())
    assert "SUCCESS" in _promtool("check", "config", "prometheus.yml", cwd=tmp_path)

"""The `payouts` CLI against the real API served over HTTP, with a real worker behind it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from payouts_cli.main import cli

pytestmark = pytest.mark.usefixtures("worker")

SEED = Path(__file__).resolve().parents[2] / "seeds" / "payouts_batch_example.json"


@pytest.fixture(scope="module")
def api_url():
    from payouts_api import create_app

    server = make_server("127.0.0.1", 0, create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


def test_submit_seed_and_wait_prints_the_summary_line(api_url):
    result = run("--api-url", api_url, "submit", str(SEED), "--wait", "--interval", "0.1")

    assert result.exit_code == 0, result.output
    assert "Batch 2025-10-05-A: accepted (HTTP 202" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == \
        "Processed: 2 | Paid: 2 | Failed: 0 | Duplicates: 0"

    again = run("--api-url", api_url, "submit", str(SEED))
    assert again.exit_code == 0
    assert "already submitted, not re-enqueued (HTTP 200" in again.stdout

    status = run("--api-url", api_url, "status", "2025-10-05-A", "--json")
    report = json.loads(status.stdout)
    assert report["status"] == "completed" and report["successful"] == 2


def test_submit_json_output_and_failure_table(api_url, tmp_path, uid):
    batch = {"batch_id": f"cli-{uid}", "items": [
        {"external_id": f"ok-{uid}", "user_id": "u", "amount_cents": 500, "pix_key": "a@b.com"},
        {"external_id": f"no-{uid}", "user_id": "u", "amount_cents": 500,
         "pix_key": "fail.be01@pix.test"},
        {"external_id": f"ok-{uid}", "user_id": "u", "amount_cents": 500, "pix_key": "a@b.com"},
    ]}
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(batch))

    result = run("--api-url", api_url, "submit", str(path), "--wait", "--json", "--interval", "0.1")

    report = json.loads(result.stdout)  # nothing but JSON on stdout
    assert [d["status"] for d in report["details"]] == ["paid", "failed", "duplicate"]
    status = run("--api-url", api_url, "status", f"cli-{uid}")
    assert "Processed: 3 | Paid: 1 | Failed: 1 | Duplicates: 1" in status.stdout
    assert "BE01" in status.stdout and f"batch cli-{uid} item 0" in status.stdout


def test_api_error_shows_field_paths_and_exits_1(api_url, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"batch_id": "x", "items": [{"external_id": "e", "user_id": "u",
                                                          "amount_cents": -5, "pix_key": "a@b.com"}]}))

    result = run("--api-url", api_url, "submit", str(path))

    assert result.exit_code == 1
    assert "HTTP 422 Invalid fields" in result.stderr
    assert "items.0.amount_cents:" in result.stderr


def test_unknown_batch_status_exits_1(api_url):
    result = run("--api-url", api_url, "status", "no-such-batch")
    assert result.exit_code == 1
    assert "HTTP 404" in result.stderr


def test_ledger_lists_transfers_with_masked_keys(api_url, tmp_path, uid):
    batch = {"batch_id": f"ledger-{uid}", "items": [
        {"external_id": f"l-{uid}", "user_id": "u", "amount_cents": 123456,
         "pix_key": f"secret.{uid}@example.com"}]}
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(batch))
    assert run("--api-url", api_url, "submit", str(path), "--wait", "--interval", "0.1").exit_code == 0

    result = run("ledger", "--json")

    entries = [t for t in json.loads(result.stdout)["transfers"] if t["external_id"] == f"l-{uid}"]
    assert len(entries) == 1 and entries[0]["status"] == "settled"
    assert entries[0]["amount_cents"] == 123456
    assert f"secret.{uid}" not in result.stdout
    table = run("ledger")
    assert "R$ 1.234,56" in table.stdout and f"secret.{uid}" not in table.stdout

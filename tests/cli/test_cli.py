"""The `payouts` CLI's own failure paths, which need no running API."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from payouts_cli.main import _error_lines, brl, cli, summary_line
from payouts_devstack.redis_server import free_port


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """A proxy from the environment must not answer for the free port these tests use."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def batch_file(tmp_path):
    path = tmp_path / "batch.json"
    path.write_text(json.dumps({"batch_id": "b-1", "items": [
        {"external_id": "e-1", "user_id": "u-1", "amount_cents": 100, "pix_key": "a@b.com"}]}))
    return path


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_unreachable_api_is_exit_2_with_a_one_line_message(batch_file):
    url = f"http://127.0.0.1:{free_port()}"
    result = run("--api-url", url, "--timeout", "2", "submit", str(batch_file))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot reach the API at {url} (")
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_unreachable_api_for_status_too():
    url = f"http://127.0.0.1:{free_port()}"
    result = run("--api-url", url, "status", "b-1")
    assert result.exit_code == 2
    assert f"cannot reach the API at {url}" in result.stderr


def test_api_url_from_the_environment(batch_file):
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["submit", str(batch_file)], env={"PAYOUTS_API_URL": url})
    assert result.exit_code == 2
    assert f"cannot reach the API at {url}" in result.stderr


def test_missing_file_is_exit_2(tmp_path):
    missing = tmp_path / "nope.json"
    result = run("--api-url", "http://127.0.0.1:9", "submit", str(missing))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot read {missing}")


def test_invalid_json_file_is_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"batch_id": "b-1", "items": [}')
    result = run("--api-url", "http://127.0.0.1:9", "submit", str(bad))
    assert result.exit_code == 2
    assert f"error: {bad} is not valid JSON" in result.stderr
    assert "line 1" in result.stderr


def test_summary_line_format():
    report = {"processed": 4, "successful": 2, "failed": 1, "duplicates": 1}
    assert summary_line(report) == "Processed: 4 | Paid: 2 | Failed: 1 | Duplicates: 1"


def test_brl():
    assert brl(1) == "R$ 0,01"
    assert brl(123456789) == "R$ 1.234.567,89"


def test_field_errors_are_listed_with_their_paths():
    errors = [{"field": "items.3.pix_key", "message": "Not a valid PIX key."}]
    assert _error_lines(errors) == ["items.3.pix_key: Not a valid PIX key."]


def test_the_api_key_may_come_from_a_file(batch_file, tmp_path):
    from tests.webhook_receiver import Receiver

    key_file = tmp_path / "api_key"
    key_file.write_text("from-a-file-0123456789\n")
    receiver = Receiver(script=[500]).start()
    try:
        CliRunner().invoke(cli, ["--api-url", receiver.url, "submit", str(batch_file)],
                           env={"PAYOUTS_API_KEY_FILE": str(key_file), "PAYOUTS_API_KEY": None})
    finally:
        receiver.stop()
    [request] = receiver.received
    assert request.headers["Authorization"] == "Bearer from-a-file-0123456789"
    both = CliRunner().invoke(cli, ["--api-key", "k", "--api-key-file", str(key_file), "status", "x"])
    assert both.exit_code == 2 and "not both" in both.output

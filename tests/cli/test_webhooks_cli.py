"""`payouts webhooks list/add/delete` against the real API served by the test app (issue 13)."""

from __future__ import annotations

import json
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from click.testing import CliRunner

from payouts_cli.main import cli
from payouts_core.settings import key_digest
from tests.conftest import API_KEY


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def api_url(make_app, uid):
    app = make_app(api_keys=((f"cli{uid}", key_digest(API_KEY)),), webhooks_allow_http=True,
                   webhooks_allow_private=True)
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def run(api_url, *args):
    return CliRunner().invoke(cli, ["--api-url", api_url, "--api-key", API_KEY, "webhooks", *args])


def test_add_list_delete(api_url):
    added = run(api_url, "add", "http://127.0.0.1:9/hook", "--description", "main")
    assert added.exit_code == 0, added.output
    created = json.loads(added.output)
    assert created["secret"].startswith("whsec_")

    listed = run(api_url, "list", "--json")
    assert [w["id"] for w in json.loads(listed.output)["webhooks"]] == [created["id"]]
    assert created["secret"] not in listed.output

    assert run(api_url, "delete", created["id"]).exit_code == 0
    gone = run(api_url, "delete", created["id"])
    assert gone.exit_code == 1 and "404" in gone.output
    refused = run(api_url, "add", "ftp://x/")
    assert refused.exit_code == 1 and "url" in refused.output

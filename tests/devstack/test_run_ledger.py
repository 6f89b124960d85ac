"""`make run`'s ledger (scripts/run.py): a private PostgreSQL when nothing answers at a local
DATABASE_URL, migrated before anything starts; never a server that is not ours."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

from payouts_core.ledger.schema import check_schema
from payouts_devstack import free_port
from payouts_devstack.postgres_server import PostgresUnavailable, local_postgres_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_script():
    spec = importlib.util.spec_from_file_location("run_script", ROOT / "scripts" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_private_ledger_is_started_and_migrated_then_found_again(run_script, tmp_path):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/ledger_run"
    env = {"DATABASE_URL": url}
    proc = run_script.start_ledger(env, tmp_path / "postgres")
    try:
        assert proc is not None and proc.poll() is None
        check_schema(url)  # migrated: the API and workers will start
        assert (tmp_path / "postgres" / "cluster" / "PG_VERSION").exists()
        assert run_script.start_ledger(dict(env), tmp_path / "other") is None  # answers: used as is
        assert not (tmp_path / "other").exists()
    finally:
        if proc is not None:
            proc.stop(grace=10)


@pytest.mark.parametrize("url", ["postgresql://postgres@db.example:5432/payouts",
                                 "postgresql://postgres:secret@127.0.0.1:{port}/payouts",
                                 "mysql://root@127.0.0.1:{port}/payouts"])
def test_a_url_that_is_not_ours_to_serve_is_refused_without_showing_its_password(
        run_script, tmp_path, url):
    env = {"DATABASE_URL": url.format(port=free_port())}
    with pytest.raises(PostgresUnavailable, match="nothing answers at DATABASE_URL") as refused:
        run_script.start_ledger(env, tmp_path / "postgres")
    assert "secret" not in str(refused.value)
    assert not (tmp_path / "postgres").exists()


def test_a_port_something_else_listens_on_is_not_ours(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert local_postgres_port(f"postgresql://postgres@127.0.0.1:{port}/payouts") is None
    assert local_postgres_port(f"postgresql://postgres@localhost:{port}/payouts") == port

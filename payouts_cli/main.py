"""The `payouts` command line: submit batches, watch their progress, reconcile the provider ledger.

Exit codes: 0 done, 1 the API answered with an error, 2 the API (or Redis) could not be reached or
the input could not be read, 130 interrupted while waiting (the batch keeps running).
"""

from __future__ import annotations

import json
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import requests
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from payouts_cli.ledger_commands import archiver, db
from payouts_cli.local_redis import redact_url
from payouts_core.report import summary_line

USER_AGENT = "payouts-cli/0.1"


class CliError(click.ClickException):
    """A failure reported as one `error: ...` line on stderr, exit code 2 unless said otherwise."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


class ApiError(CliError):
    """The API answered 4xx/5xx: show its problem+json (status, title, detail, field errors)."""

    exit_code = 1

    def __init__(self, response: requests.Response):
        self.response = response
        try:
            body = response.json()
        except ValueError:
            body = None
        self.problem = body if isinstance(body, dict) else {}
        title = self.problem.get("title") or response.reason or "error"
        super().__init__(f"HTTP {response.status_code} {title}")
        if not self.problem and "html" not in response.headers.get("Content-Type", ""):
            self.problem = {"detail": " ".join(response.text.split())[:300]}

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)
        if self.problem.get("detail"):
            click.echo(f"  {self.problem['detail']}", err=True)
        for line in _error_lines(self.problem.get("errors")):
            click.echo(f"  {line}", err=True)
        retry_after = self.response.headers.get("Retry-After")
        if retry_after and self.response.status_code in (429, 503):
            click.echo(f"  retry after {retry_after} s", err=True)


def _error_lines(errors: Any) -> list[str]:
    """The API's field errors ([{"field": "items.3.pix_key", "message": ...}]) as lines."""
    return [f"{e.get('field')}: {e.get('message')}" if isinstance(e, dict) else str(e)
            for e in errors or []]


def _reason(exc: requests.RequestException, timeout: float) -> str:
    """A short reason ("Connection refused") instead of urllib3's nested repr."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s"
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    return found.group(1).strip() if found else exc.__class__.__name__


class ApiClient:
    """The payouts HTTP API, every failure turned into a CliError."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.headers["Accept"] = "application/json, application/problem+json"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, method: str, path: str, **kwargs) -> tuple[requests.Response, Any]:
        """The response and its JSON body; errors raised as CliError / ApiError."""
        try:
            response = self.session.request(method, self.base_url + path, timeout=self.timeout,
                                            **kwargs)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            raise CliError(f"invalid API URL {self.base_url!r} ({exc})") from None
        except requests.RequestException as exc:
            raise CliError(f"cannot reach the API at {self.base_url} "
                           f"({_reason(exc, self.timeout)})") from None
        if response.status_code >= 400:
            raise ApiError(response)
        try:
            return response, response.json()
        except ValueError:
            raise CliError(f"{self.base_url} answered HTTP {response.status_code} without JSON; "
                           "is it the payouts API?") from None

    def submit(self, body: bytes) -> tuple[requests.Response, Any]:
        return self.request("POST", "/api/payouts", data=body,
                            headers={"Content-Type": "application/json"})

    def report(self, batch_id: str) -> dict:
        return self.request("GET", f"/api/payouts/{quote(batch_id, safe='')}")[1]


def brl(cents: int) -> str:
    """Brazilian money format: 123456 -> 'R$ 1.234,56'."""
    sign = "-" if cents < 0 else ""
    reais, rest = divmod(abs(cents), 100)
    return f"{sign}R$ {reais:,}".replace(",", ".") + f",{rest:02d}"


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def wait_for_completion(api: ApiClient, report: dict, interval: float, show_bar: bool) -> dict:
    """Poll the report until the batch is completed, with a progress bar on stderr if asked."""
    batch_id = report["batch_id"]

    def poll() -> dict:
        try:
            return api.report(batch_id)
        except ApiError as exc:  # rate limited: wait as told, then carry on
            if exc.response.status_code != 429:
                raise
            retry_after = exc.response.headers.get("Retry-After", "")
            time.sleep(max(interval, float(retry_after) if retry_after.isdigit() else interval))
            return report

    try:
        if not show_bar:
            while report.get("status") != "completed":
                time.sleep(interval)
                report = poll()
            return report
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
            bar = progress.add_task(batch_id, total=report.get("total") or None,
                                    completed=report.get("processed", 0))
            while report.get("status") != "completed":
                time.sleep(interval)
                report = poll()
                progress.update(bar, total=report.get("total") or None,
                                completed=report.get("processed", 0))
        return report
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; the batch keeps running: payouts status {batch_id} --watch",
                   err=True)
        sys.exit(130)


def print_items_table(report: dict) -> None:
    """The items that need a look: failed ones with their reason, duplicates with where."""
    rows = [d for d in report.get("details", []) if d.get("status") in ("failed", "duplicate")]
    if not rows:
        return
    table = Table("external_id", "status", "failure_code / duplicate_of", "reason")
    for item in rows:
        if item["status"] == "failed":
            table.add_row(item.get("external_id"), "failed", item.get("failure_code") or "",
                          item.get("failure_reason") or "")
        else:
            table.add_row(item.get("external_id"), "duplicate",
                          _describe_origin(item.get("duplicate_of")), "")
    Console().print(table)


def _describe_origin(origin: Any) -> str:
    """Where the payment behind a duplicate is: 'batch 2025-10-05-A item 0'."""
    if isinstance(origin, dict) and "batch_id" in origin:
        index = f" item {origin['index']}" if "index" in origin else ""
        return f"batch {origin['batch_id']}{index}"
    return json.dumps(origin) if isinstance(origin, dict | list) else str(origin or "")


def read_batch_file(path: str) -> bytes:
    """The file's bytes, once they are known to be JSON (the API validates the rest)."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if hasattr(exc, "lineno") else ""
        raise CliError(f"{path} is not valid JSON: {getattr(exc, 'msg', exc)}{where}") from None
    return raw


@contextmanager
def ledger_side():
    """The store on Redis and the configured provider (PAYOUTS_PROVIDER: the simulator's ledger on
    Redis, or Efí's side through its adapter), read directly (not through the API).

    A short connect timeout, not the workers' minute of retries: a CLI should say Redis is down.
    """
    import redis

    from payouts_core.provider import TransientProviderError
    from payouts_core.resources import build_provider
    from payouts_core.settings import SettingsError, get_settings
    from payouts_core.store import PayoutStore

    try:
        settings = get_settings()
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    client = redis.Redis.from_url(settings.store_url, socket_connect_timeout=5)
    try:
        yield PayoutStore(client), build_provider(settings, client)
    except redis.RedisError as exc:
        raise CliError(f"cannot reach Redis at {redact_url(settings.store_url)} ({exc})") from None
    except TransientProviderError as exc:
        raise CliError(f"cannot read the provider's side ({exc})") from None
    finally:
        client.close()


def _default_api_url() -> str:
    from payouts_core.settings import SettingsError, get_settings

    try:
        return get_settings().api_url
    except SettingsError as exc:
        raise CliError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--api-url", envvar="PAYOUTS_API_URL", metavar="URL",
              help="Base URL of the payouts API  [env PAYOUTS_API_URL; default http://127.0.0.1:8000]")
@click.option("--api-key", envvar="PAYOUTS_API_KEY", metavar="KEY",
              help="Sent as 'Authorization: Bearer KEY'  [env PAYOUTS_API_KEY]")
@click.option("--api-key-file", envvar="PAYOUTS_API_KEY_FILE", metavar="PATH",
              type=click.Path(exists=True, dir_okay=False),
              help="A file holding the key (Docker and Kubernetes secrets)  [env PAYOUTS_API_KEY_FILE]")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds to wait for each HTTP answer.")
@click.pass_context
def cli(ctx: click.Context, api_url: str | None, api_key: str | None, api_key_file: str | None,
        timeout: float) -> None:
    """Submit PIX payout batches, follow them, and reconcile the provider ledger."""
    if api_key and api_key_file:
        raise click.UsageError("give the API key or a file holding it, not both")
    if api_key_file:
        api_key = Path(api_key_file).read_text().removesuffix("\n").removesuffix("\r")
    ctx.obj = {"api_url": api_url, "api_key": api_key, "timeout": timeout}


def _api(ctx: click.Context) -> ApiClient:
    opts = ctx.find_root().obj
    return ApiClient(opts["api_url"] or _default_api_url(), opts["api_key"], opts["timeout"])


json_option = click.option("--json", "as_json", is_flag=True, help="Print only the report JSON.")
interval_option = click.option("--interval", type=click.FloatRange(min=0.05), default=1.0,
                               show_default=True, help="Seconds between polls while following.")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--wait", is_flag=True, help="Follow the batch until it is completed.")
@json_option
@interval_option
@click.pass_context
def submit(ctx: click.Context, file: str, wait: bool, as_json: bool, interval: float) -> None:
    """Submit the batch in FILE (JSON, '-' for stdin); 202 means new, 200 a replay of the same."""
    body = read_batch_file(file)
    api = _api(ctx)
    response, report = api.submit(body)
    if not as_json:
        verdict = "accepted" if response.status_code == 202 else "already submitted, not re-enqueued"
        click.echo(f"Batch {report.get('batch_id')}: {verdict} "
                   f"(HTTP {response.status_code} {response.reason})")
    if wait:
        report = wait_for_completion(api, report, interval, show_bar=not as_json)
    if as_json:
        print_json(report)
    else:
        click.echo(summary_line(report))


@cli.command()
@click.argument("batch_id")
@click.option("--watch", is_flag=True, help="Re-poll with a progress bar until completed.")
@json_option
@interval_option
@click.pass_context
def status(ctx: click.Context, batch_id: str, watch: bool, as_json: bool, interval: float) -> None:
    """Show a batch's report: the summary line and its failed and duplicate items."""
    api = _api(ctx)
    report = api.report(batch_id)
    if watch:
        report = wait_for_completion(api, report, interval, show_bar=not as_json)
    if as_json:
        print_json(report)
        return
    click.echo(f"Batch {report.get('batch_id')}: {report.get('status')} "
               f"({report.get('processed', 0)}/{report.get('total', 0)} items final)")
    click.echo(summary_line(report))
    print_items_table(report)


@cli.command()
@click.argument("batch_id")
@click.argument("external_id")
@click.option("--json", "as_json", is_flag=True, help="Print the item(s) and events as JSON.")
@click.pass_context
def item(ctx: click.Context, batch_id: str, external_id: str, as_json: bool) -> None:
    """Show what happened to one payout: its status and every event, oldest first."""
    path = f"/api/payouts/{quote(batch_id, safe='')}/items/{quote(external_id, safe='')}"
    _, story = _api(ctx).request("GET", path)
    if as_json:
        print_json(story)
        return
    for entry in story["items"]:
        outcome = entry.get("e2e_id") or entry.get("failure_code") or ""
        click.echo(f"Item {entry['index']} of batch {story['batch_id']}: {entry['external_id']} "
                   f"{entry['status']} {brl(entry['amount_cents'])} to {entry['pix_key']} "
                   f"after {entry['attempts']} attempt(s) {outcome}".rstrip())
        table = Table("at (UTC)", "event", "attempt", "code", "detail")
        for event in entry["events"]:
            detail = ", ".join(f"{k}={_describe_origin(v) if k == 'duplicate_of' else v}"
                               for k, v in sorted(event["detail"].items()))
            table.add_row(event["at"].replace("T", " ").rstrip("Z"), event["type"],
                          "" if event["attempt"] is None else str(event["attempt"]),
                          event["code"] or "", detail)
        Console().print(table)


client_option = click.option("--client", metavar="NAME",
                             help="Only this client's (the API key's owner) data; default: all.")


def _transfer_client(transfer) -> str:
    from payouts_core.rules import parse_idempotency_key

    parsed = parse_idempotency_key(transfer.idempotency_key)
    return parsed[0] if parsed else ""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the transfers and totals as JSON.")
@click.option("--limit", type=click.IntRange(min=1), help="Show only the N most recent transfers.")
@client_option
def ledger(as_json: bool, limit: int | None, client: str | None) -> None:
    """Print the provider's ledger for reconciliation (the simulator's, or Efí's sent Pix)."""
    with ledger_side() as (_store, provider):
        transfers = [t for t in provider.transfers()
                     if client is None or _transfer_client(t) == client]
    settled = [t for t in transfers if t.status == "settled"]
    settled_cents = sum(t.amount_cents for t in settled)
    shown = transfers[-limit:] if limit else transfers
    if as_json:
        print_json({"transfers": [{**t.as_dict(), "client": _transfer_client(t)} for t in shown],
                    "totals": {"transfers": len(transfers), "settled": len(settled),
                               "settled_amount_cents": settled_cents}})
        return
    table = Table("created_at (UTC)", "client", "external_id", "status",
                  Column("amount", justify="right", no_wrap=True), "pix key", "e2e_id / code")
    for t in shown:
        outcome = t.e2e_id if t.status == "settled" else t.failure_code
        table.add_row(t.created_at[:19].replace("T", " "), _transfer_client(t), t.external_id, t.status,
                      brl(t.amount_cents), t.pix_key_masked, outcome or "")
    Console().print(table)
    more = f" (showing the last {len(shown)})" if len(shown) < len(transfers) else ""
    click.echo(f"Transfers: {len(transfers)}{more} | Settled: {len(settled)} | "
               f"Settled amount: {brl(settled_cents)}")


@cli.command()
@click.argument("batch_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the discrepancies as JSON.")
@click.option("--ledger/--no-ledger", "with_ledger", default=True, show_default=True,
              help="Also compare the ledger (PostgreSQL at DATABASE_URL) with Redis.")
@click.option("--archive-wait", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to wait for the archiver to take what Redis holds before comparing.")
@client_option
def reconcile(batch_id: str | None, as_json: bool, with_ledger: bool, archive_wait: float,
              client: str | None) -> None:
    """Compare Redis reports, the provider's transfers and the ledger; exit 1 when anything
    disagrees (an archive that lags is waited for, not reported)."""
    import psycopg

    from payouts_core.reconcile import LedgerCheck
    from payouts_core.reconcile import reconcile as find_discrepancies
    from payouts_core.settings import get_settings

    with ledger_side() as (store, provider):
        ledger = LedgerCheck(get_settings().ledger.database_url, archive_wait) if with_ledger else None
        try:
            found = find_discrepancies(store, provider, batch_id, client=client, ledger=ledger)
        except KeyError:
            raise CliError(f"unknown batch {batch_id!r}") from None
        except psycopg.OperationalError as exc:
            raise CliError(f"cannot reach the ledger at {redact_url(ledger.database_url)} "
                           f"({type(exc).__name__}); --no-ledger compares Redis and the provider "
                           "only") from None
    if as_json:
        print_json([d.as_dict() for d in found])
    else:
        for d in found:
            where = " ".join(x for x in (d.client and f"client={d.client}",
                                         d.batch_id and f"batch={d.batch_id}",
                                         d.external_id and f"external_id={d.external_id}") if x)
            click.echo(f"{d.kind}: {where}: {d.detail}")
        scope = f"batch {batch_id}" if batch_id else "all batches"
        scope += f" of client {client}" if client else " of all clients"
        click.echo(f"Reconciled {scope}: {len(found)} discrepancies")
    if found:
        sys.exit(1)


@cli.group()
def webhooks() -> None:
    """Your webhook endpoints (events such as batch.completed are POSTed to them, signed)."""


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the endpoints as JSON.")
@click.pass_context
def webhooks_list(ctx: click.Context, as_json: bool) -> None:
    _, body = _api(ctx).request("GET", "/api/webhooks")
    if as_json:
        print_json(body)
        return
    table = Table("id", "url", "events", "description")
    for endpoint in body["webhooks"]:
        table.add_row(endpoint["id"], endpoint["url"], ",".join(endpoint["events"]), endpoint["description"])
    Console().print(table)


@webhooks.command("add")
@click.argument("url")
@click.option("--event", "events", multiple=True, help="Event type to receive (repeatable; default all).")
@click.option("--description", default="", help="A note for yourself.")
@click.pass_context
def webhooks_add(ctx: click.Context, url: str, events: tuple[str, ...], description: str) -> None:
    """Register URL; prints the endpoint with its signing secret, shown only this once."""
    body = {"url": url, "description": description, **({"events": list(events)} if events else {})}
    _, created = _api(ctx).request("POST", "/api/webhooks", json=body)
    print_json(created)


@webhooks.command("delete")
@click.argument("endpoint_id")
@click.pass_context
def webhooks_delete(ctx: click.Context, endpoint_id: str) -> None:
    api = _api(ctx)
    try:
        response = api.session.delete(f"{api.base_url}/api/webhooks/{quote(endpoint_id, safe='')}",
                                      timeout=api.timeout)
    except requests.RequestException as exc:
        raise CliError(f"cannot reach the API at {api.base_url} ({_reason(exc, api.timeout)})") from None
    if response.status_code >= 400:
        raise ApiError(response)
    click.echo(f"deleted {endpoint_id}")

cli.add_command(db)
cli.add_command(archiver)

if __name__ == "__main__":
    cli()

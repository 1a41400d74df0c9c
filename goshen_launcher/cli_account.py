"""`goshen usage` and `goshen keys`: what your account spent and has, and its API keys."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from goshen_launcher.cli_login import JsonOption, signed_in
from goshen_launcher.cli_output import EXIT_CODES, credits, listing

keys_app = typer.Typer(help="Your API keys.", no_args_is_help=True)


def usage(
    start: Annotated[
        str | None, typer.Option(help="a day (2026-12-01) or a datetime; default: the 1st")
    ] = None,
    end: Annotated[str | None, typer.Option(help="a day (included) or a datetime")] = None,
    as_json: JsonOption = False,
) -> None:
    """Your usage over a range (this month by default), by model and day, and your credit."""
    with signed_in(as_json) as (client, output):
        report = client.usage(start=start or None, end=end or None)
        output.result(report, lambda console: show_usage(console, report))


def show_usage(console: Console, report: dict[str, Any]) -> None:
    credit = report["credit"]
    console.print(f"usage from {report['start']} to {report['end']}", markup=False)
    table = Table("model", "jobs", "requests", "images", "cost", box=None)
    for row in [*report["by_model"], {**report["totals"], "model": "total"}]:
        table.add_row(
            str(row["model"]),
            str(row["jobs"]),
            str(row["requests"]),
            str(row["images"]),
            credits(row["cost_micros"]),
        )
    console.print(table)
    console.print(
        f"balance {credits(credit['balance_micros'])}, held {credits(credit['held_micros'])}, "
        f"available {credits(credit['available_micros'])} credits",
        markup=False,
    )


@keys_app.command("create", epilog=EXIT_CODES)
def create_key(
    name: Annotated[str, typer.Argument(help="what the key is for")],
    scope: Annotated[
        list[str] | None,
        typer.Option(help="a scope it may use (repeat the option); default: all of yours"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API key; its secret is shown this once."""
    with signed_in(as_json) as (client, output):
        key = client.create_key(name, scopes=scope or None)
        output.say(f"API key {key['id']} ({key['name']}); shown once, store it now:")
        output.result(key, lambda console: console.print(key["key"], markup=False))


@keys_app.command("list", epilog=EXIT_CODES)
def list_keys(as_json: JsonOption = False) -> None:
    """Your API keys (never their secrets) (--json: a JSON array of them)."""
    with signed_in(as_json) as (client, output):
        keys = client.list_keys()
        output.result(keys, lambda console: console.print(keys_table(keys)))


def keys_table(keys: list[dict[str, Any]]) -> Table:
    table = listing("id", "name", "key", "scopes", "created", "revoked")
    for key in keys:
        table.add_row(
            key["id"],
            key["name"],
            f"{key['prefix']}…{key['last4']}",
            ",".join(key["scopes"]),
            key["created_at"],
            key["revoked_at"] or "",
        )
    return table


@keys_app.command("revoke", epilog=EXIT_CODES)
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="the key's id (goshen keys list)")],
    as_json: JsonOption = False,
) -> None:
    """Revoke an API key: it is refused from now on."""
    with signed_in(as_json) as (client, output):
        key = client.revoke_key(key_id)
        output.result(key, lambda console: console.print(f"revoked key {key['id']}"))

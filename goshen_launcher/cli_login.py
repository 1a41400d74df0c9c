"""Which API the developer's commands call, with which key: GOSHEN_API_URL and GOSHEN_API_KEY,
else what `goshen login` stored in the user's config folder (the variables win)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from goshen.client import Forbidden, GoshenClient
from goshen_launcher.cli_output import (
    EXIT_CODES,
    CommandError,
    ExitCode,
    Output,
    credits,
    reported,
)

DEFAULT_API_URL = "http://127.0.0.1:8000"
JsonOption = Annotated[
    bool, typer.Option("--json", help="print the API's JSON answer only (on stdout)")
]


@dataclass(frozen=True)
class Credentials:
    api_url: str
    api_key: str | None


def credentials_path() -> Path:
    """$XDG_CONFIG_HOME/goshen/credentials.json (~/.config/goshen/... when it is unset)."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "goshen" / "credentials.json"


def stored_credentials() -> dict[str, Any]:
    path = credentials_path()
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CommandError(
            f"cannot read {path} ({exc}) — run `goshen login` again or delete it"
        ) from exc
    return stored if isinstance(stored, dict) else {}


def current_credentials() -> Credentials:
    """The variables', else the stored login's, URL and key. The stored key goes only to the
    URL it was stored for: with GOSHEN_API_URL naming another API, it takes GOSHEN_API_KEY."""
    stored = stored_credentials()
    stored_url = str(stored.get("api_url") or DEFAULT_API_URL).rstrip("/")
    url = str(os.environ.get("GOSHEN_API_URL") or stored_url).rstrip("/")
    key = os.environ.get("GOSHEN_API_KEY") or (stored.get("api_key") if url == stored_url else None)
    return Credentials(url, str(key) if key else None)


def store_credentials(credentials: Credentials) -> Path:
    """Write the login readable by its user alone (folder 0700, file 0600), replacing any
    earlier one at once: the file is never there with other modes or half written."""
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump({"api_url": credentials.api_url, "api_key": credentials.api_key}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def signed_in(as_json: bool) -> Iterator[tuple[GoshenClient, Output]]:
    """A client for the current credentials and the command's output; what fails in the block
    ends the command with its one line and exit code."""
    output = Output(as_json)
    credentials = Credentials(DEFAULT_API_URL, None)
    with reported(output, DEFAULT_API_URL):
        credentials = current_credentials()
    with reported(output, credentials.api_url):
        if credentials.api_key is None:
            raise CommandError(
                f"not signed in to {credentials.api_url} — run `goshen login` or set "
                "GOSHEN_API_KEY (a stored login is used only at the URL it was made for)",
                ExitCode.NOT_SIGNED_IN,
            )
        with GoshenClient(credentials.api_url, credentials.api_key) as client:
            yield client, output


def login(
    api_key: Annotated[
        str | None,
        typer.Option(help="the key (gsk_...); asked for, unechoed, when left out"),
    ] = None,
    api_url: Annotated[
        str | None,
        typer.Option(help=f"the API; default GOSHEN_API_URL, the stored one, or {DEFAULT_API_URL}"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check an API key against the API and store it, with the API's URL, for later commands."""
    output = Output(as_json)
    with reported(output, api_url or DEFAULT_API_URL):
        url = (api_url or current_credentials().api_url).rstrip("/")
    key = api_key or typer.prompt("API key", hide_input=True, err=True)  # stdout: results
    with reported(output, url), GoshenClient(url, key) as client:
        try:
            balance: dict[str, Any] = client.balance()
        except Forbidden:
            balance = {}  # a key without the usage scope: known, so signed in all the same
        path = store_credentials(Credentials(url, key))
    output.say(f"signed in to {url}; the key is stored in {path}")
    document = {"api_url": url, "credentials": str(path), "balance": balance or None}
    output.result(document, lambda out: _show_balance(out, balance))


def _show_balance(out: Any, balance: dict[str, Any]) -> None:
    if balance:
        out.print(f"available credit: {credits(balance.get('available_micros'))}")


def logout(as_json: JsonOption = False) -> None:
    """Forget the stored key (GOSHEN_API_KEY, when set, still signs commands in)."""
    output = Output(as_json)
    path = credentials_path()
    existed = path.exists()
    path.unlink(missing_ok=True)
    output.say(f"signed out: {path} deleted" if existed else "not signed in: nothing stored")
    output.result({"credentials": str(path), "deleted": existed}, lambda out: None)


def add_login_commands(app: typer.Typer) -> None:
    app.command("login", epilog=EXIT_CODES)(login)
    app.command("logout", epilog=EXIT_CODES)(logout)

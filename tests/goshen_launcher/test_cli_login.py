"""`goshen login` and `goshen logout`: a key checked against the real API, stored for the user
alone, used by later commands unless GOSHEN_API_KEY says otherwise."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from goshen.config import Settings
from tests.fixtures.accounts import Account
from tests.fixtures.cli import GoshenCli

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_login_stores_the_key_for_later_commands(
    live_api: Settings, developer: Account, goshen_cli: GoshenCli, tmp_path: Path
) -> None:
    url = live_api.api_url
    stored = tmp_path / "config" / "goshen" / "credentials.json"

    refused = goshen_cli("login", "--api-url", url, "--api-key", "gsk_wrong")
    assert refused.exit_code == 3 and "goshen: 401 " in refused.stderr
    assert not stored.exists()

    # Asked for, unechoed, when not given.
    signed_in = goshen_cli("login", "--api-url", url, input=f"{developer.key}\n")
    assert signed_in.exit_code == 0, signed_in.stderr
    assert developer.key not in signed_in.stdout + signed_in.stderr
    assert f"signed in to {url}" in signed_in.stderr
    assert mode(stored) == 0o600 and mode(stored.parent) == 0o700
    assert json.loads(stored.read_text()) == {"api_url": url, "api_key": developer.key}

    listed = goshen_cli("keys", "list", "--json")  # no variables: the stored login
    assert listed.exit_code == 0, listed.stderr
    assert [key["id"] for key in json.loads(listed.stdout)] == [developer.key_id]

    elsewhere = goshen_cli("keys", "list", env={"GOSHEN_API_URL": "http://127.0.0.1:9"})
    assert elsewhere.exit_code == 3  # the stored key goes only to the API it was stored for
    assert "not signed in to http://127.0.0.1:9" in elsewhere.stderr

    overridden = goshen_cli("keys", "list", env={"GOSHEN_API_KEY": "gsk_wrong"})
    assert overridden.exit_code == 3  # the variable wins over the stored key

    logged_out = goshen_cli("logout")
    assert logged_out.exit_code == 0 and not stored.exists()
    assert goshen_cli("keys", "list").exit_code == 3


def test_a_new_login_replaces_the_file_keeping_it_private(
    live_api: Settings, developer: Account, goshen_cli: GoshenCli, tmp_path: Path
) -> None:
    folder = tmp_path / "config" / "goshen"
    folder.mkdir(parents=True, mode=0o755)
    (folder / "credentials.json").write_text("{}")
    (folder / "credentials.json").chmod(0o644)
    result = goshen_cli(  # the key asked for: the prompt goes to stderr, stdout is JSON
        "login", "--api-url", live_api.api_url, "--json", input=f"{developer.key}\n"
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["balance"]["available_micros"] > 0
    assert mode(folder) == 0o700 and mode(folder / "credentials.json") == 0o600
    assert [path.name for path in folder.iterdir()] == ["credentials.json"]  # no temporary left

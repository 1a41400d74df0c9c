"""What the developer's commands say when something fails: one line on stderr naming what to fix,
and an exit code that says what failed; colour as rich and NO_COLOR decide. Against the real API
on uvicorn."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db.models import Model
from goshen.ids import new_id
from tests.fixtures.accounts import Account, create_account
from tests.fixtures.cli import GoshenCli


def said(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_each_failure_is_one_line_and_its_exit_code(
    live_api: Settings,
    developer: Account,
    make_model: Callable[..., Model],
    sessions: sessionmaker[Session],
    goshen_cli: GoshenCli,
) -> None:
    url = live_api.api_url
    signed = {"GOSHEN_API_URL": url, "GOSHEN_API_KEY": developer.key}

    missing = new_id("job")
    not_found = goshen_cli("jobs", "get", missing, env=signed)
    assert not_found.exit_code == 4 and not_found.stdout == ""
    assert said(not_found.stderr) == [
        f"goshen: 404 no job with id {missing} — check the id or name (the list commands show them)"
    ]

    model = make_model()  # 1000 micro-credits an image
    poor = create_account(sessions, credits_micros=100)
    short = goshen_cli(
        "generate", model.name, "digit=1", env={**signed, "GOSHEN_API_KEY": poor.key}
    )
    assert short.exit_code == 5
    assert said(short.stderr) == [
        "goshen: 402 insufficient credits: need 0.001, have 0.0001 — add credit or ask an admin"
    ]

    revoked = goshen_cli("keys", "list", env={**signed, "GOSHEN_API_KEY": "gsk_not_a_key"})
    assert revoked.exit_code == 3 and len(said(revoked.stderr)) == 1
    assert said(revoked.stderr)[0].startswith("goshen: 401 ")
    assert "goshen login" in revoked.stderr and "Traceback" not in revoked.stderr

    invalid = goshen_cli("generate", model.name, "digit=12", env=signed)
    assert invalid.exit_code == 2
    assert said(invalid.stderr)[0].startswith("goshen: 422 ") and "input.digit" in invalid.stderr

    signed_out = goshen_cli("jobs", "list", env={"GOSHEN_API_URL": url})
    assert signed_out.exit_code == 3
    assert said(signed_out.stderr)[0].startswith(
        f"goshen: not signed in to {url} — run `goshen login` or set GOSHEN_API_KEY"
    )


def test_bad_arguments_exit_2_before_calling_the_api(goshen_cli: GoshenCli) -> None:
    env = {"GOSHEN_API_KEY": "gsk_x", "GOSHEN_API_URL": "http://127.0.0.1:9"}
    not_a_pair = goshen_cli("generate", "digits-diffusion", "digit", env=env)
    assert not_a_pair.exit_code == 2
    assert said(not_a_pair.stderr) == [
        "goshen: 'digit' is not KEY=VALUE (e.g. digit=7, prompt=\"a red fox\")"
    ]
    assert goshen_cli("jobs", "get", env=env).exit_code == 2  # typer: the id is missing


def test_an_unreachable_api_exits_7_naming_its_url(goshen_cli: GoshenCli) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused at once
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        # A POST is not retried, so the refusal comes back at once.
        result = goshen_cli(
            "keys", "create", "ci", env={"GOSHEN_API_URL": url, "GOSHEN_API_KEY": "k"}
        )
    assert result.exit_code == 7
    (line,) = said(result.stderr)
    assert line.startswith(f"goshen: cannot reach the API at {url} (ConnectError")
    assert line.endswith("— start it (goshen up) or set GOSHEN_API_URL")


def colours(text: str) -> list[str]:
    """The SGR sequences of `text` that set a colour (30-38, 40-48, 90-97, 100-107)."""
    return [
        code
        for code in re.findall(r"\x1b\[([0-9;]*)m", text)
        if any(re.fullmatch(r"3[0-8]|4[0-8]|9[0-7]|10[0-7]", part) for part in code.split(";"))
    ]


def test_no_color_turns_the_colours_off(goshen_cli: GoshenCli) -> None:
    env = {"GOSHEN_API_KEY": "gsk_x", "TTY_COMPATIBLE": "1"}
    coloured = goshen_cli("generate", "m", "oops", env=env)
    assert coloured.exit_code == 2 and colours(coloured.stderr)
    plain = goshen_cli("generate", "m", "oops", env={**env, "NO_COLOR": "1"})
    assert plain.exit_code == 2 and colours(plain.stderr) == []
    assert "goshen: 'oops' is not KEY=VALUE" in plain.stderr

"""What the developer's commands show: results on stdout (the API's JSON with --json), messages
and progress on stderr, and each failure as one line and an exit code that says what failed."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from goshen.client import (
    Conflict,
    Forbidden,
    GoshenAPIError,
    InsufficientCredits,
    InvalidInput,
    JobFailed,
    NotFound,
    RateLimited,
    Timeout,
    Unauthorized,
)

MICROS = 1_000_000


class ExitCode(IntEnum):
    """What a developer command's exit status says failed."""

    OK = 0
    JOB_FAILED = 1
    INVALID_INPUT = 2
    NOT_SIGNED_IN = 3
    NOT_FOUND = 4
    INSUFFICIENT_CREDITS = 5
    RATE_LIMITED = 6
    UNREACHABLE = 7
    CONFLICT = 8
    TIMED_OUT = 124
    INTERRUPTED = 130


EXIT_CODES = (
    "Exit codes: 0 ok; 1 the job failed or was canceled; 2 usage or invalid input (422); "
    "3 not signed in or not allowed (401, 403); 4 not found (404); 5 insufficient credits "
    "(402); 6 rate limited (429); 7 API unreachable or failing (5xx); 8 conflict: the object's "
    "state refuses it (409); 124 timed out; 130 interrupted."
)


class CommandError(Exception):
    """A failure the command itself finds (a file to read, a value to parse): its message says
    what to fix, `code` what failed."""

    def __init__(self, message: str, code: ExitCode = ExitCode.INVALID_INPUT) -> None:
        super().__init__(message)
        self.code = code


def credits(micros: int | None) -> str:
    """Micro-credits as credits: `12.5` for 12,500,000; `—` for none (as the dashboard shows)."""
    if micros is None:
        return "—"
    return f"{micros / MICROS:,.6f}".rstrip("0").rstrip(".")


def listing(*columns: str) -> Table:
    """A table whose first column, the objects' ids, is never cut: they are what the other
    commands take."""
    table = Table(box=None)
    table.add_column(columns[0], no_wrap=True, min_width=30)
    for column in columns[1:]:
        table.add_column(column)
    return table


class Output:
    """Where a command's words go: `out` (stdout) for results, `err` (stderr) for the rest.
    Rich decides colour (NO_COLOR, FORCE_COLOR) and whether stderr is a terminal; progress is
    drawn only there, and never with --json."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(soft_wrap=True, highlight=False)
        self.err = Console(stderr=True, soft_wrap=True, highlight=False)

    def result(self, document: Any, human: Callable[[Console], None]) -> None:
        """With --json the document alone; otherwise `human` shows it on stdout."""
        if self.as_json:
            sys.stdout.write(json.dumps(document, indent=2) + "\n")
            sys.stdout.flush()
        else:
            human(self.out)

    def say(self, message: str, style: str = "") -> None:
        """A message on stderr (never parsed as markup)."""
        self.err.print(Text(message, style=style))

    def fail(self, message: str, code: ExitCode) -> NoReturn:
        self.err.print(Text(f"goshen: {message}", style="bold red"))
        raise typer.Exit(code)

    def steps(self) -> Progress:
        """A bar of a job's steps: `step/total steps`."""
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeElapsedColumn(),
            console=self.err,
            disable=self.as_json or not self.err.is_terminal,
        )

    def transfer(self) -> Progress:
        """A bar of bytes sent."""
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=self.err,
            disable=self.as_json or not self.err.is_terminal,
        )


@contextmanager
def reported(output: Output, api_url: str) -> Iterator[None]:
    """Turn what fails in the block into one line on stderr and its exit code."""
    try:
        yield
    except (GoshenAPIError, JobFailed, CommandError, httpx.HTTPError, TimeoutError) as exc:
        code, message = explain(exc, api_url)
        output.fail(message, code)
    except KeyboardInterrupt:
        output.fail("interrupted", ExitCode.INTERRUPTED)


def explain(exc: Exception, api_url: str) -> tuple[ExitCode, str]:
    """The exit code and the one line that say what failed and what to do about it."""
    if isinstance(exc, CommandError):
        return exc.code, str(exc)
    if isinstance(exc, JobFailed):
        return ExitCode.JOB_FAILED, str(exc)
    if isinstance(exc, Timeout):
        return ExitCode.TIMED_OUT, f"{exc} — follow it with `goshen jobs watch {exc.job_id}`"
    if isinstance(exc, TimeoutError):
        return ExitCode.TIMED_OUT, str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return ExitCode.UNREACHABLE, f"the API at {api_url} did not answer in time ({exc})"
    if isinstance(exc, httpx.HTTPError):
        return ExitCode.UNREACHABLE, (
            f"cannot reach the API at {api_url} ({type(exc).__name__}: {exc}) — start it "
            "(goshen up) or set GOSHEN_API_URL"
        )
    assert isinstance(exc, GoshenAPIError)
    return _api_problem(exc)


def _api_problem(exc: GoshenAPIError) -> tuple[ExitCode, str]:
    status = exc.status_code
    detail = str(exc.problem.get("detail") or exc.problem.get("title") or "request failed")
    if isinstance(exc, InsufficientCredits):
        return ExitCode.INSUFFICIENT_CREDITS, _short_of_credit(exc, detail)
    if isinstance(exc, Unauthorized):
        return ExitCode.NOT_SIGNED_IN, (
            f"401 {detail} — sign in with `goshen login` or set GOSHEN_API_KEY to a live key"
        )
    if isinstance(exc, Forbidden):
        return ExitCode.NOT_SIGNED_IN, (
            f"403 {detail} — use a key with the scope this needs, or ask an admin"
        )
    if isinstance(exc, NotFound):
        return (
            ExitCode.NOT_FOUND,
            f"404 {detail} — check the id or name (the list commands show them)",
        )
    if isinstance(exc, RateLimited):
        wait = f"in {exc.retry_after:g} s" if exc.retry_after is not None else "later"
        return ExitCode.RATE_LIMITED, f"429 {detail} — try again {wait}"
    if isinstance(exc, Conflict):
        return ExitCode.CONFLICT, f"409 {detail}"
    if isinstance(exc, InvalidInput):
        fields = "; ".join(f"{field}: {message}" for field, message in exc.fields)
        return ExitCode.INVALID_INPUT, f"422 {detail}" + (f" ({fields})" if fields else "")
    if status >= 500:
        return ExitCode.UNREACHABLE, f"{status} {detail} — the platform is failing; try again later"
    return ExitCode.INVALID_INPUT, f"{status} {detail}"


def _short_of_credit(exc: InsufficientCredits, detail: str) -> str:
    need = credits(exc.required)
    cap = exc.problem.get("cap")
    if isinstance(cap, int):
        spent = credits(exc.problem.get("spent"))
        return (
            f"402 this key's monthly spend cap is reached: need {need}, cap {credits(cap)}, "
            f"spent {spent} — raise the key's cap or use another key"
        )
    if exc.required is None or exc.available is None:
        return f"402 {detail} — add credit or ask an admin"
    return (
        f"402 insufficient credits: need {need}, have {credits(exc.available)} — add credit or "
        "ask an admin"
    )

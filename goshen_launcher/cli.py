"""The `goshen` command: the operator's commands (run the platform, migrate, add models and
admins; goshen_launcher.cli_operator) and the developer's, which call the HTTP API through the
SDK (generate, jobs, predict, datasets, train, usage, keys, login).

Importing it imports no serving, pipeline or dashboard code, nor their heavy libraries: each
operator command imports what it runs when it runs, so a base install runs the developer's."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from goshen_launcher.cli_account import keys_app, usage
from goshen_launcher.cli_datasets import datasets_app
from goshen_launcher.cli_generate import add_generate_commands
from goshen_launcher.cli_jobs import jobs_app
from goshen_launcher.cli_login import add_login_commands
from goshen_launcher.cli_operator import add_operator_commands
from goshen_launcher.cli_output import EXIT_CODES
from goshen_launcher.cli_training import add_training_commands


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="goshen",
        help="Goshen: a self-hosted ML platform. The operator's commands read GOSHEN_* "
        "settings; the developer's call the API at GOSHEN_API_URL with GOSHEN_API_KEY, or "
        "with what `goshen login` stored.",
        no_args_is_help=True,
        # Tracebacks with their local variables would show API keys.
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    train_app = typer.Typer(
        help="Train models: the built-in ones (digits) or your own (submit, get, logs, cancel).",
        no_args_is_help=True,
    )
    add_operator_commands(app, train_app)
    add_training_commands(train_app)
    app.add_typer(train_app, name="train")
    add_login_commands(app)
    add_generate_commands(app)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(datasets_app, name="datasets")
    app.command("usage", epilog=EXIT_CODES)(usage)
    app.add_typer(keys_app, name="keys")
    return app


app = build_app()


def main(argv: Sequence[str] | None = None) -> int:
    """Run `goshen` with `argv` (the process's arguments when None); its exit status."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="goshen")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The operator's `goshen` commands: run the platform's processes, migrate its database, add
pipelines and admins. Each loads the settings (GOSHEN_* variables) and imports what it runs only
when it runs, so the developer's commands work on a base install."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from goshen.config import LogFormat, Settings, SettingsError, load_settings
from goshen.errors import GoshenError
from goshen.logs import configure_logging
from goshen.tracing import configure_tracing

OPERATOR_EPILOG = (
    "Settings come from GOSHEN_* variables (and .env). Exit codes: 0 done, 2 a setting or an "
    "argument to fix (the message says which), 130 interrupted."
)


def run_with_settings(command: Callable[[Settings], int], service: str | None = None) -> None:
    """Run an operator command with the settings; its exit status, 2 for an error to fix.

    Its log lines are as GOSHEN_LOG_FORMAT says (goshen.logs); a `service` (a process of the
    platform that handles jobs) also exports its spans as GOSHEN_TRACES_EXPORTER says."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"goshen: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    if settings.log_format is LogFormat.json:
        # MLflow's download progress bars (a worker loading a model) are not log lines.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Alembic narrates every plugin and step at INFO; commands report the revision themselves.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        if service is not None:
            configure_tracing(settings.traces_exporter, f"goshen-{service}")
        code = command(settings)
    except (GoshenError, SettingsError) as exc:
        print(f"goshen: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


def up() -> None:
    """Run every service on this machine."""
    from goshen_launcher.up import run_platform

    run_with_settings(run_platform)


def demo() -> None:
    """Run every service and walk through the API once they answer."""

    def run(settings: Settings) -> int:
        from goshen_launcher.demo import walkthrough
        from goshen_launcher.up import run_platform

        return run_platform(settings, on_ready=lambda: walkthrough(settings))

    run_with_settings(run)


def train_digits() -> None:
    """digits-diffusion and digits-classifier, end to end, with progress."""

    def run(settings: Settings) -> int:
        # The pipelines own training; the CLI only hands them the settings.
        from goshen_pipelines.train import train_digits

        return train_digits(settings)

    run_with_settings(run)


def worker(
    gpus: Annotated[
        str | None,
        typer.Option(
            help="`all`, or GPU indexes like 0,1: one worker per GPU, each pinned to its device, "
            "supervised and stopped together (exit code 2 when no such GPU is visible). "
            "Without it: one worker, on the first GPU or the CPU."
        ),
    ] = None,
) -> None:
    """Run a job worker (or one per GPU with --gpus)."""

    def run(settings: Settings) -> int:
        if gpus is not None:
            from goshen_launcher.gpu_workers import run_gpu_workers

            return run_gpu_workers(settings, gpus)
        # The worker lives with the serving code; it needs no web framework.
        from serving.worker.loop import run_worker

        return run_worker(settings)

    run_with_settings(run, service="worker")


def webhooks() -> None:
    """Deliver job webhooks (signed, retried); any number may run."""

    def run(settings: Settings) -> int:
        import signal
        import threading

        from serving.webhooks.delivery import run_dispatcher

        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        return run_dispatcher(settings, stop)

    run_with_settings(run, service="webhooks")


def api() -> None:
    """Run the HTTP API alone."""

    def run(settings: Settings) -> int:
        # uvicorn, with the API's shutdown (streams told to end) and connection limits.
        from serving.server import serve

        return serve(settings)

    run_with_settings(run, service="api")


def mlflow() -> None:
    """Run the MLflow tracking server."""

    def run(settings: Settings) -> int:
        from goshen.tracking import run_tracking_server

        return run_tracking_server(settings)

    run_with_settings(run)


db_app = typer.Typer(help="Platform database schema.", no_args_is_help=True)


@db_app.command("upgrade", epilog=OPERATOR_EPILOG)
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Migrate the schema forward."""

    def run(settings: Settings) -> int:
        from goshen.db import migrate

        migrate.upgrade(settings.resolved_database_url, revision)
        print(f"database at revision {_revision(settings)}")
        return 0

    run_with_settings(run)


# "-1" is a revision (one back), not an option.
@db_app.command(
    "downgrade", epilog=OPERATOR_EPILOG, context_settings={"ignore_unknown_options": True}
)
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="target revision, e.g. -1 or base")],
) -> None:
    """Migrate the schema back."""

    def run(settings: Settings) -> int:
        from goshen.db import migrate

        migrate.downgrade(settings.resolved_database_url, revision)
        print(f"database at revision {_revision(settings)}")
        return 0

    run_with_settings(run)


@db_app.command("current", epilog=OPERATOR_EPILOG)
def db_current() -> None:
    """Show the schema revision."""

    def run(settings: Settings) -> int:
        from goshen.db import migrate

        print(f"database at revision {_revision(settings)} (latest: {migrate.head_revision()})")
        return 0

    run_with_settings(run)


def _revision(settings: Settings) -> str:
    from goshen.db import make_engine, migrate

    engine = make_engine(settings.resolved_database_url)
    try:
        return migrate.current_revision(engine) or "base (empty)"
    finally:
        engine.dispose()


models_app = typer.Typer(help="The model catalog.", no_args_is_help=True)


class Unit(StrEnum):
    """What a pipeline entry is priced per."""

    image = "image"
    second = "second"
    request = "request"


@models_app.command("add-pipeline", epilog=OPERATOR_EPILOG)
def models_add_pipeline(
    folder: Annotated[
        Path, typer.Argument(help="a saved pipeline (model_index.json, safetensors)")
    ],
    name: Annotated[
        str,
        typer.Option(
            help="catalog and registered model name; an existing pipeline entry's name adds a "
            "version to it and serves it"
        ),
    ],
    description: Annotated[str | None, typer.Option(help="new entries: empty by default")] = None,
    unit: Annotated[Unit | None, typer.Option(help="new entries: image by default")] = None,
    price_micros: Annotated[
        int | None, typer.Option(help="per unit, in micro-credits; new entries: 0 by default")
    ] = None,
    owner: Annotated[
        str | None,
        typer.Option(metavar="EMAIL", help="a private entry of this user's, named <user id>.NAME"),
    ] = None,
    private: Annotated[
        bool, typer.Option("--private", help="with --owner (which implies it)")
    ] = False,
    no_deploy: Annotated[
        bool,
        typer.Option(
            "--no-deploy",
            help="register a new version of an existing entry only; it keeps serving what it "
            "served",
        ),
    ] = False,
) -> None:
    """Register a diffusers text-to-image pipeline folder in MLflow and serve it."""

    def run(settings: Settings) -> int:
        from goshen_launcher.add_pipeline import PipelineRequest, add_pipeline

        request = PipelineRequest(
            folder=folder,
            name=name,
            description=description,
            unit=unit.value if unit is not None else None,
            price_micros=price_micros,
            owner=owner,
            private=private,
            no_deploy=no_deploy,
        )
        return add_pipeline(settings, request)

    run_with_settings(run)


admin_app = typer.Typer(help="Administration.", no_args_is_help=True)


@admin_app.command("create", epilog=OPERATOR_EPILOG)
def admin_create(
    email: Annotated[str, typer.Option()],
    name: Annotated[str, typer.Option()] = "",
) -> None:
    """Create an admin user and print its API key once."""

    def run(settings: Settings) -> int:
        from goshen import accounts
        from goshen.db import make_engine, make_sessionmaker, migrate, session_scope

        engine = make_engine(settings.resolved_database_url)
        try:
            migrate.upgrade(engine)
            with session_scope(make_sessionmaker(engine)) as session:
                user, key, plaintext = accounts.create_admin(
                    session,
                    email=email,
                    name=name,
                    credits_micros=settings.new_user_credits_micros,
                )
        finally:
            engine.dispose()
        print(f"created admin {user.email} ({user.id})")
        print(f"API key {key.id}; shown once, store it now:")
        print(plaintext)
        return 0

    run_with_settings(run)


def add_operator_commands(app: typer.Typer, train_app: typer.Typer) -> None:
    """The operator's commands on `app`; `train digits` on the `train` group."""
    for command in (up, demo, worker, webhooks, api, mlflow):
        app.command(command.__name__, epilog=OPERATOR_EPILOG)(command)
    train_app.command("digits", epilog=OPERATOR_EPILOG)(train_digits)
    app.add_typer(db_app, name="db")
    app.add_typer(models_app, name="models")
    app.add_typer(admin_app, name="admin")

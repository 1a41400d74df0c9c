"""The `goshen` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from goshen.config import Settings, SettingsError, load_settings
from goshen.errors import GoshenError

Command = Callable[[Settings, argparse.Namespace], int]


def _up(settings: Settings, _args: argparse.Namespace) -> int:
    from goshen_launcher.up import run_platform

    return run_platform(settings)


def _demo(settings: Settings, _args: argparse.Namespace) -> int:
    from goshen_launcher.demo import walkthrough
    from goshen_launcher.up import run_platform

    return run_platform(settings, on_ready=lambda: walkthrough(settings))


def _train(settings: Settings, args: argparse.Namespace) -> int:
    # The pipelines own training; the CLI only hands them the settings.
    from goshen_pipelines.train import train_digits

    return train_digits(settings)


def _worker(settings: Settings, _args: argparse.Namespace) -> int:
    # The worker lives with the serving code; it needs no web framework.
    from serving.worker.loop import run_worker

    return run_worker(settings)


def _webhooks(settings: Settings, _args: argparse.Namespace) -> int:
    import signal
    import threading

    from serving.webhooks.delivery import run_dispatcher

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return run_dispatcher(settings, stop)


def _api(settings: Settings, _args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
    )
    return 0


def _mlflow(settings: Settings, _args: argparse.Namespace) -> int:
    from goshen.tracking import run_tracking_server

    return run_tracking_server(settings)


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from goshen.db import migrate

    migrate.upgrade(settings.resolved_database_url, args.revision)
    print(f"database at revision {_revision(settings)}")
    return 0


def _db_downgrade(settings: Settings, args: argparse.Namespace) -> int:
    from goshen.db import migrate

    migrate.downgrade(settings.resolved_database_url, args.revision)
    print(f"database at revision {_revision(settings)}")
    return 0


def _db_current(settings: Settings, _args: argparse.Namespace) -> int:
    from goshen.db import migrate

    print(f"database at revision {_revision(settings)} (latest: {migrate.head_revision()})")
    return 0


def _revision(settings: Settings) -> str:
    from goshen.db import make_engine, migrate

    engine = make_engine(settings.resolved_database_url)
    try:
        return migrate.current_revision(engine) or "base (empty)"
    finally:
        engine.dispose()


def _admin_create(settings: Settings, args: argparse.Namespace) -> int:
    from goshen import accounts
    from goshen.db import make_engine, make_sessionmaker, migrate, session_scope

    engine = make_engine(settings.resolved_database_url)
    try:
        migrate.upgrade(engine)
        with session_scope(make_sessionmaker(engine)) as session:
            user, key, plaintext = accounts.create_admin(
                session,
                email=args.email,
                name=args.name,
                credits_micros=settings.new_user_credits_micros,
            )
    finally:
        engine.dispose()
    print(f"created admin {user.email} ({user.id})")
    print(f"API key {key.id}; shown once, store it now:")
    print(plaintext)
    return 0


def _models_add_pipeline(settings: Settings, args: argparse.Namespace) -> int:
    from goshen_launcher.add_pipeline import add_pipeline

    return add_pipeline(settings, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goshen",
        description="Goshen: a self-hosted ML platform. Settings come from GOSHEN_* variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("up", help="run every service on this machine").set_defaults(run=_up)
    commands.add_parser(
        "demo", help="run every service and walk through the API once they answer"
    ).set_defaults(run=_demo)
    train = commands.add_parser("train", help="train the built-in models").add_subparsers(
        dest="train_command", required=True, metavar="MODELS"
    )
    train.add_parser(
        "digits", help="digits-diffusion and digits-classifier, end to end, with progress"
    ).set_defaults(run=_train)
    commands.add_parser("worker", help="run a job worker").set_defaults(run=_worker)
    commands.add_parser(
        "webhooks", help="deliver job webhooks (signed, retried); any number may run"
    ).set_defaults(run=_webhooks)
    commands.add_parser("api", help="run the HTTP API alone").set_defaults(run=_api)
    commands.add_parser("mlflow", help="run the MLflow tracking server").set_defaults(run=_mlflow)

    db = commands.add_parser("db", help="platform database schema").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    upgrade = db.add_parser("upgrade", help="migrate the schema forward")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(run=_db_upgrade)
    downgrade = db.add_parser("downgrade", help="migrate the schema back")
    downgrade.add_argument("revision", help="target revision, e.g. -1 or base")
    downgrade.set_defaults(run=_db_downgrade)
    db.add_parser("current", help="show the schema revision").set_defaults(run=_db_current)

    models = commands.add_parser("models", help="the model catalog").add_subparsers(
        dest="models_command", required=True, metavar="ACTION"
    )
    pipeline = models.add_parser(
        "add-pipeline",
        help="register a diffusers text-to-image pipeline folder in MLflow and serve it",
    )
    pipeline.add_argument("folder", help="a saved pipeline (model_index.json, safetensors)")
    pipeline.add_argument(
        "--name",
        required=True,
        help="catalog and registered model name; an existing pipeline entry's name adds a "
        "version to it and serves it",
    )
    pipeline.add_argument("--description", help="new entries: empty by default")
    pipeline.add_argument(
        "--unit", choices=["image", "second", "request"], help="new entries: image by default"
    )
    pipeline.add_argument(
        "--price-micros", type=int, help="per unit, in micro-credits; new entries: 0 by default"
    )
    pipeline.add_argument(
        "--owner", metavar="EMAIL", help="a private entry of this user's, named <user id>.NAME"
    )
    pipeline.add_argument("--private", action="store_true", help="with --owner (which implies it)")
    pipeline.add_argument(
        "--no-deploy",
        action="store_true",
        help="register a new version of an existing entry only; it keeps serving what it served",
    )
    pipeline.set_defaults(run=_models_add_pipeline)

    admin = commands.add_parser("admin", help="administration").add_subparsers(
        dest="admin_command", required=True, metavar="ACTION"
    )
    create = admin.add_parser("create", help="create an admin user and print its API key once")
    create.add_argument("--email", required=True)
    create.add_argument("--name", default="")
    create.set_defaults(run=_admin_create)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"goshen: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Alembic narrates every plugin and step at INFO; commands report the revision themselves.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    # Each subcommand's function, set by build_parser.
    run: Callable[[Settings, argparse.Namespace], int] = args.run
    try:
        return run(settings, args)
    except (GoshenError, SettingsError) as exc:
        print(f"goshen: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

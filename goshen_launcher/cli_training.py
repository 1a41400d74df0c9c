"""`goshen train submit | get | logs | cancel`: train a model of your own on your dataset."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

from goshen.client import JobFailed
from goshen.client_errors import UNSUCCESSFUL_STATUSES
from goshen_launcher.cli_login import JsonOption, signed_in
from goshen_launcher.cli_output import EXIT_CODES, CommandError, credits

TrainingJobId = Annotated[str, typer.Argument(help="the training job's id")]


def submit(
    dataset: Annotated[str, typer.Option(help="the dataset's id (goshen datasets list)")],
    task: Annotated[str, typer.Option(help="diffusion, classification or regression")],
    model: Annotated[str, typer.Option(help="your name for the model it makes")],
    config: Annotated[
        str | None, typer.Option(help='training settings as a JSON object, e.g. {"epochs": 3}')
    ] = None,
    deploy: Annotated[
        str | None, typer.Option(help="auto (the default), pin or none: what its version does")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a training job; it holds its estimated cost from your credit until it ends."""
    with signed_in(as_json) as (client, output):
        settings = _config(config)
        job = client.train(dataset, task, model, config=settings, deploy=deploy)
        output.result(job, lambda console: show_training_job(console, job))


def _config(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"--config is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CommandError('--config must be a JSON object, e.g. {"epochs": 3}')
    return config


def show_training_job(console: Console, job: dict[str, Any]) -> None:
    lines = [
        f"training job {job['id']}: {job['task']} model {job['model_name']} {job['status']}",
        f"estimated cost {credits(job.get('estimated_cost_micros'))} credits, "
        f"charged {credits(job.get('cost_micros'))}",
    ]
    if job.get("registered_version"):
        lines.append(f"registered version {job['registered_version']}")
    if job.get("error"):
        lines.append(f"error: {job['error']}")
    for line in lines:
        console.print(line, markup=False)


def get(job_id: TrainingJobId, as_json: JsonOption = False) -> None:
    """A training job: its status, cost and the version it registered."""
    with signed_in(as_json) as (client, output):
        job = client.get_training_job(job_id)
        output.result(job, lambda console: show_training_job(console, job))


def logs(
    job_id: TrainingJobId,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="follow the log until the job ends")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The job's log so far; with -f, line by line until the job ends.

    With -f the exit status is 1 when the job failed or was canceled. --json prints
    {"id", "status", "lines"} once the log is read."""
    with signed_in(as_json) as (client, output):
        lines: list[str] = []
        status = None
        for event in client.training_logs(job_id):
            if event.kind == "log":
                lines.append(event.data["message"])
                if not as_json:
                    output.out.print(event.data["message"], markup=False)
            elif event.kind in ("status", "done"):
                status = event.data["status"]
                # The first status comes after the lines already written.
                if not follow or event.kind == "done":
                    break
        output.result({"id": job_id, "status": status, "lines": lines}, lambda _console: None)
        if follow and status in UNSUCCESSFUL_STATUSES:
            raise JobFailed(client.get_training_job(job_id))


def cancel(job_id: TrainingJobId, as_json: JsonOption = False) -> None:
    """Cancel a training job: charged the seconds it ran (nothing while queued)."""
    with signed_in(as_json) as (client, output):
        job = client.cancel_training_job(job_id)
        output.result(job, lambda console: show_training_job(console, job))


def add_training_commands(train_app: typer.Typer) -> None:
    for name, command in (("submit", submit), ("get", get), ("logs", logs), ("cancel", cancel)):
        train_app.command(name, epilog=EXIT_CODES)(command)

"""`goshen jobs`: your generation jobs, listed, read, followed and canceled."""

from __future__ import annotations

import itertools
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from goshen_launcher.cli_generate import ended, follow_job
from goshen_launcher.cli_login import JsonOption, signed_in
from goshen_launcher.cli_output import EXIT_CODES, credits, listing

jobs_app = typer.Typer(help="Your generation jobs.", no_args_is_help=True)
JobId = Annotated[str, typer.Argument(help="the job's id (goshen jobs list)")]


@jobs_app.command("list", epilog=EXIT_CODES)
def list_jobs(
    status: Annotated[
        str | None, typer.Option(help="queued, running, succeeded, failed or canceled")
    ] = None,
    model: Annotated[str | None, typer.Option(help="a catalog model's name")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest first")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Your jobs, newest first (--json: a JSON array of them)."""
    with signed_in(as_json) as (client, output):
        jobs = list(itertools.islice(client.list_jobs(status=status, model=model), limit))
        output.result(jobs, lambda console: console.print(jobs_table(jobs)))


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = listing("id", "model", "status", "created", "cost")
    for job in jobs:
        table.add_row(
            job["id"], job["model"], job["status"], job["created_at"], credits(job["cost_micros"])
        )
    return table


@jobs_app.command("get", epilog=EXIT_CODES)
def get_job(job_id: JobId, as_json: JsonOption = False) -> None:
    """A job: its status, progress, cost and output links."""
    with signed_in(as_json) as (client, output):
        job = client.get_job(job_id)
        output.result(job, lambda console: show_job(console, job))


def show_job(console: Console, job: dict[str, Any]) -> None:
    progress = job.get("progress") or {}
    lines = [
        f"job {job['id']}: {job['model']} {job['status']}",
        f"created {job['created_at']}, attempts {job['attempts']}",
        f"cost {credits(job.get('cost_micros'))} credits",
    ]
    if progress:
        lines.append(f"progress {progress.get('step')}/{progress.get('total')} steps")
    if job.get("error"):
        lines.append(f"error: {job['error']}")
    lines += [image["url"] for image in (job.get("output") or {}).get("images", [])]
    for line in lines:
        console.print(line, markup=False)


@jobs_app.command("watch", epilog=EXIT_CODES)
def watch_job(
    job_id: JobId,
    timeout: Annotated[
        float | None, typer.Option(help="seconds to wait (the job goes on past them)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Follow a job until it ends, drawing its progress; exit 1 when it failed or was canceled."""
    with signed_in(as_json) as (client, output):
        job = follow_job(client, client.get_job(job_id), output, timeout)
        output.say(f"job {job['id']} {job['status']}, cost {credits(job.get('cost_micros'))}")
        ended(job, output)


@jobs_app.command("cancel", epilog=EXIT_CODES)
def cancel_job(job_id: JobId, as_json: JsonOption = False) -> None:
    """Cancel a job: a queued one ends at once, a running one at its next step."""
    with signed_in(as_json) as (client, output):
        job = client.cancel_job(job_id)
        output.result(job, lambda console: console.print(f"job {job['id']} {job['status']}"))

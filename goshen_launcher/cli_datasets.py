"""`goshen datasets`: upload what training jobs train on, list, read and delete it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from goshen_launcher.cli_login import JsonOption, signed_in
from goshen_launcher.cli_output import EXIT_CODES, CommandError, listing

datasets_app = typer.Typer(help="Your datasets.", no_args_is_help=True)
DatasetId = Annotated[str, typer.Argument(help="the dataset's id (goshen datasets list)")]


@datasets_app.command("upload", epilog=EXIT_CODES)
def upload(
    file: Annotated[Path, typer.Argument(help="an image archive (.zip, .tar.gz) or a CSV/Parquet")],
    name: Annotated[str, typer.Option(help="the dataset's name")],
    kind: Annotated[
        str | None, typer.Option(help="images or tabular; by default told from the file")
    ] = None,
    target: Annotated[str | None, typer.Option(help="a table's column to predict")] = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a dataset, drawing the bytes sent; it ingests next (goshen datasets get ID)."""
    with signed_in(as_json) as (client, output):
        if not file.is_file():
            raise CommandError(f"{file} is not a file")
        with output.transfer() as progress:
            bar = progress.add_task(f"uploading {file.name}", total=file.stat().st_size)

            def sent(done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total)

            dataset = client.upload_dataset(file, name, kind=kind, target=target, on_progress=sent)
        output.result(dataset, lambda console: show_dataset(console, dataset))


def show_dataset(console: Console, dataset: dict[str, Any]) -> None:
    console.print(
        f"dataset {dataset['id']}: {dataset['name']} ({dataset['kind']}) {dataset['status']}",
        markup=False,
    )
    progress = dataset.get("progress")
    if progress and dataset["status"] not in ("ready", "failed"):
        console.print(f"{progress['stage']}: {progress['done']}/{progress['total']}", markup=False)
    if dataset.get("error"):
        console.print(f"error: {dataset['error']}", markup=False)


@datasets_app.command("list", epilog=EXIT_CODES)
def list_datasets(as_json: JsonOption = False) -> None:
    """Your datasets, newest first (--json: a JSON array of them)."""
    with signed_in(as_json) as (client, output):
        datasets = list(client.list_datasets())
        output.result(datasets, lambda console: console.print(datasets_table(datasets)))


def datasets_table(datasets: list[dict[str, Any]]) -> Table:
    table = listing("id", "name", "kind", "status", "files", "bytes", "created")
    for dataset in datasets:
        table.add_row(
            dataset["id"],
            dataset["name"],
            dataset["kind"],
            dataset["status"],
            str(dataset["file_count"]),
            f"{dataset['size_bytes']:,}",
            dataset["created_at"],
        )
    return table


@datasets_app.command("get", epilog=EXIT_CODES)
def get_dataset(dataset_id: DatasetId, as_json: JsonOption = False) -> None:
    """A dataset: its status and how far its ingestion is."""
    with signed_in(as_json) as (client, output):
        dataset = client.get_dataset(dataset_id)
        output.result(dataset, lambda console: show_dataset(console, dataset))


@datasets_app.command("delete", epilog=EXIT_CODES)
def delete_dataset(dataset_id: DatasetId, as_json: JsonOption = False) -> None:
    """Delete a dataset's files and record (refused while a training job uses it: exit 8)."""
    with signed_in(as_json) as (client, output):
        dataset = client.delete_dataset(dataset_id)
        output.result(dataset, lambda console: console.print(f"deleted dataset {dataset['id']}"))

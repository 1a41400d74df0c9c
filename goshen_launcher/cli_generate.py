"""`goshen generate` and `goshen predict`: run a catalog model from the shell, through the SDK."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.text import Text

from goshen.client import GoshenClient, JobEvent, JobFailed, Timeout
from goshen.client_errors import ENDED_STATUSES, UNSUCCESSFUL_STATUSES
from goshen.client_retries import CONNECTION_ERRORS
from goshen.client_streams import job_events as job_stream
from goshen_launcher.cli_login import JsonOption, signed_in
from goshen_launcher.cli_output import EXIT_CODES, CommandError, Output, credits

GENERATE_EPILOG = (
    "Inputs: KEY=VALUE, the value read as JSON when it is JSON (digit=7 is 7, prompt=hello is "
    '"hello"), over those of --input. Images are written to DIR as <job id>-<n>.png. ' + EXIT_CODES
)
# The longest a job's stream is read before it is opened again from its last event.
WINDOW_SECONDS = 60.0


def parse_inputs(pairs: list[str], input_file: Path | None) -> dict[str, Any]:
    """--input's object, then each KEY=VALUE over it (VALUE as JSON when it parses)."""
    inputs: dict[str, Any] = {}
    if input_file is not None:
        document = read_json(input_file)
        if not isinstance(document, dict):
            raise CommandError(f"{input_file} holds {type(document).__name__}, not an object")
        inputs.update(document)
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise CommandError(f'{pair!r} is not KEY=VALUE (e.g. digit=7, prompt="a red fox")')
        try:
            inputs[key] = json.loads(value)
        except ValueError:
            inputs[key] = value
    return inputs


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise CommandError(f"{path} is not JSON: {exc}") from exc


def follow_job(
    client: GoshenClient, job: dict[str, Any], output: Output, timeout: float | None
) -> dict[str, Any]:
    """Follow the job's events, drawing its steps, until it ends; the job as it ended. A
    stream that breaks (a proxy, a network) is opened again after its last event. Past
    `timeout` seconds, Timeout (the job goes on), even while no event comes."""
    job_id = job["id"]
    deadline = None if timeout is None else time.monotonic() + timeout
    resume = job_stream(job_id, None, client.retries)
    with output.steps() as progress:
        bar = progress.add_task(f"{job_id} {job['status']}", total=None)
        while True:
            # Each stream is read for a window at most: a connection gone silent (keep-alives
            # come every 15 s) is noticed, and a stream open at the deadline ends at it.
            window = time.monotonic() + WINDOW_SECONDS
            window = window if deadline is None else min(window, deadline)
            cut: Exception | None = None
            try:
                for event in client.job_events(job_id, resume.last_event_id, deadline=window):
                    resume.seen(event)
                    _draw(event, job_id, progress, bar, output)
            except (TimeoutError, *CONNECTION_ERRORS) as exc:
                cut = None if time.monotonic() >= window else exc
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(job_id, timeout or 0)
            job = client.get_job(job_id)  # ended, or the stream ended without `done`
            if job["status"] in ENDED_STATUSES:
                return job
            if time.monotonic() < window:  # cut or closed early: wait before opening again
                time.sleep(resume.cut(cut))


def _draw(event: JobEvent, job_id: str, progress: Progress, bar: TaskID, output: Output) -> None:
    if event.kind == "progress":
        progress.update(bar, completed=event.data["step"], total=event.data["total"])
    elif event.kind == "status":
        progress.update(bar, description=f"{job_id} {event.data['status']}")
    elif event.kind == "log" and not output.as_json:
        progress.console.print(Text(event.data["message"], style="dim"))


def ended(job: dict[str, Any], output: Output) -> None:
    """With --json the job; raises JobFailed when it failed or was canceled."""
    output.result(job, lambda _out: None)
    if job["status"] in UNSUCCESSFUL_STATUSES:
        raise JobFailed(job)


def generate(
    model: Annotated[str, typer.Argument(help="a catalog model, e.g. digits-diffusion")],
    pairs: Annotated[
        list[str] | None, typer.Argument(metavar="[KEY=VALUE]...", help="the model's inputs")
    ] = None,
    out: Annotated[Path, typer.Option(help="folder the images are written to")] = Path("."),
    input_file: Annotated[
        Path | None, typer.Option("--input", help="a JSON file of the inputs (an object)")
    ] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="print the job's id and end")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="seconds to wait for the job (it goes on past them)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Generate images with MODEL, drawing the job's progress, and save them to --out."""
    with signed_in(as_json) as (client, output):
        inputs = parse_inputs(pairs or [], input_file)
        job = client.generate(model, inputs)
        if no_wait:
            output.result(job, lambda console: console.print(job["id"]))
            return
        output.say(f"job {job['id']} queued: goshen jobs watch {job['id']}", style="dim")
        job = follow_job(client, job, output, timeout)
        if job["status"] in UNSUCCESSFUL_STATUSES:
            ended(job, output)
        files = save_images(client, job, out)
        output.result(job, lambda console: _show_files(console, files))
        output.say(
            f"job {job['id']} {job['status']}: {len(files)} image(s), "
            f"cost {credits(job.get('cost_micros'))} credits"
        )


def save_images(client: GoshenClient, job: dict[str, Any], folder: Path) -> list[Path]:
    """Each output image of the job as <folder>/<job id>-<n>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for number, image in enumerate((job.get("output") or {}).get("images", [])):
        path = folder / f"{job['id']}-{number}.png"
        path.write_bytes(client.download(image["url"]))
        files.append(path)
    return files


def _show_files(console: Console, files: list[Path]) -> None:
    for path in files:
        console.print(str(path), markup=False)


def predict(
    model: Annotated[str, typer.Argument(help="a catalog ONNX model, e.g. digits-classifier")],
    input_file: Annotated[
        Path,
        typer.Option(
            "--input",
            help='a JSON file: {"inputs": ...} or the inputs themselves (by name or rows)',
        ),
    ],
    as_json: JsonOption = False,
) -> None:
    """Run an ONNX model on the inputs of a JSON file; its labels, or its outputs."""
    with signed_in(as_json) as (client, output):
        document = read_json(input_file)
        if isinstance(document, dict) and "inputs" in document:
            document = document["inputs"]
        if not isinstance(document, dict | list):
            raise CommandError(f"{input_file} holds no inputs: an object or a list of rows")
        answer = client.predict(model, document)
        output.result(answer, lambda console: _show_prediction(console, answer))


def _show_prediction(console: Console, answer: dict[str, Any]) -> None:
    labels = answer.get("labels")
    if labels is None:
        console.print_json(data=answer.get("outputs", answer))
        return
    for row, label in enumerate(labels):
        probabilities = (answer.get("probabilities") or [None] * len(labels))[row]
        best = f" ({max(probabilities):.3f})" if probabilities else ""
        console.print(f"{row}: {label}{best}", markup=False)


def add_generate_commands(app: typer.Typer) -> None:
    app.command("generate", epilog=GENERATE_EPILOG)(generate)
    app.command("predict", epilog=EXIT_CODES)(predict)

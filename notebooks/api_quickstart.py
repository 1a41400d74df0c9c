"""API quickstart: the Python SDK end to end, from a first image to the bill.

A marimo notebook that drives a running Goshen API with `goshen.client.Goshen`, as an
application would: generate and wait, follow a job's progress, predict, upload a dataset, submit
a training job, then read usage and credit. It reads GOSHEN_API_URL and GOSHEN_API_KEY (a
developer's key), and the models' names from GOSHEN_QUICKSTART_GENERATOR and
GOSHEN_QUICKSTART_CLASSIFIER (the demo platform's `digits-diffusion` and `digits-classifier` by
default). Open it with `make notebooks`; run it headless with `python notebooks/api_quickstart.py`.
It stops where the platform answers other than this walkthrough says it should.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell
def _():
    import io
    import itertools
    import os
    import random
    import tempfile
    import time
    from pathlib import Path

    import marimo as mo
    import polars as pl
    from PIL import Image

    from goshen.client import (
        Conflict,
        DoneEvent,
        Goshen,
        LogEvent,
        OutputEvent,
        ProgressEvent,
        StatusEvent,
    )

    return (
        Conflict,
        DoneEvent,
        Goshen,
        Image,
        LogEvent,
        OutputEvent,
        Path,
        ProgressEvent,
        StatusEvent,
        io,
        itertools,
        mo,
        os,
        pl,
        random,
        tempfile,
        time,
    )


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # The Goshen SDK, end to end

    Coming from Replicate or fal, most of this will look familiar: a model is called by name
    with a JSON `input`, a call either waits for its result or hands back a job to follow, and
    output images are links to download. What differs:

    - `replicate.run(model, input=...)`, `fal_client.run(...)`: **`goshen.run(model, input,
      timeout=...)`**, a typed `Job` whose `images` are ready to download.
    - `predictions.create` and polling, `fal_client.submit(...)`: **`goshen.submit(model,
      input)`**, a `JobHandle` to `.wait()` for, `.stream()` or `.cancel()`.
    - fal's queue updates, Replicate's webhooks: **`handle.stream()`**, typed events
      (`StatusEvent`, `ProgressEvent(step, total)`, `LogEvent`, `OutputEvent`, `DoneEvent`),
      resumed where a connection broke off (webhooks are there too: `submit(..., webhook=url)`).
    - a model that answers at once: **`goshen.predict(model, {"features": rows})`** for ONNX
      models, labels and probabilities with no job.
    - fine-tuning on a hosted file: **`upload_dataset`, then `train`**, run by your platform's
      Dagster into its own MLflow registry.
    - the billing page: **`goshen.usage()` and `goshen.balance()`**, in integer micro-credits
      (1 credit is 1,000,000).

    `Goshen()` reads the API's address from `GOSHEN_API_URL` and your key from
    `GOSHEN_API_KEY`. Errors are typed (`goshen.client_errors`: `InsufficientCredits`,
    `InvalidInput`, `NotFound`, `JobFailed`, `Timeout`, ...), and reads and submissions are
    retried on 429, 503 and lost connections, a submission with the same idempotency key, so a
    retry never makes a second job.

    Each section below asserts what it shows; run headless, the notebook stops at the first
    answer that is not what this walkthrough says it should be.
    """)
    return


@app.cell
def _(os):
    # The demo platform's models; point these at yours (the tests do).
    GENERATOR = os.environ.get("GOSHEN_QUICKSTART_GENERATOR", "digits-diffusion")
    CLASSIFIER = os.environ.get("GOSHEN_QUICKSTART_CLASSIFIER", "digits-classifier")
    # What the dataset's ingestion (a Dagster run the platform starts) may take.
    DATASET_TIMEOUT_SECONDS = float(os.environ.get("GOSHEN_QUICKSTART_DATASET_TIMEOUT", "300"))
    DIGIT = 7
    NUM_IMAGES = 4
    STEPS = 20  # denoising steps: the progress events a job sends
    TRAINED_MODEL = "quickstart-classifier"
    return (
        CLASSIFIER,
        DATASET_TIMEOUT_SECONDS,
        DIGIT,
        GENERATOR,
        NUM_IMAGES,
        STEPS,
        TRAINED_MODEL,
    )


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Connect, and see what you may call

    `list_models()` lists the public models and your own, each with its input schema and price.
    """)
    return


@app.cell
def _(CLASSIFIER, GENERATOR, Goshen, pl):
    goshen = Goshen()  # GOSHEN_API_URL, GOSHEN_API_KEY
    models = {model.name: model for model in goshen.list_models()}
    for _name in (GENERATOR, CLASSIFIER):
        assert _name in models, (
            f"this key cannot call a model named {_name!r} (it can call {sorted(models)}); "
            "set GOSHEN_QUICKSTART_GENERATOR and GOSHEN_QUICKSTART_CLASSIFIER to models it lists"
        )
        assert models[_name].status == "ready", (
            f"{_name} is {models[_name].status}, not ready to call: ask an admin to deploy it"
        )
    pl.DataFrame(
        [
            {
                "model": model.name,
                "kind": model.kind,
                "status": model.status,
                "price_micros": model.pricing.get("price_micros"),
                "per": model.pricing.get("unit"),
            }
            for model in models.values()
        ]
    )
    return goshen, models


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## 1. Generate and wait: `run`

    `run` submits the job and waits for it to end, in the submission itself (`Prefer: wait`)
    and then in reads the API holds until the job ends, so no polling loop is yours to write.
    Past `timeout` it raises `Timeout`, with the job's id: the job goes on, and
    `goshen.wait(job_id)` picks it up again. Each image's `url` is a signed link that expires;
    `download` reads it (the link is the credential: your key is not sent with it).

    A job is charged when it ends, for what it made: the balance falls by its `cost_micros`.
    """)
    return


@app.cell
def _(DIGIT, GENERATOR, NUM_IMAGES, STEPS, goshen, mo, png_pixels):
    before_run = goshen.balance()
    job = goshen.run(
        GENERATOR,
        {"digit": DIGIT, "num_images": NUM_IMAGES, "num_inference_steps": STEPS, "seed": 7},
        timeout=300,
    )
    pngs = [goshen.download(image.url) for image in job.images]
    pixels = [png_pixels(png) for png in pngs]
    after_run = goshen.balance()
    assert job.status == "succeeded" and len(job.images) == NUM_IMAGES, (
        f"job {job.id} ended {job.status} with {len(job.images)} images of {NUM_IMAGES} asked: "
        f"{job.error or 'see GET /v1/jobs/' + job.id}"
    )
    assert all(rows and len(rows) == len(rows[0]) for rows in pixels), "an image is not square"
    assert job.cost_micros, f"job {job.id} succeeded but was not charged"
    if not before_run.unmetered:
        _fell = before_run.balance_micros - after_run.balance_micros
        assert _fell == job.cost_micros, (
            f"the balance fell by {_fell} micro-credits, "
            f"not by the job's {job.cost_micros}: did another client of this account spend?"
        )
    mo.vstack(
        [
            mo.md(
                f"Job `{job.id}`: {len(pngs)} images of a {DIGIT}, "
                f"{len(pixels[0])}x{len(pixels[0])} pixels, for "
                f"{job.cost_micros:,} micro-credits."
            ),
            mo.hstack(
                [
                    mo.image(src=png, width=96, style={"image-rendering": "pixelated"})
                    for png in pngs
                ],
                justify="start",
            ),
        ]
    )
    return after_run, before_run, job, pixels


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## 2. Follow a job as it runs: `submit` and `stream`

    `submit` answers at once with a `JobHandle`. `handle.stream()` yields the job's events as
    they happen, typed, and ends with a `DoneEvent`; a dropped connection is reopened after
    the last event read, so none is lost or repeated. A progress bar reads `ProgressEvent`'s
    `step` of `total`: one event per denoising step. `handle.wait()` then reads the job as it
    ended, and `goshen.job(job_id)` finds it again from another process.
    """)
    return


@app.cell
def _(
    DoneEvent,
    GENERATOR,
    LogEvent,
    OutputEvent,
    ProgressEvent,
    STEPS,
    StatusEvent,
    goshen,
    job,
    mo,
    pl,
):
    # Section 1's input, for one image of another digit.
    handle = goshen.submit(GENERATOR, job.input | {"digit": 3, "num_images": 1, "seed": 3})
    events = list(handle.stream())
    streamed = handle.wait(timeout=60)

    def shown(event: object) -> str:
        if isinstance(event, StatusEvent):
            return event.status
        if isinstance(event, ProgressEvent):
            return f"step {event.step} of {event.total}"
        if isinstance(event, LogEvent):
            return event.message
        if isinstance(event, OutputEvent):
            return f"{len(event.images)} image(s)"
        if isinstance(event, DoneEvent):
            return event.status
        return str(event)

    steps = [event.step for event in events if isinstance(event, ProgressEvent)]
    statuses = [event.status for event in events if isinstance(event, StatusEvent)]
    assert steps == list(range(1, STEPS + 1)), (
        f"job {handle.id} reported steps {steps}, not 1 to {STEPS} once each in order"
    )
    assert statuses[-1] == "succeeded" and isinstance(events[-1], DoneEvent), (
        f"job {handle.id}'s stream ended with {events[-1]!r}, statuses {statuses}"
    )
    assert streamed.status == "succeeded" and len(streamed.images) == 1
    event_table = pl.DataFrame(
        {
            "id": [event.id for event in events],
            "kind": [event.kind for event in events],
            "what": [shown(event) for event in events],
        }
    )
    mo.vstack(
        [
            mo.md(
                f"Job `{handle.id}`: {' → '.join(statuses)}, {len(steps)} progress events "
                f"(step {steps[0]} to {steps[-1]} of {STEPS}), {len(events)} events in all; "
                f"it cost {streamed.cost_micros or 0:,} micro-credits."
            ),
            event_table,
        ]
    )
    return event_table, events, steps, streamed


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## 3. Predict: an ONNX model, no job

    `predict` runs an ONNX model on rows and answers at once: for a classifier, a label and the
    class probabilities per row. Here the digits classifier reads back the digits generated
    above, each image averaged down to the 8x8 pixels in [0, 1] it takes (64 features a row).
    Pass numpy arrays as they are: anything with `.tolist()` is sent as nested lists.
    """)
    return


@app.cell
def _(CLASSIFIER, DIGIT, goshen, mo, pixels):
    def features_of(rows: list[list[int]], side: int = 8) -> list[float]:
        """An image's pixels averaged over blocks down to `side` x `side`, in [0, 1]."""
        block = len(rows) // side
        assert block and len(rows) % side == 0, f"a {len(rows)}-pixel image is not 8x8 blocks"
        return [
            sum(rows[y * block + dy][x * block + dx] for dy in range(block) for dx in range(block))
            / (block * block * 255)
            for y in range(side)
            for x in range(side)
        ]

    features = [features_of(rows) for rows in pixels]
    prediction = goshen.predict(CLASSIFIER, {"features": features})
    assert prediction.labels is not None and len(prediction.labels) == len(features), (
        f"{CLASSIFIER} answered {prediction.raw} for {len(features)} rows: is it a classifier?"
    )
    assert prediction.probabilities is not None and all(
        abs(sum(row) - 1) < 1e-3 for row in prediction.probabilities
    ), f"{CLASSIFIER}'s probabilities do not sum to 1 per row"
    read_as_asked = sum(str(label) == str(DIGIT) for label in prediction.labels)
    mo.md(
        f"`{CLASSIFIER}` read the {len(features)} generated digits as "
        f"{', '.join(str(label) for label in prediction.labels)}: {read_as_asked} of them as the "
        f"{DIGIT} asked for."
    )
    return features, prediction


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## 4. Upload a dataset

    A dataset is an image archive (a folder per class, or a `labels.csv`) or a table (CSV or
    Parquet). `upload_dataset` sends the file, calling `on_progress(sent, total)` as its bytes
    go out, and answers the dataset `uploaded`. The platform then ingests it in a Dagster run
    (checked, written as canonical Parquet); `wait_for_dataset` reads it until it is `ready` or
    `failed`, with its ingestion `progress`. The table here is made up on the spot: two numbers
    a row, labelled 1 where they add up to more than 1.
    """)
    return


@app.cell
def _(DATASET_TIMEOUT_SECONDS, Path, goshen, random, tempfile):
    _rng = random.Random(0)
    _rows = [(round(_rng.random(), 4), round(_rng.random(), 4)) for _ in range(200)]
    _lines = ["a,b,label", *(f"{a},{b},{int(a + b > 1)}" for a, b in _rows)]
    sent: list[tuple[int, int]] = []
    with tempfile.TemporaryDirectory() as _folder:
        _table = Path(_folder) / "sums.csv"
        _table.write_text("\n".join(_lines) + "\n")
        table_bytes = _table.stat().st_size
        uploaded = goshen.upload_dataset(
            _table,
            "quickstart-sums",
            kind="tabular",
            target="label",
            on_progress=lambda done, total: sent.append((done, total)),
        )
    assert uploaded.status == "uploaded", f"dataset {uploaded.id} is {uploaded.status}"
    assert sent and sent[-1] == (table_bytes, table_bytes), (
        f"the upload reported {sent[-1:]} last, not all {table_bytes} bytes sent"
    )
    dataset = goshen.wait_for_dataset(uploaded.id, timeout=DATASET_TIMEOUT_SECONDS)
    assert dataset.status == "ready", f"dataset {dataset.id} failed to ingest: {dataset.error}"
    assert dataset.progress is not None and dataset.progress["percent"] == 100
    assert dataset.progress["done"] == dataset.progress["total"] == len(_rows), (
        f"dataset {dataset.id} ingested {dataset.progress}, not the {len(_rows)} rows sent"
    )
    dataset
    return dataset, sent, table_bytes, uploaded


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## 5. Submit a training job

    `train` queues a job that trains a version of *your* model `model_name` on the dataset
    (`classification` on the `label` column here), and answers at once. It is priced before it
    runs: its time limit (twice the estimate, plus a startup allowance) at the training price
    is its `estimated_cost_micros`, held from your credit until it ends. It is charged the
    seconds it ran when it succeeds or you cancel it, nothing when the platform fails it.
    `deploy="none"` leaves its versions undeployed; by default (`auto`) a version that passes its
    checks goes live behind your model's name, callable with `predict` like any other.

    This notebook does not wait the minutes training takes (`wait_for_training_job` would): it
    cancels the job right away, which releases the hold. A queued job ends uncharged; one a
    Dagster run already started is stopped, and charged the seconds it ran.
    """)
    return


@app.cell
def _(TRAINED_MODEL, dataset, goshen, itertools, mo):
    training = goshen.train(
        dataset.id,
        "classification",
        TRAINED_MODEL,
        config={"target": "label", "epochs": 5},
        deploy="none",
    )
    assert training.status in ("queued", "running"), (
        f"training job {training.id} is {training.status}"
    )
    assert training.estimated_cost_micros, f"training job {training.id} was not priced"
    # The hold is in the ledger, newest first (a prediction's credit moves there too).
    _recent = list(itertools.islice(goshen.ledger(), 20))
    training_hold = [
        entry
        for entry in _recent
        if entry.kind == "hold" and entry.held_micros == training.estimated_cost_micros
    ]
    assert training_hold, (
        f"no hold of {training.estimated_cost_micros} micro-credits in the ledger for training "
        f"job {training.id}: its newest entries are {[(e.kind, e.held_micros) for e in _recent]}"
    )
    mo.md(
        f"Training job `{training.id}` is **{training.status}**, training `{training.model_name}` "
        f"on `{dataset.name}`; it may cost up to {training.estimated_cost_micros:,} "
        "micro-credits, held from the credit until it ends."
    )
    return training, training_hold


@app.cell
def _(Conflict, goshen, mo, training):
    try:
        training_ended = goshen.cancel_training_job(training.id)
    except Conflict:  # it ended first: a Dagster run trained it in the meantime
        training_ended = goshen.get_training_job(training.id)
    if not training_ended.ended:  # a Dagster run has it: the run is stopped within seconds
        training_ended = goshen.wait_for_training_job(training.id, timeout=120)
    assert training_ended.status in ("canceled", "succeeded"), (
        f"training job {training.id} ended {training_ended.status}: {training_ended.error}"
    )
    assert (training_ended.cost_micros or 0) <= (training.estimated_cost_micros or 0), (
        f"training job {training.id} was charged {training_ended.cost_micros}, more than its hold"
    )
    mo.md(
        f"Training job `{training.id}` ended **{training_ended.status}**: charged "
        f"{training_ended.cost_micros or 0:,} micro-credits of the "
        f"{training.estimated_cost_micros:,} held; the rest went back to the credit."
    )
    return (training_ended,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## 6. Usage and credit

    `usage(start=..., end=...)` sums what your account's calls cost over a range (this month so
    far by default): in total, by day and by model, with your credit now. Here the range
    starts at the first job above, by the API's clock, so it holds this walkthrough's calls: the
    two generation jobs, the prediction (metered as the request it was), and the training
    job's seconds, if a run had started it before it was canceled. `balance()` is the credit
    alone: the balance, what jobs that have not ended hold, and what is available to new ones.
    """)
    return


@app.cell
def _(CLASSIFIER, GENERATOR, features, goshen, job, mo, models, pl, streamed, time, training_ended):
    # From the first job, by the API's clock. Predictions are metered in batches, written a
    # fraction of a second after they answer: read until the one above is counted (a minute
    # at most: a loaded machine can take seconds to write them).
    _deadline = time.monotonic() + 60
    while True:
        usage = goshen.usage(start=job.created_at.isoformat())
        if usage.totals.requests or time.monotonic() > _deadline:
            break
        time.sleep(0.2)
    usage_by_model = pl.DataFrame(
        [
            row.model_dump(include={"model", "cost_micros", "jobs", "requests", "images"})
            for row in usage.by_model
        ],
        schema={
            "model": pl.String,
            "cost_micros": pl.Int64,
            "jobs": pl.Int64,
            "requests": pl.Int64,
            "images": pl.Int64,
        },
    ).with_columns(credits=pl.col("cost_micros") / 1_000_000)
    _rows = {row["model"]: row for row in usage_by_model.to_dicts()}
    generated = (job.cost_micros or 0) + (streamed.cost_micros or 0)
    assert _rows.get(GENERATOR, {}).get("cost_micros") == generated, (
        f"usage shows {GENERATOR} costing {_rows.get(GENERATOR)}, not the two jobs' {generated} "
        "micro-credits: did another client of this account call it meanwhile?"
    )
    predicted = _rows.get(CLASSIFIER, {})
    assert predicted.get("requests") == 1, f"usage shows {predicted} for the one prediction"
    _pricing = models[CLASSIFIER].pricing
    _expected = {"request": 1, "image": len(features)}.get(_pricing.get("unit"))
    if _expected is not None:
        assert predicted["cost_micros"] == _expected * _pricing["price_micros"], (
            f"the prediction cost {predicted['cost_micros']}, not its price {_pricing}"
        )
    assert usage.totals.cost_micros == generated + predicted["cost_micros"] + (
        training_ended.cost_micros or 0
    ), f"usage totals {usage.totals.cost_micros} are not the calls' costs above"
    assert usage_by_model["cost_micros"].sum() == usage.totals.cost_micros
    balance = goshen.balance()
    mo.vstack(
        [
            mo.md(
                f"This walkthrough cost {usage.totals.cost_micros / 1e6:,.6f} credits "
                f"({usage.totals.images} images, {usage.totals.requests} prediction). "
                f"Credit now: balance {balance.balance_micros / 1e6:,.6f}, "
                f"{balance.held_micros / 1e6:,.6f} held, "
                f"{balance.available_micros / 1e6:,.6f} available."
            ),
            usage_by_model,
        ]
    )
    return balance, usage, usage_by_model


@app.cell
def _(Image, io):
    def png_pixels(png: bytes) -> list[list[int]]:
        """The rows of a PNG's pixels, in grey levels from 0 to 255."""
        with Image.open(io.BytesIO(png)) as image:
            gray = image.convert("L")
            width, height = gray.size
            values = list(gray.getdata())
        return [values[y * width : (y + 1) * width] for y in range(height)]

    return (png_pixels,)


if __name__ == "__main__":
    app.run()

"""Latency and capacity: how long jobs wait and run, how they are batched, how busy workers are.

A marimo notebook over the platform's `jobs`, `usage_events` and `workers`, read through
`goshen.analytics` with the platform's GOSHEN_* settings. Open it with `make notebooks`; run it
headless with `python notebooks/latency_and_capacity.py`.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell
def _():
    import altair as alt
    import marimo as mo
    import polars as pl

    from goshen import analytics

    return alt, analytics, mo, pl


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # Latency and capacity

    A job waits in the queue from its submission until a worker claims it (`queue_seconds`),
    then runs until it ends (`run_seconds`: loading the model, generating, storing the images).
    The jobs here are those that ran and ended, succeeded or failed; a job canceled while it
    was queued never ran and is left out. Percentiles are interpolated between the closest
    ranks, as the admin stats and PostgreSQL's `percentile_cont` compute them.
    """)
    return


@app.cell
def _(analytics):
    db = analytics.connect(tables=["models", "jobs", "usage_events", "workers"])
    return (db,)


@app.cell
def _(db):
    ran = db.sql(
        """
        SELECT j.id, coalesce(m.name, j.model_id) AS model, j.model_version, j.batch_key,
               j.status, j.device, j.started_at, j.completed_at,
               date_trunc('hour', j.completed_at) AS hour, j.queue_seconds, j.run_seconds,
               u.images, u.compute_seconds
        FROM jobs j
        LEFT JOIN models m ON m.id = j.model_id
        LEFT JOIN (
            SELECT job_id, sum(images) AS images, sum(seconds) AS compute_seconds
            FROM usage_events WHERE job_id IS NOT NULL GROUP BY job_id
        ) u ON u.job_id = j.id
        WHERE j.completed_at IS NOT NULL AND j.started_at IS NOT NULL
        ORDER BY j.completed_at, j.id
        """
    ).pl()
    ran.group_by("status").len().sort("status")
    return (ran,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Queue and run time by model

    The median and the 95th percentile of each model's waits and runs: a p95 queue time far
    above the median means bursts the workers cannot absorb; a long run time, a model to batch
    more or to give a faster device.
    """)
    return


@app.cell
def _(alt, pl, ran):
    def percentiles(*by: str) -> pl.DataFrame:
        """p50 and p95 of queue and run seconds per group of `by`."""
        figures = [
            pl.col(column).quantile(q, "linear").alias(f"{name}_{column.split('_')[0]}")
            for column in ("queue_seconds", "run_seconds")
            for name, q in (("p50", 0.5), ("p95", 0.95))
        ]
        return ran.group_by(*by).agg(pl.len().alias("jobs"), *figures).sort(*by)

    by_model = percentiles("model")
    _long = by_model.unpivot(index=["model", "jobs"], variable_name="figure", value_name="s")
    _chart = (
        alt.Chart(_long)
        .mark_bar()
        .encode(
            x=alt.X("s:Q", title="seconds"),
            y=alt.Y("figure:N", title=None),
            row=alt.Row("model:N", title=None),
            tooltip=["model:N", "figure:N", "s:Q", "jobs:Q"],
        )
    )
    _chart
    return by_model, percentiles


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## By hour

    The same percentiles for each hour the jobs ended in (UTC): when the queue backs up, and
    whether run times rise with it.
    """)
    return


@app.cell
def _(alt, percentiles):
    by_hour = percentiles("hour", "model")
    _chart = (
        alt.Chart(by_hour)
        .mark_line(point=True)
        .encode(
            x=alt.X("hour:T", title="hour (UTC)"),
            y=alt.Y("p95_queue:Q", title="p95 queue seconds"),
            color="model:N",
            tooltip=["hour:T", "model:N", "jobs:Q", "p50_queue:Q", "p95_queue:Q", "p95_run:Q"],
        )
    )
    _chart.properties(height=240)
    return (by_hour,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Batch sizes

    No column records the batch a job ran in: the worker writes "a batch of N jobs" into each
    job's log, which `goshen.analytics` leaves out. What is recorded is which jobs may share a
    batch (the same model, version and `batch_key`) and when a worker claimed each one
    (`started_at`): the jobs a claim takes together start at the same instant. A job without a
    batch key always runs alone; jobs a worker adds while it waits for more
    (GOSHEN_WORKER_BATCH_WAIT_SECONDS) start moments later and count as a batch of their own
    here, so these sizes are a lower bound.
    """)
    return


@app.cell
def _(alt, pl, ran):
    batches = (
        ran.with_columns(batch=pl.coalesce("batch_key", "id"))
        .group_by("model", "model_version", "batch", "started_at")
        .agg(jobs=pl.len(), images=pl.col("images").sum())
    )
    batch_sizes = (
        batches.group_by("model", "jobs")
        .agg(batches=pl.len(), images=pl.col("images").sum())
        .sort("model", "jobs")
    )
    _chart = (
        alt.Chart(batch_sizes)
        .mark_bar()
        .encode(
            x=alt.X("jobs:O", title="jobs in the batch"),
            y=alt.Y("batches:Q", title="batches"),
            color="model:N",
            tooltip=["model:N", "jobs:O", "batches:Q", "images:Q"],
        )
    )
    _chart.properties(height=200)
    return (batch_sizes,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Worker utilisation

    A worker gives up a job's lease when the job ends, so a finished job does not say which
    worker ran it; it records the device it ran on. Utilisation is therefore per device: the
    compute seconds of the jobs that ran on it (each job's usage event holds its share of its
    batch's generation time, so a batch counts once) over the seconds its workers were alive
    (from their start to their last heartbeat). The rest is time spent idle, loading models
    or storing images.
    """)
    return


@app.cell
def _(alt, db, mo, pl):
    utilisation = db.sql(
        """
        WITH busy AS (
            SELECT j.device, count(*) AS jobs, sum(u.seconds) AS busy_seconds
            FROM jobs j JOIN usage_events u ON u.job_id = j.id
            WHERE j.device IS NOT NULL AND u.seconds IS NOT NULL GROUP BY j.device
        ), alive AS (
            SELECT device_name AS device, count(*) AS workers,
                   sum(epoch(heartbeat_at) - epoch(started_at)) AS alive_seconds
            FROM workers GROUP BY device_name
        )
        SELECT device, coalesce(workers, 0) AS workers, coalesce(jobs, 0) AS jobs,
               coalesce(alive_seconds, 0) AS alive_seconds,
               coalesce(busy_seconds, 0) AS busy_seconds,
               busy_seconds / nullif(alive_seconds, 0) AS utilisation
        FROM alive FULL JOIN busy USING (device)
        ORDER BY device
        """
    ).pl()
    _metered = db.sql(
        """
        SELECT coalesce(sum(u.seconds), 0) FROM usage_events u JOIN jobs j ON j.id = u.job_id
        WHERE j.device IS NOT NULL
        """
    ).fetchall()[0][0]
    # The same seconds summed in another order: equal but for the last bits of a float.
    assert abs(utilisation["busy_seconds"].sum() - _metered) < 1e-6, (
        "the devices' busy seconds do not add up to the jobs' metered seconds"
    )
    workers = db.sql(
        """
        SELECT id, host, device_name, status, started_at, heartbeat_at,
               epoch(heartbeat_at) - epoch(started_at) AS alive_seconds
        FROM workers ORDER BY started_at, id
        """
    ).pl()
    _chart = (
        alt.Chart(utilisation.filter(pl.col("utilisation").is_not_null()))
        .mark_bar()
        .encode(
            x=alt.X("utilisation:Q", title="busy / alive", axis=alt.Axis(format="%")),
            y=alt.Y("device:N", title=None),
            tooltip=["device:N", "workers:Q", "jobs:Q", "busy_seconds:Q", "alive_seconds:Q"],
        )
    )
    mo.vstack([_chart, utilisation, workers])
    return utilisation, workers


if __name__ == "__main__":
    app.run()

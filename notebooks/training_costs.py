"""Training costs: what training jobs were estimated to take and cost, against what they did.

A marimo notebook over the platform's `training_jobs`, their datasets and their usage events,
read through `goshen.analytics` with the platform's GOSHEN_* settings. Open it with
`make notebooks`; run it headless with `python notebooks/training_costs.py`. It stops where the
jobs' costs disagree with their usage events, or a failed job was charged.
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
    # Training costs

    At submit a training job is estimated from its dataset and config: the samples an epoch
    reads (images, or a table's rows) times its epochs times a task's seconds per sample,
    measured on the digits models (`goshen.training`). Its time limit is that estimate twice
    over plus a startup allowance, and what is held from the account is the limit at the
    training price (`estimated_cost_micros`): the most it can cost. When it ends it is charged
    the seconds it ran at the price (`cost_micros`, with a `training` usage event), if it
    succeeded or its owner canceled it; a failed job is charged nothing. The jobs here are
    those that ended; amounts are in micro-credits.
    """)
    return


@app.cell
def _(analytics):
    db = analytics.connect(tables=["datasets", "training_jobs", "usage_events"])
    return (db,)


@app.cell
def _(db, pl):
    ended = db.sql(
        """
        SELECT t.id, t.task, t.status, t.completed_at, e.samples, e.epochs,
               e.estimate_seconds, e.time_limit_seconds, d.size_bytes,
               coalesce(t.gpu_seconds, 0) AS seconds, coalesce(t.cost_micros, 0) AS cost_micros,
               coalesce(t.estimated_cost_micros, 0) AS held_micros
        FROM training_jobs t
        JOIN training_estimates e ON e.training_job_id = t.id
        LEFT JOIN datasets d ON d.id = t.dataset_id
        WHERE t.status IN ('succeeded', 'failed', 'canceled')
        ORDER BY t.completed_at, t.id
        """
    ).pl()
    metered = db.sql(
        """
        SELECT count(*) AS events, coalesce(sum(u.cost_micros), 0) AS cost_micros
        FROM usage_events u JOIN training_jobs t ON t.id = u.training_job_id
        WHERE u.kind = 'training' AND t.status IN ('succeeded', 'failed', 'canceled')
        """
    ).pl()
    assert ended["cost_micros"].sum() == metered["cost_micros"][0], (
        "the training jobs' costs differ from their training usage events: a job's charge was "
        "settled without its event, or an event was written twice"
    )
    _charged = ended.filter(pl.col("status") == "failed")["cost_micros"].sum()
    assert _charged == 0, "a failed training job was charged: it is the platform's doing"
    ended.group_by("status").agg(
        jobs=pl.len(), cost_micros=pl.col("cost_micros").sum(), seconds=pl.col("seconds").sum()
    ).sort("status")
    return ended, metered


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Estimated against actual, by task and dataset size

    For each task and dataset size (samples an epoch reads, by order of magnitude): the
    estimator's seconds against the seconds the succeeded jobs ran (`actual / estimate`
    above 1: the estimate is low, and a job nears its time limit at twice it), the jobs
    stopped at their limit, and what was charged against what was held.
    """)
    return


@app.cell
def _(ended, pl):
    def size_band(samples: pl.Expr) -> pl.Expr:
        """'10^k to 10^(k+1) samples', or '(dataset deleted)' when the samples are unknown."""
        # By its digits: log10 of 1,000 is a hair under 3 in floating point.
        digits = samples.clip(1).cast(pl.String).str.len_chars().cast(pl.Int64)
        low = pl.lit(10, pl.Int64).pow(digits - 1)
        band = pl.format("{} to {} samples", low, low * 10)
        return pl.when(samples.is_null()).then(pl.lit("(dataset deleted)")).otherwise(band)

    _succeeded = pl.col("status") == "succeeded"
    by_task_and_size = (
        ended.with_columns(size=size_band(pl.col("samples")))
        .group_by("task", "size")
        .agg(
            jobs=pl.len(),
            mb=pl.col("size_bytes").mean() / 1e6,
            estimate_seconds=pl.col("estimate_seconds").filter(_succeeded).sum(),
            actual_seconds=pl.col("seconds").filter(_succeeded).sum(),
            stopped_at_limit=(
                (pl.col("status") == "failed") & (pl.col("seconds") >= pl.col("time_limit_seconds"))
            ).sum(),
            held_micros=pl.col("held_micros").sum(),
            cost_micros=pl.col("cost_micros").sum(),
        )
        .with_columns(
            # Null, not NaN, where nothing succeeded or nothing was held.
            actual_over_estimate=pl.when(pl.col("estimate_seconds") > 0).then(
                pl.col("actual_seconds") / pl.col("estimate_seconds")
            ),
            charged_of_held=pl.when(pl.col("held_micros") > 0).then(
                pl.col("cost_micros") / pl.col("held_micros")
            ),
        )
        .sort("task", "size")
    )
    by_task_and_size
    return (by_task_and_size,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    Each succeeded job's estimate against the seconds it ran: the line is a perfect estimate;
    points above it ran longer than estimated.
    """)
    return


@app.cell
def _(alt, ended, pl):
    _succeeded = ended.filter(pl.col("status") == "succeeded")
    _top = float(max(_succeeded["seconds"].max() or 1, _succeeded["estimate_seconds"].max() or 1))
    _points = (
        alt.Chart(_succeeded)
        .mark_circle(size=60)
        .encode(
            x=alt.X("estimate_seconds:Q", title="estimated seconds"),
            y=alt.Y("seconds:Q", title="seconds run"),
            color="task:N",
            tooltip=["id:N", "task:N", "samples:Q", "epochs:Q", "estimate_seconds:Q", "seconds:Q"],
        )
    )
    _line = (
        alt.Chart(pl.DataFrame({"x": [0.0, _top], "y": [0.0, _top]}))
        .mark_line()
        .encode(x="x", y="y")
    )
    (_points + _line).properties(height=280)
    return


@app.cell(hide_code=True)
def _(by_task_and_size, ended, mo, pl):
    if ended.height:
        _line = (
            f"{ended.height} training jobs ended, charged "
            f"{ended['cost_micros'].sum() / 1e6:,.6f} credits of "
            f"{ended['held_micros'].sum() / 1e6:,.6f} held."
        )
        _ratios = by_task_and_size.filter(pl.col("actual_over_estimate").is_not_null())
        if not _ratios.is_empty():
            _row = _ratios.sort("actual_over_estimate", descending=True).row(0, named=True)
            _line += (
                f" Against the estimate, training ran longest for **{_row['task']}** on "
                f"{_row['size']}: {_row['actual_over_estimate']:.2f} times the estimate."
            )
    else:
        _line = "No training job has ended yet."
    mo.md(_line)
    return


if __name__ == "__main__":
    app.run()

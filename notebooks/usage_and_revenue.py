"""Usage and revenue: what the platform earns, from which models and accounts, and how it moves.

A marimo notebook over the billing rollups (`usage_daily`, `storage_daily`) and the invoices, read
through `goshen.analytics` with the platform's GOSHEN_* settings. Open it with `make notebooks`;
run it headless with `python notebooks/usage_and_revenue.py`. It shows the days whose usage
changed after their rollup, and stops where the rollups disagree with the finalized invoices.
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
    # Usage and revenue

    Revenue here is what accounts were charged: usage (inference and training, from the
    `usage_daily` rollup the `billing_daily` schedule writes each night) plus storage (from
    `storage_daily`). Amounts are in credits (a micro-credit is a millionth of one). The last
    section checks the rollups against the finalized invoices: they must agree to the micro-credit.
    """)
    return


@app.cell
def _(analytics):
    db = analytics.connect()
    return (db,)


@app.cell
def _(db, mo, pl):
    usage = db.sql(
        """
        SELECT u.day, strftime(u.day, '%Y-%m') AS month, u.user_id,
               coalesce(usr.email, u.user_id) AS account,
               coalesce(m.name, CASE WHEN u.kind = 'training' THEN 'training' ELSE '(no model)'
                        END) AS model,
               u.unit, u.kind, u.quantity, u.cost_micros, u.event_count
        FROM usage_daily u
        LEFT JOIN models m ON m.id = u.model_id
        LEFT JOIN users usr ON usr.id = u.user_id
        """
    ).pl()
    storage = db.sql(
        """
        SELECT s.day, strftime(s.day, '%Y-%m') AS month, s.user_id,
               coalesce(usr.email, s.user_id) AS account, s.kind, s.bytes, s.cost_micros
        FROM storage_daily s LEFT JOIN users usr ON usr.id = s.user_id
        """
    ).pl()
    # Today's events are rolled up tonight, so only the days usage_daily was written for are
    # compared; an event of a day can still commit after its rollup ran (near midnight), which
    # is shown here, and re-running that day's billing_daily partition picks it up.
    late_usage = db.sql(
        """
        WITH rolled AS (
            SELECT r.day, coalesce(sum(u.cost_micros), 0) AS rollup_micros
            FROM rollup_days r LEFT JOIN usage_daily u ON u.day = r.day
            WHERE r.rollup = 'usage_daily' GROUP BY r.day
        ), events AS (
            SELECT CAST(created_at AS DATE) AS day, sum(cost_micros) AS events_micros
            FROM usage_events GROUP BY 1
        )
        SELECT rolled.day, rolled.rollup_micros, coalesce(events.events_micros, 0) AS events_micros
        FROM rolled LEFT JOIN events USING (day)
        WHERE rolled.rollup_micros <> coalesce(events.events_micros, 0)
        ORDER BY rolled.day
        """
    ).pl()
    revenue_micros = usage["cost_micros"].sum() + storage["cost_micros"].sum()
    _summary = pl.DataFrame(
        {
            "usage (credits)": [usage["cost_micros"].sum() / 1e6],
            "storage (credits)": [storage["cost_micros"].sum() / 1e6],
            "days": [usage["day"].n_unique()],
            "accounts": [usage["user_id"].n_unique()],
        }
    )
    _late = mo.callout(
        mo.vstack(
            [
                mo.md(
                    "Usage events of these days changed after their rollup ran: re-run their "
                    "`billing_daily` partitions."
                ),
                late_usage,
            ]
        ),
        kind="warn",
    )
    mo.vstack([_late, _summary]) if late_usage.height else _summary
    return late_usage, revenue_micros, storage, usage


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Daily revenue by model

    Each bar is a day's usage revenue, split by the model that earned it.
    """)
    return


@app.cell
def _(alt, pl, usage):
    daily_by_model = (
        usage.group_by("day", "model")
        .agg(pl.col("cost_micros").sum(), pl.col("quantity").sum())
        .with_columns(revenue=pl.col("cost_micros") / 1e6)
        .sort("day", "model")
    )
    assert daily_by_model["cost_micros"].sum() == usage["cost_micros"].sum()
    alt.Chart(daily_by_model).mark_bar().encode(
        x=alt.X("day:T", title="day"),
        y=alt.Y("revenue:Q", title="credits"),
        color="model:N",
        tooltip=["day:T", "model:N", "quantity:Q", "revenue:Q"],
    ).properties(height=260)
    return (daily_by_model,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Daily usage by account

    The same days split by account (the eight biggest by name): who drives the peaks.
    """)
    return


@app.cell
def _(alt, pl, usage):
    # The eight biggest accounts by name, the rest together: a chart stays readable.
    _biggest = (
        usage.group_by("account")
        .agg(pl.col("cost_micros").sum())
        .sort("cost_micros", "account", descending=[True, False])
        .head(8)["account"]
    )
    daily_by_account = (
        usage.with_columns(
            account=pl.when(pl.col("account").is_in(_biggest.implode()))
            .then(pl.col("account"))
            .otherwise(pl.lit("(the others)"))
        )
        .group_by("day", "account")
        .agg(pl.col("cost_micros").sum(), pl.col("event_count").sum())
        .with_columns(revenue=pl.col("cost_micros") / 1e6)
        .sort("day", "account")
    )
    assert daily_by_account["event_count"].sum() == usage["event_count"].sum()
    alt.Chart(daily_by_account).mark_bar().encode(
        x=alt.X("day:T", title="day"),
        y=alt.Y("revenue:Q", title="credits"),
        color="account:N",
        tooltip=["day:T", "account:N", "event_count:Q", "revenue:Q"],
    ).properties(height=260)
    return (daily_by_account,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Cost per image

    What an image earned, per image-priced model and month: a price change or a discount
    shows here before it shows in the totals.
    """)
    return


@app.cell
def _(db, pl, usage):
    cost_per_image = (
        usage.filter(pl.col("unit") == "image")
        .group_by("month", "model")
        .agg(images=pl.col("quantity").sum(), cost_micros=pl.col("cost_micros").sum())
        .with_columns(credits_per_image=pl.col("cost_micros") / pl.col("images") / 1e6)
        .sort("month", "model")
    )
    events_images = db.sql(
        """
        SELECT coalesce(sum(quantity), 0) FROM usage_events WHERE unit = 'image'
            AND CAST(created_at AS DATE)
                IN (SELECT day FROM rollup_days WHERE rollup = 'usage_daily')
        """
    ).fetchall()[0][0]
    assert cost_per_image["images"].sum() == events_images
    cost_per_image
    return (cost_per_image,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Top accounts

    Accounts by revenue over the whole period, usage and storage together.
    """)
    return


@app.cell
def _(pl, revenue_micros, storage, usage):
    _usage = usage.group_by("account").agg(
        usage_micros=pl.col("cost_micros").sum(),
        images=pl.col("quantity").filter(pl.col("unit") == "image").sum(),
    )
    _storage = storage.group_by("account").agg(storage_micros=pl.col("cost_micros").sum())
    top_accounts = (
        _usage.join(_storage, on="account", how="full", coalesce=True)
        .with_columns(pl.col("usage_micros", "images", "storage_micros").fill_null(0))
        .with_columns(total_micros=pl.col("usage_micros") + pl.col("storage_micros"))
        .with_columns(
            credits=pl.col("total_micros") / 1e6,
            share=pl.col("total_micros") / max(revenue_micros, 1),
        )
        .sort("total_micros", "account", descending=[True, False])
        .head(10)
    )
    assert top_accounts["total_micros"].sum() <= revenue_micros
    top_accounts
    return (top_accounts,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Month over month

    Each month's revenue by category and its change from the month before.
    """)
    return


@app.cell
def _(alt, mo, pl, revenue_micros, storage, usage):
    _by_category = pl.concat(
        [
            usage.select(
                "month",
                category=pl.when(pl.col("kind") == "training")
                .then(pl.lit("training"))
                .otherwise(pl.lit("inference")),
                cost_micros="cost_micros",
            ),
            storage.select("month", category=pl.lit("storage"), cost_micros="cost_micros"),
        ]
    )
    monthly = (
        _by_category.group_by("month", "category")
        .agg(pl.col("cost_micros").sum())
        .with_columns(revenue=pl.col("cost_micros") / 1e6)
        .sort("month", "category")
    )
    month_over_month = (
        monthly.group_by("month")
        .agg(total_micros=pl.col("cost_micros").sum())
        .sort("month")
        .with_columns(
            change_micros=pl.col("total_micros").diff(),
            change=pl.col("total_micros").pct_change(),
        )
    )
    assert month_over_month["total_micros"].sum() == revenue_micros
    _chart = (
        alt.Chart(monthly)
        .mark_bar()
        .encode(
            x=alt.X("month:O", title="month"),
            y=alt.Y("revenue:Q", title="credits"),
            color="category:N",
            tooltip=["month:O", "category:N", "revenue:Q"],
        )
    )
    mo.vstack([_chart.properties(height=220), month_over_month])
    return month_over_month, monthly


@app.cell(hide_code=True)
def _(mo, month_over_month, top_accounts):
    _latest = month_over_month.tail(1).to_dicts()
    _top = top_accounts["account"][0] if top_accounts.height else "nobody yet"
    if _latest:
        _month = _latest[0]
        _change = (
            "the first month with revenue"
            if _month["change"] is None
            else f"{_month['change']:+.0%} on the month before"
        )
        _line = f"In {_month['month']} the platform earned {_month['total_micros'] / 1e6:,.6f} "
        _line += f"credits, {_change}. The top account over the period is **{_top}**."
    else:
        _line = "No usage has been rolled up yet: run the billing_daily schedule."
    mo.md(_line)
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The rollups against the finalized invoices

    A finalized month's invoices were issued from the same usage events and storage snapshots,
    so each one's total equals its lines, the month's invoices add up to the rollups' usage and
    storage for that month, and each model's invoiced usage to its revenue in `usage_daily`.
    A difference means usage recorded after the invoice was finalized, or a day that
    `storage_daily` missed: both need an adjustment on a later invoice.
    """)
    return


@app.cell
def _(db, mo, monthly, pl):
    invoiced = db.sql(
        """
        SELECT i.month, CAST(sum(i.total_micros) AS BIGINT) AS invoiced_micros,
               CAST(sum(coalesce(l.lines_micros, 0)) AS BIGINT) AS lines_micros,
               count(*) AS invoices
        FROM invoices i
        LEFT JOIN (
            SELECT user_id, month, sum(amount_micros) AS lines_micros FROM invoice_lines
            WHERE category IN ('inference', 'training', 'storage') GROUP BY ALL
        ) l USING (user_id, month)
        GROUP BY i.month
        HAVING bool_and(i.status = 'finalized')
        ORDER BY i.month
        """
    ).pl()
    reconciliation = invoiced.join(
        monthly.group_by("month").agg(rollups_micros=pl.col("cost_micros").sum()),
        on="month",
        how="left",
    ).with_columns(pl.col("rollups_micros").fill_null(0))
    for _row in reconciliation.to_dicts():
        _figures = (
            f"{_row['month']}: the invoices total {_row['invoiced_micros']:,} micro-credits, "
            f"their lines {_row['lines_micros']:,}, the rollups {_row['rollups_micros']:,}"
        )
        assert _row["lines_micros"] == _row["invoiced_micros"], _figures
        assert _row["rollups_micros"] == _row["invoiced_micros"], _figures
    invoiced_by_model = db.sql(
        """
        WITH finalized AS (
            SELECT month FROM invoices GROUP BY month HAVING bool_and(status = 'finalized')
        ), invoiced AS (
            SELECT month, model_id, sum(amount_micros) AS invoiced_micros FROM invoice_lines
            WHERE category IN ('inference', 'training') GROUP BY ALL
        ), rolled AS (
            SELECT strftime(day, '%Y-%m') AS month, model_id, sum(cost_micros) AS rollups_micros
            FROM usage_daily GROUP BY ALL
        )
        SELECT coalesce(i.month, r.month) AS month,
               coalesce(m.name, i.model_id, r.model_id, '(no model)') AS model,
               CAST(coalesce(i.invoiced_micros, 0) AS BIGINT) AS invoiced_micros,
               CAST(coalesce(r.rollups_micros, 0) AS BIGINT) AS rollups_micros
        FROM invoiced i FULL JOIN rolled r
            ON i.month = r.month AND i.model_id IS NOT DISTINCT FROM r.model_id
        LEFT JOIN models m ON m.id = coalesce(i.model_id, r.model_id)
        WHERE coalesce(i.month, r.month) IN (SELECT month FROM finalized)
        ORDER BY month, model
        """
    ).pl()
    _differs = invoiced_by_model.filter(pl.col("invoiced_micros") != pl.col("rollups_micros"))
    assert _differs.is_empty(), f"revenue by model differs from the invoices: {_differs.to_dicts()}"
    mo.vstack([reconciliation, invoiced_by_model])
    return invoiced_by_model, reconciliation


if __name__ == "__main__":
    app.run()

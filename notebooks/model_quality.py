"""Model quality: each registered model's versions compared on the runs that trained them.

A marimo notebook over the MLflow registry and its training runs, read through
`goshen.analytics_mlflow` with the platform's GOSHEN_* settings (the tracking server of
`GOSHEN_MLFLOW_TRACKING_URI`, by default the embedded one). Open it with `make notebooks`; run it
headless with `python notebooks/model_quality.py`. It stops where a version's metric is not what
its run logged, or the live version did not pass its checks.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell
def _():
    import altair as alt
    import marimo as mo
    import polars as pl

    from goshen import analytics_mlflow

    return alt, analytics_mlflow, mo, pl


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # Model quality

    Every model the platform trains is registered in MLflow as a new version, with the run
    that trained it. Promotion moves the `production` alias (the live version) only to a
    version that passed its checks (its ONNX export agrees with PyTorch) and whose metric is
    not worse than the live one's: `class_match` for a generator of digits (the share of its
    samples the digits classifier reads as the digit asked for), `val_accuracy` for a
    classifier and `val_rmse` for a regressor (on the held-out split), `final_loss` for a
    generator trained by a job. Here each model's versions are compared on that metric, on
    their training curves and on the sample grids their runs logged. Nothing is written to
    MLflow.
    """)
    return


@app.cell
def _(analytics_mlflow):
    client = analytics_mlflow.registry_client()
    versions = analytics_mlflow.model_versions(client)
    history = analytics_mlflow.metric_history(client, versions["run_id"].drop_nulls())
    versions
    return client, history, versions


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Versions compared

    Each version the platform trained, with the final value of its metric as its run logged
    it, which the version's tags repeat for promotion (the two must agree), whether it is live
    and whether it is its model's best. Versions that name no metric (uploaded ONNX files,
    diffusers pipelines) were not trained here and are not compared.
    """)
    return


@app.cell
def _(analytics_mlflow, history, mo, pl, versions):
    trained = versions.filter(pl.col("metric_name").is_not_null())
    _unknown = sorted(set(trained["metric_name"]) - set(analytics_mlflow.HIGHER_IS_BETTER))
    assert not _unknown, (
        f"versions are promoted on {', '.join(_unknown)}, which this notebook cannot rank: add "
        "each to goshen.analytics_mlflow.HIGHER_IS_BETTER, saying which way it improves"
    )

    def named(rows: pl.DataFrame) -> str:
        return ", ".join(f"{r['model']} v{r['version']}" for r in rows.iter_rows(named=True))

    _logged = analytics_mlflow.final_metrics(history).rename({"key": "metric_name"})
    _joined = trained.join(_logged, on=["run_id", "metric_name"], how="left")
    _unlogged = _joined.filter(pl.col("value").is_null())
    assert _unlogged.is_empty(), (
        f"{named(_unlogged)}: the run of each is gone from the tracking store or never logged "
        "the metric its version is tagged with, so nothing backs the number promotion compared; "
        "find the run in MLflow (restore it if it was deleted) before trusting that version"
    )
    # The tag is the repr of the very float the run logged: equal, but for the store's rounding.
    _tolerance = 1e-9 * pl.col("tagged_metric").abs().clip(lower_bound=1.0)
    _differ = _joined.filter(
        ~((pl.col("value") - pl.col("tagged_metric")).abs() <= _tolerance).fill_null(False)
    )
    assert _differ.is_empty(), (
        f"{named(_differ)}: the version's goshen.metric tag (what promotion compared) is not the "
        "value its run logged last; the tag was edited or the run logged again after "
        "registration, so look at both in MLflow before trusting either"
    )
    _higher = pl.col("metric_name").replace_strict(
        analytics_mlflow.HIGHER_IS_BETTER, return_dtype=pl.Boolean
    )
    _score = pl.when(_higher).then(pl.col("value")).otherwise(-pl.col("value"))
    comparison = _joined.select(
        "model",
        "version",
        "metric_name",
        metric="value",
        best=_score == _score.max().over("model", "metric_name"),
        live=pl.col("aliases").list.contains(analytics_mlflow.PRODUCTION),
        checks_passed="checks_passed",
        parity_max_abs_diff="parity_max_abs_diff",
        aliases="aliases",
        created_at="created_at",
        run_id="run_id",
        dataset_id="dataset_id",
    ).sort("model", "version")
    _unchecked = comparison.filter(pl.col("live") & ~pl.col("checks_passed").fill_null(False))
    assert _unchecked.is_empty(), (
        f"{named(_unchecked)}: live (@{analytics_mlflow.PRODUCTION}) without having passed its "
        "checks; promotion never moves the alias there, so it was moved by hand: point it back "
        "at a version that passed, or roll the model back"
    )
    _others = versions.filter(pl.col("metric_name").is_null())
    _note = mo.md(f"Not compared, naming no metric: {named(_others)}." if _others.height else "")
    mo.vstack([comparison, _note])
    return comparison, named, trained


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    Each model's metric by version, the live one coloured apart. A version better than the
    live one failed its checks, was trained with `deploy: none` (its owner deploys it), or
    a later version was pinned live over it.
    """)
    return


@app.cell
def _(alt, comparison):
    _frame = comparison.select("model", "version", "metric_name", "metric", "live", "best")
    (
        alt.Chart(_frame)
        .mark_bar()
        .encode(
            x=alt.X("version:O", title="version"),
            y=alt.Y("metric:Q", title="metric"),
            color=alt.Color("live:N", title="live"),
            tooltip=["model:N", "version:O", "metric_name:N", "metric:Q", "live:N", "best:N"],
        )
        .properties(width=220, height=200)
        .facet(column=alt.Column("model:N", title=None))
        .resolve_scale(x="independent", y="independent")
    )
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Training curves

    What each version's run logged at the end of every epoch (step 1 onwards; the version's
    metric and its ONNX parity are logged once, at registration, at step 0, and are compared
    above). Versions of one model that trained alike draw close curves; a loss that is still
    falling at the last epoch says more epochs would help.
    """)
    return


@app.cell
def _(history, named, pl, trained, versions):
    curves = (
        history.filter(pl.col("step") >= 1)
        .join(versions.select("model", "version", "run_id"), on="run_id")
        .select("model", "version", "key", epoch="step", value="value")
        .sort("model", "version", "key", "epoch")
    )
    _flat = trained.join(
        curves.select("model", "version").unique(), on=["model", "version"], how="anti"
    )
    assert _flat.is_empty(), (
        f"{named(_flat)}: trained, but the run logged no epoch's metrics; it was registered "
        "from a run that did not train (or its metrics were deleted), so its training cannot "
        "be compared"
    )
    curves.group_by("model", "version").agg(
        epochs=pl.col("epoch").n_unique(), metrics=pl.col("key").unique().sort()
    ).sort("model", "version")
    return (curves,)


@app.cell
def _(alt, curves, mo):
    _charts = [
        alt.Chart(curves.filter(model=_model))
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", title="epoch"),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
            color=alt.Color("version:N", title="version"),
            tooltip=["version:N", "key:N", "epoch:Q", "value:Q"],
        )
        .properties(width=200, height=160)
        .facet(column=alt.Column("key:N", title=None), title=_model)
        .resolve_scale(y="independent")
        for _model in curves["model"].unique().sort()
    ]
    alt.vconcat(*_charts) if _charts else mo.md("No run logged an epoch's metrics yet.")
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Sample grids

    A generator's run logs a grid of samples when training ends (`samples/` in its artifacts):
    each column the class asked for, with a few samples of it down the column. Classifiers
    log none.
    """)
    return


@app.cell
def _(analytics_mlflow, client, mo, named, pl, versions):
    grids = analytics_mlflow.sample_grids(client, versions["run_id"].drop_nulls()).join(
        versions.select("model", "version", "run_id"), on="run_id"
    )
    _image = pl.col("image").bin
    _broken = grids.filter(
        ~_image.starts_with(b"\x89PNG\r\n\x1a\n") & ~_image.starts_with(b"\xff\xd8\xff")
    )
    assert _broken.is_empty(), (
        f"{named(_broken)} ({', '.join(_broken['path'])}): not a PNG or JPEG image; the "
        "artifact store sent something else in its place (look at the file in MLflow's UI)"
    )

    def version_grids(model: str, version: int) -> object:
        images = grids.filter(model=model, version=version)
        if images.is_empty():
            return mo.md(f"**v{version}** logged no sample grid")
        return mo.vstack(
            [mo.md(f"**v{version}**")]
            + [mo.image(src=image, width=280) for image in images["image"]]
        )

    _shown = [
        mo.vstack(
            [
                mo.md(f"### {_model}"),
                mo.hstack(
                    [
                        version_grids(_model, _version)
                        for _version in versions.filter(model=_model)["version"]
                    ],
                    justify="start",
                    wrap=True,
                ),
            ]
        )
        for _model in grids["model"].unique().sort()
    ]
    _without = sorted(set(versions["model"]) - set(grids["model"]))
    if _without:
        _shown.append(mo.md(f"No version of {', '.join(_without)} logged a sample grid."))
    mo.vstack(_shown)
    return (grids,)


@app.cell(hide_code=True)
def _(comparison, mo, pl):
    _lines = []
    for _model in comparison["model"].unique().sort():
        _rows = comparison.filter(model=_model)
        _best = _rows.filter(pl.col("best")).row(-1, named=True)
        _live = _rows.filter(pl.col("live"))
        _line = (
            f"- **{_model}**: {_rows.height} versions; the best is v{_best['version']} "
            f"({_best['metric_name']} {_best['metric']:.4f})"
        )
        if _live.is_empty():
            _line += ", and none is live."
        elif _live["best"].any():
            _line += ", and it is live."
        else:
            _row = _live.row(0, named=True)
            _line += f", where the live v{_row['version']} has {_row['metric']:.4f}."
        _lines.append(_line)
    mo.md("\n".join(_lines) if _lines else "No version in the registry was trained here yet.")
    return


if __name__ == "__main__":
    app.run()

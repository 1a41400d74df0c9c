"""Overview: the platform's live figures over a chosen window, refreshed in place."""

from typing import Any

import streamlit as st

from dashboard import overview_data, session, ui

REFRESH_SECONDS = 5


def show_jobs(stats: dict[str, Any]) -> None:
    st.subheader(":material/work_history: Jobs in the window", divider="gray")
    columns = st.columns(len(overview_data.JOB_STATUSES) + 1)
    for column, (status, count) in zip(
        columns[:-1], overview_data.jobs_by_status(stats), strict=True
    ):
        column.metric(status.capitalize(), f"{count:,}", border=True)
    columns[-1].metric(
        "Queue depth",
        f"{stats['queued']:,}",
        help="Jobs queued now, whenever they were submitted",
        border=True,
    )


def show_latency(stats: dict[str, Any]) -> None:
    st.subheader(":material/timer: Latency", divider="gray")
    queue, run = stats["queue_seconds"], stats["run_seconds"]
    columns = st.columns(5)
    columns[0].metric("Queue time p50", ui.duration(queue["p50"]), border=True)
    columns[1].metric("Queue time p95", ui.duration(queue["p95"]), border=True)
    columns[2].metric("Run time p50", ui.duration(run["p50"]), border=True)
    columns[3].metric("Run time p95", ui.duration(run["p95"]), border=True)
    columns[4].metric(
        "Predict p95",
        ui.duration(stats["predictions"]["p95_seconds"]),
        help="Model seconds per prediction request",
        border=True,
    )


def show_throughput_and_spend(stats: dict[str, Any]) -> None:
    st.subheader(":material/speed: Throughput, spend and fleet", divider="gray")
    spend = stats["spend"]
    columns = st.columns(7)
    columns[0].metric(
        "Images per minute", overview_data.per_minute(stats["images_per_minute"]), border=True
    )
    columns[1].metric(
        "Predictions per minute",
        overview_data.per_minute(stats["predictions"]["per_minute"]),
        border=True,
    )
    columns[2].metric("Spend in window", ui.credits(spend["window_micros"]), border=True)
    columns[3].metric("Spend today", ui.credits(spend["today_micros"]), border=True)
    columns[4].metric("Spend this month", ui.credits(spend["month_micros"]), border=True)
    columns[5].metric("Workers alive", stats["workers_alive"], border=True)
    columns[6].metric("Models deployed", stats["models_deployed"], border=True)


def show_queues_and_series(stats: dict[str, Any]) -> None:
    queues, charts = st.columns([1, 3])
    with queues:
        st.subheader(":material/queue: Queued by model", divider="gray")
        by_model = overview_data.queue_by_model(stats)
        if by_model.empty:
            st.caption("No job is queued.")
        else:
            st.dataframe(by_model, hide_index=True)
    with charts:
        st.subheader(":material/show_chart: Over the window", divider="gray")
        series = overview_data.series_frame(stats)
        x = overview_data.SLICE_START
        jobs, usage, cost = st.columns(3)
        with jobs:
            st.caption("Jobs submitted")
            st.bar_chart(series, y="Jobs", x_label=x, y_label="jobs", height=220)
        with usage:
            st.caption("Images and predictions")
            st.area_chart(series, y=["Images", "Predictions"], x_label=x, height=220)
        with cost:
            st.caption("Spend (credits)")
            st.line_chart(series, y="Credits", x_label=x, y_label="credits", height=220)


@st.fragment(run_every=REFRESH_SECONDS)
def live_stats(window: str) -> None:
    stats = ui.attempt("Reading the platform's stats", session.client().admin_stats, window)
    if stats is None:
        return
    show_jobs(stats)
    show_latency(stats)
    show_throughput_and_spend(stats)
    show_queues_and_series(stats)
    st.caption(
        f"Window {ui.timestamp(stats['start'])} to {ui.timestamp(stats['end'])} UTC; "
        f"refreshed every {REFRESH_SECONDS} s."
    )


session.current()
st.title("Overview")
window = st.segmented_control(
    "Window",
    overview_data.WINDOWS,
    default=overview_data.DEFAULT_WINDOW,
    required=True,
    help="How far back the jobs, latency, throughput and charts look",
)
live_stats(window or overview_data.DEFAULT_WINDOW)

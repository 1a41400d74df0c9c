"""Datasets and training: every user's datasets and training jobs, filtered by status, and one
job's details, the links to its Dagster and MLflow runs, and its log as it grows."""

from typing import Any

import streamlit as st

from dashboard import session, training_data, ui

LISTED = 200
LOG_LINES = 200
LOG_REFRESH_SECONDS = 3

client = session.client()
st.title("Datasets and training")


def show_datasets() -> None:
    st.subheader(":material/dataset: Datasets")
    chosen = st.selectbox("Dataset status", training_data.DATASET_STATUSES, key="training.ds")
    listing = client.admin_list_datasets(status=training_data.status_filter(chosen))
    datasets = ui.attempt("Listing datasets", training_data.first, listing, LISTED)
    if datasets is None:
        return
    if not datasets:
        st.info("No datasets match.", icon=":material/info:")
        return
    st.dataframe(training_data.dataset_rows(datasets), hide_index=True)
    st.caption(f"Newest first; the newest {LISTED} at most.")


def list_jobs() -> list[dict[str, Any]] | None:
    st.subheader(":material/model_training: Training jobs")
    chosen = st.selectbox("Job status", training_data.TRAINING_STATUSES, key="training.status")
    listing = client.admin_list_training_jobs(status=training_data.status_filter(chosen))
    jobs = ui.attempt("Listing training jobs", training_data.first, listing, LISTED)
    if jobs is None:
        return None
    if not jobs:
        st.info("No training jobs match.", icon=":material/info:")
        return jobs
    st.dataframe(training_data.job_rows(jobs), hide_index=True)
    return jobs


def show_job(job_id: str, was_live: bool) -> None:
    """The job's facts, links and log tail as the API has them now."""
    job = ui.attempt(
        "Reading the training job", client.admin_get_training_job, job_id, lines=LOG_LINES
    )
    if job is None:
        return
    if was_live and job["status"] not in training_data.LIVE:
        st.rerun()  # it ended: draw the page again, without the refresh
    facts = training_data.job_facts(job)
    for column, (label, value) in zip(st.columns(4) * 3, facts, strict=True):
        column.caption(label)
        column.text(value)  # as text: some values (a model's name) are the user's words
    if job.get("error"):
        st.error(f"The job failed: {job['error']}", icon=":material/error:")
    links = training_data.run_links(job)
    for column, (label, url) in zip(st.columns(max(len(links), 1)), links, strict=False):
        column.link_button(label, url, icon=":material/open_in_new:")
    if not links:
        st.caption("No Dagster or MLflow run yet.")
    tail = job["log_tail"]
    st.caption(f"The last {len(tail)} of {job['log_lines']} log lines.")
    st.code("\n".join(tail) or "(nothing logged yet)", language=None)


show_datasets()
jobs = list_jobs()
if jobs:
    by_id = {job["id"]: job for job in jobs}
    chosen = st.selectbox(
        "Training job",
        list(by_id),
        format_func=lambda job_id: training_data.job_label(by_id[job_id]),
        key="training.job",
    )
    picked = by_id[chosen]
    live = picked["status"] in training_data.LIVE
    if live:
        st.caption(f"Running: refreshed every {LOG_REFRESH_SECONDS} s.")
    refresh = LOG_REFRESH_SECONDS if live else None
    st.fragment(show_job, run_every=refresh)(picked["id"], live)

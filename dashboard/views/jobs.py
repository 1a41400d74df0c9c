"""Jobs: every user's jobs, newest first, filtered and paged through the API's cursor; the
selected job's input, events, logs, images, cost and metrics, live while it runs; cancel."""

from typing import Any

import streamlit as st

from dashboard import jobs_data, session, ui

CURSORS = "jobs.cursors"  # the cursor of each page visited, the first page's None
FILTERS = "jobs.filters"  # the filters those cursors belong to
PAGE_IDS = "jobs.page_ids"  # the ids the table shows, row by row
TABLE = "jobs.table"
JOB = "jobs.job"  # the selected job's id: the "Job" selectbox's state, and the table's
NOTICE = "jobs.notice"  # what the last action did, shown once after the rerun it caused
LIVE_REFRESH_SECONDS = 2


def chosen_filters() -> jobs_data.JobFilters:
    status, model, user, after, before = st.columns([1, 2, 2, 1, 1])
    return jobs_data.JobFilters(
        status=status.selectbox(
            "Status",
            (None, *jobs_data.STATUSES),
            format_func=lambda status: status or "any",
            key="jobs.status",
        ),
        model=model.text_input("Model", placeholder="any catalog name", key="jobs.model"),
        user_id=user.text_input("User id", placeholder="usr_…", key="jobs.user_id"),
        created_from=after.date_input(
            "Created on or after", value=None, key="jobs.after", help="a UTC day, included"
        ),
        created_through=before.date_input(
            "Created on or before", value=None, key="jobs.before", help="a UTC day, included"
        ),
    )


def page_cursors(filters: jobs_data.JobFilters) -> list[str | None]:
    """The visited pages' cursors; other filters start again from the first page."""
    if st.session_state.get(FILTERS) != filters:
        st.session_state[FILTERS] = filters
        st.session_state[CURSORS] = [None]
    cursors: list[str | None] = st.session_state[CURSORS]
    return cursors


def next_page(cursor: str) -> None:
    st.session_state[CURSORS] = [*st.session_state[CURSORS], cursor]


def previous_page() -> None:
    st.session_state[CURSORS] = st.session_state[CURSORS][:-1]


def table_selected() -> None:
    """A row clicked in the table selects its job in the "Job" list."""
    rows = st.session_state[TABLE]["selection"]["rows"]
    ids: list[str] = st.session_state.get(PAGE_IDS, [])
    st.session_state[JOB] = ids[rows[0]] if rows and rows[0] < len(ids) else None


def keep_selection_on(ids: list[str]) -> str | None:
    """The selected job if this page lists it. A click in the table sets the "Job" list; the
    list does not write the table's selection back (a browser's table keeps its own, and
    overwriting it from the server makes the two undo each other)."""
    selected: str | None = st.session_state.get(JOB)
    if selected not in ids:
        selected = None
        st.session_state[JOB] = None
    st.session_state[PAGE_IDS] = ids
    return selected


def show_page(jobs: list[dict[str, Any]]) -> str | None:
    """The page's table and the "Job" list; the selected job's id."""
    if not jobs:
        st.session_state[JOB] = None
        st.info("No jobs match these filters.", icon=":material/search_off:")
        return None
    ids = [job["id"] for job in jobs]
    selected = keep_selection_on(ids)
    st.dataframe(
        jobs_data.job_rows(jobs),
        hide_index=True,
        width="stretch",
        key=TABLE,
        on_select=table_selected,
        selection_mode="single-row",
    )
    statuses = {job["id"]: job["status"] for job in jobs}
    st.selectbox(
        "Job",
        ids,
        index=None,
        key=JOB,
        placeholder="select a row above, or choose a job here",
        format_func=lambda job_id: f"{job_id} — {statuses[job_id]}",
    )
    return selected


def show_pager(cursors: list[str | None], listed: dict[str, Any]) -> None:
    previous, position, following = st.columns([1, 2, 1])
    previous.button(
        "Previous page",
        icon=":material/chevron_left:",
        disabled=len(cursors) == 1,
        on_click=previous_page,
    )
    count = len(listed["data"])
    position.caption(f"Page {len(cursors)} · {count} job{'' if count == 1 else 's'}, newest first")
    following.button(
        "Next page",
        icon=":material/chevron_right:",
        disabled=not listed["has_more"],
        on_click=next_page,
        args=(listed["next_cursor"],),
    )


@st.cache_data(max_entries=256, show_spinner=False)
def output_image(job_id: str, index: int, _url: str) -> bytes:
    """An output image's bytes (a job's outputs never change; its signed links do)."""
    return session.client().download(_url)


def show_outputs(job: dict[str, Any]) -> None:
    images = (job["output"] or {}).get("images") or []
    if not images:
        st.caption("No output images yet." if job["status"] in jobs_data.LIVE_STATUSES else "None.")
        return
    columns = st.columns(min(len(images), 4))
    for index, image in enumerate(images):
        what = f"Downloading image {index + 1} of job {job['id']}"
        data = ui.attempt(what, output_image, job["id"], index, image["url"])
        if data is not None:
            caption = f"{image['width']}x{image['height']} {image['content_type']}"
            columns[index % len(columns)].image(data, caption=caption)


def show_metrics(job: dict[str, Any]) -> None:
    metrics = job["metrics"]
    status, cost, queued, ran, attempts = st.columns(5)
    status.metric("Status", job["status"])
    cost.metric("Cost (credits)", ui.credits(job["cost_micros"]))
    queued.metric("Queued for", ui.duration(metrics["queue_seconds"]))
    ran.metric("Ran for", ui.duration(metrics["run_seconds"]))
    attempts.metric("Attempts", f"{job['attempt']} of {job['max_attempts']}")
    st.caption(
        f"{job['model']} version {job['version'] or '—'} · user {job['user_id']} · "
        f"key {job['api_key_id'] or '—'} · progress {jobs_data.progress_text(job['progress'])} · "
        f"created {ui.timestamp(job['created_at'])}, started {ui.timestamp(job['started_at'])}, "
        f"completed {ui.timestamp(job['completed_at'])} · device {metrics['device'] or '—'}"
    )


def offer_cancel(job: dict[str, Any]) -> None:
    if job["cancel_requested"]:
        st.info("Cancel requested: it stops at its next step.", icon=":material/pending:")
        return
    help = "A queued job ends at once; a running one stops at its next step."
    if not ui.confirm("Cancel job", key=f"jobs.cancel.{job['id']}", help=help):
        return
    client = session.client()
    canceled = ui.attempt(f"Canceling job {job['id']}", client.admin_cancel_job, job["id"])
    if canceled is not None:
        ended = canceled["status"] == "canceled"
        outcome = "canceled" if ended else f"{canceled['status']}, stopping at its next step"
        st.session_state[NOTICE] = f"Job {job['id']} — {outcome}."
        st.rerun()


def show_job(job_id: str, was_live: bool) -> None:
    """The job as the API has it now; a job that ended since the list was read reloads the page."""
    job = ui.attempt(f"Reading job {job_id}", session.client().admin_get_job, job_id)
    if job is None:
        return
    live = job["status"] in jobs_data.LIVE_STATUSES
    if was_live and not live:
        st.rerun()
    st.subheader(f"Job {job['id']} — {job['status']}", divider=True)
    show_metrics(job)
    if job["error"]:
        st.error(f"The job failed: {job['error']}", icon=":material/error:")
    if live:
        offer_cancel(job)
    output, model_input, events, logs = st.tabs(["Output", "Input", "Events", "Logs"])
    with output:
        show_outputs(job)
    with model_input:
        st.json(job["input"])
    with events:
        if job["events_truncated"]:
            st.caption("Only its most recent events are shown.")
        st.dataframe(jobs_data.timeline(job["events"]), hide_index=True, width="stretch")
    with logs:
        st.code(job["logs"] or "No logs.", language=None, wrap_lines=True)
        for number, error in enumerate(job["attempt_errors"], start=1):
            st.caption(f"Attempt {number} failed: {error}")


session.current()
st.title("Jobs")
notice = st.session_state.pop(NOTICE, None)
if notice:
    st.success(notice, icon=":material/check_circle:")
filters = chosen_filters()
cursors = page_cursors(filters)
listed = ui.load(
    "Listing jobs", session.client().admin_list_jobs, **jobs_data.list_params(filters, cursors[-1])
)
selected = show_page(listed["data"])
show_pager(cursors, listed)
if selected is None:
    st.caption("Select a job to see its input, events, logs and images.")
else:
    listed_status = next(job["status"] for job in listed["data"] if job["id"] == selected)
    live = listed_status in jobs_data.LIVE_STATUSES
    st.fragment(run_every=LIVE_REFRESH_SECONDS if live else None)(show_job)(selected, live)

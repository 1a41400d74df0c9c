"""Workers: every worker's device, models, current batch and heartbeat, refreshed in place."""

import streamlit as st

from dashboard import session, ui, workers_data

REFRESH_SECONDS = 5


@st.fragment(run_every=REFRESH_SECONDS)
def live_workers(include_gone: bool) -> None:
    answer = ui.attempt(
        "Listing the workers", session.client().admin_workers, include_gone=include_gone
    )
    if answer is None:
        return
    workers = answer["data"]
    if not workers:
        st.info(
            "No worker has reported"
            + (" yet." if include_gone else " in the last day.")
            + " Start one with `goshen worker` on a machine with the platform's settings (it "
            "must reach the same database), or run `goshen up`, which starts one beside the "
            "API. A worker shows here from its first heartbeat.",
            icon=":material/info:",
        )
        return
    stale = workers_data.stale_count(workers)
    stale_after = ui.duration(answer["stale_after_seconds"])
    if stale:
        st.warning(
            f"Stale workers: {stale} of {len(workers)}, silent for over {stale_after}. A stale "
            "worker is dead, hung or cut off from the database; its jobs return to the queue "
            "when their leases lapse.",
            icon=":material/warning:",
        )
    frame = workers_data.workers_frame(workers)
    st.dataframe(workers_data.highlight_stale(frame), hide_index=True)
    more = " (the most recently heard from; more exist)" if answer["has_more"] else ""
    st.caption(
        f"{len(workers)} workers{more}. Stale after {stale_after} without a heartbeat; "
        f"refreshed every {REFRESH_SECONDS} s."
    )


session.current()
st.title("Workers")
gone = st.toggle(
    "Include gone workers",
    help="Also list workers silent for over a day: stopped, or dead and never marked so",
)
live_workers(gone)

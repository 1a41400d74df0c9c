"""Usage and billing: spend and usage over a range (per day, model and account), what each
account stores, and every user's invoices with their files."""

from datetime import UTC, date, datetime
from typing import Any

import streamlit as st

from dashboard import billing_data, session, ui
from dashboard.billing_data import COST

INVOICES_PER_PAGE = 20
INVOICE_STATUSES = ("any", "draft", "finalized")
# The API answers at most this many groups; a range holds at most 367 days.
MAX_GROUPS = 1000
CURSORS = "billing.invoice_cursors"
FILTERS = "billing.invoice_filters"

client = session.client()
st.title("Usage and billing")


def usage(group_by: str, start: date, end: date) -> dict[str, Any] | None:
    return ui.attempt(
        f"Reading usage by {group_by}",
        client.admin_usage,
        group_by,
        start=start.isoformat(),
        end=end.isoformat(),
        limit=MAX_GROUPS,
    )


def show_totals(by_day: dict[str, Any]) -> None:
    for column, (label, value) in zip(st.columns(5), billing_data.totals(by_day), strict=True):
        column.metric(label, value)


def show_days(by_day: dict[str, Any]) -> None:
    st.subheader(":material/calendar_month: Per day")
    rows = billing_data.usage_rows(by_day["groups"], "day")
    if not rows:
        st.info("No usage in this range.", icon=":material/info:")
        return
    spend, volume = st.columns(2)
    spend.bar_chart(rows, x="day", y=COST)
    volume.area_chart(rows, x="day", y=["images", "predictions"])
    st.dataframe(rows, hide_index=True)


def show_groups(answer: dict[str, Any] | None, group_by: str, heading: str) -> None:
    st.subheader(heading)
    if answer is None:
        return
    rows = billing_data.usage_rows(answer["groups"], group_by)
    if not rows:
        st.info("No usage in this range.", icon=":material/info:")
        return
    label = billing_data.GROUP_LABELS[group_by][1]
    chart = billing_data.top_accounts(rows) if group_by == "user" else rows
    st.bar_chart(chart, x=label, y=COST, horizontal=True, sort=f"-{COST}")
    st.dataframe(rows, hide_index=True)
    if answer["has_more"]:
        st.caption(f"The {MAX_GROUPS:,} that cost the most; totals count every one.")


def show_storage() -> None:
    st.subheader(":material/hard_drive: Storage by account")
    storage = ui.attempt("Reading storage", client.admin_storage)
    if storage is None:
        return
    rows = billing_data.storage_rows(storage)
    if not rows:
        st.info("No account stores any datasets.", icon=":material/info:")
        return
    st.dataframe(rows, hide_index=True)
    st.caption(
        f"Datasets kept now, as of {ui.timestamp(storage['measured_at'])} UTC. Models and "
        "generated outputs are counted by the daily storage snapshot the invoices bill."
    )


def invoice_filters() -> tuple[str | None, str | None, str | None]:
    month, status, user = st.columns(3)
    chosen = (
        month.text_input("Month", placeholder="YYYY-MM", key="billing.month").strip() or None,
        status.selectbox("Status", INVOICE_STATUSES, key="billing.status"),
        user.text_input("User id", placeholder="usr_…", key="billing.user").strip() or None,
    )
    return chosen[0], None if chosen[1] == "any" else chosen[1], chosen[2]


def show_invoices() -> None:
    st.subheader(":material/receipt_long: Invoices")
    month, status, user_id = invoice_filters()
    if st.session_state.get(FILTERS) != (month, status, user_id):
        st.session_state[FILTERS] = (month, status, user_id)
        st.session_state[CURSORS] = [None]  # new filters start again at the first page
    cursors: list[str | None] = st.session_state[CURSORS]
    page = ui.attempt(
        "Listing invoices",
        client.admin_list_invoices,
        month=month,
        status=status,
        user_id=user_id,
        limit=INVOICES_PER_PAGE,
        cursor=cursors[-1],
    )
    if page is None:
        return
    if not page["data"]:
        st.info("No invoices match.", icon=":material/info:")
    else:
        st.dataframe(
            billing_data.invoice_rows(page["data"]),
            hide_index=True,
            column_config={
                "HTML": st.column_config.LinkColumn("HTML", display_text="invoice"),
                "Parquet": st.column_config.LinkColumn("Parquet", display_text="lines"),
            },
        )
        expires = ui.timestamp(page["data"][0]["urls_expire_at"])
        st.caption(f"Page {len(cursors)}. The download links work until {expires} UTC.")
    back, forward = st.columns(2)
    if back.button("Previous page", icon=":material/chevron_left:", disabled=len(cursors) == 1):
        cursors.pop()
        st.rerun()
    if forward.button("Next page", icon=":material/chevron_right:", disabled=not page["has_more"]):
        cursors.append(page["next_cursor"])
        st.rerun()


today = datetime.now(UTC).date()
first, last = st.columns(2)
start = first.date_input("From", value=billing_data.month_start(today), key="billing.start")
end = last.date_input("To (included)", value=today, key="billing.end")
by_day = usage("day", start, end)
if by_day is not None:  # the other groupings would only repeat its problem
    show_totals(by_day)
    show_days(by_day)
    show_groups(usage("model", start, end), "model", ":material/model_training: Per model")
    show_groups(usage("user", start, end), "user", ":material/group: Top accounts")
show_storage()
show_invoices()

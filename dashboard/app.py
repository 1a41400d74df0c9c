"""Goshen's admin dashboard: a Streamlit app that reads and changes the platform only through the
HTTP API (goshen.client), signed in with an admin key kept in the browser session."""

from pathlib import Path

import streamlit as st

from dashboard import session

PAGES = Path(__file__).parent / "views"


def page(script: str, title: str, icon: str, *, default: bool = False) -> st.Page:
    return st.Page(PAGES / script, title=title, icon=f":material/{icon}:", default=default)


st.set_page_config(page_title="Goshen", page_icon=":material/hub:", layout="wide")
admin = session.signed_in()
health = page("health.py", "Health", "monitor_heart")
if admin is None:
    navigation = st.navigation([page("sign_in.py", "Sign in", "login", default=True), health])
else:
    navigation = st.navigation(
        {
            "Operations": [
                page("overview.py", "Overview", "dashboard", default=True),
                page("jobs.py", "Jobs", "work_history"),
                page("workers.py", "Workers", "memory"),
                health,
            ],
            "Models and training": [
                page("models.py", "Models", "model_training"),
                page("training.py", "Datasets and training", "dataset"),
            ],
            "Accounts": [
                page("users.py", "Users and keys", "group"),
                page("billing.py", "Usage and billing", "payments"),
            ],
        }
    )
    with st.sidebar:
        st.caption(f"Signed in with {admin.shown}")
        if st.button("Sign out", icon=":material/logout:"):
            session.sign_out()
            st.rerun()
navigation.run()

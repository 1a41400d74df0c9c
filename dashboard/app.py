"""Goshen's admin dashboard: a Streamlit app that reads the platform only through the HTTP API."""

from pathlib import Path

import streamlit as st

PAGES = Path(__file__).parent / "pages"

st.set_page_config(page_title="Goshen", page_icon=":material/hub:", layout="wide")
st.navigation(
    [st.Page(PAGES / "health.py", title="Health", icon=":material/monitor_heart:", default=True)]
).run()

"""Overview (being written)."""

import streamlit as st

from dashboard import session

session.current()
st.title("Overview")

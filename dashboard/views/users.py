"""Users and keys (being written)."""

import streamlit as st

from dashboard import session

session.current()
st.title("Users and keys")

"""Sign-in: an admin key, checked with the API and kept in this browser session only."""

import streamlit as st

from dashboard import session

st.title("Sign in to Goshen")
st.write(
    "Paste an admin API key. It is kept in this browser session's memory only: never written "
    "to disk, and gone when you sign out or close the tab."
)
with st.form("sign_in"):
    key = st.text_input("Admin API key", type="password", placeholder="gsk_…")
    submitted = st.form_submit_button("Sign in", icon=":material/login:", type="primary")
if submitted:
    try:
        session.sign_in(key)
    except session.SignInError as exc:
        st.error(f"Not signed in: {exc}.", icon=":material/key_off:")
    else:
        st.rerun()
st.caption(
    "No key yet? `goshen demo` makes an admin and its key, or set GOSHEN_DASHBOARD_API_KEY for "
    "the dashboard's process."
)

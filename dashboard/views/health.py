"""The health page: each platform component's status as the API reports it."""

import streamlit as st

from dashboard.platform_health import ComponentStatus, check_platform
from goshen.config import SettingsError, load_settings


def show_component(component: ComponentStatus) -> None:
    with st.container(border=True):
        if component.ok:
            st.markdown(f":green[:material/check_circle: **{component.name}**] — OK")
        else:
            st.markdown(f":red[:material/error: **{component.name}**] — failed")
            st.code(component.detail or "no detail given", language=None, wrap_lines=True)


st.title("Platform health")
try:
    api_url = load_settings().api_url
except SettingsError as exc:
    st.error(f"The dashboard's settings are invalid: {exc}")
    st.stop()

report = check_platform(api_url)
if report.ok:
    st.success("All components are healthy.", icon=":material/check_circle:")
else:
    failing = ", ".join(component.name for component in report.failing)
    st.error(f"Failing: {failing}.", icon=":material/error:")
for component in report.components:
    show_component(component)
st.caption(f"Checked {report.checked_at:%Y-%m-%d %H:%M:%S} UTC through the API at {api_url}.")
st.button("Check again", icon=":material/refresh:")

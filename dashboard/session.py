"""Who the dashboard is signed in as: an admin key, kept in this browser session's memory only.

The key comes from the sign-in form, or (when the session has typed none and has not signed
out) from GOSHEN_DASHBOARD_API_KEY or the key file `goshen demo` writes. A configured key signs
sessions in only on a development platform whose dashboard listens on loopback: anyone who can
open the page would otherwise be an admin (in production a reverse proxy on the same machine
would expose it, so production never signs in by itself). It is checked against the API before
it is used: a key the API does not know, or one that is not an admin's, is refused with what to
do instead. Nothing here is written to disk.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import httpx
import streamlit as st

from goshen.client import GoshenAPIError, GoshenClient
from goshen.config import Environment, Settings, SettingsError, load_settings

ADMIN = "goshen_admin"
SIGNED_OUT = "goshen_signed_out"
CLIENT_TIMEOUT_SECONDS = 30.0


class SignInError(Exception):
    """The key cannot sign in; the message says why and what to do."""


@dataclass(frozen=True)
class Admin:
    """A checked admin key and where it came from."""

    api_url: str
    key: str = field(repr=False)
    source: str

    @property
    def shown(self) -> str:
        """The key as the API lists it: its prefix and last four characters."""
        prefix = self.key.rpartition("_")[0] or self.key[:12]
        return f"{prefix}…{self.key[-4:]}"


def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        st.error(f"The dashboard's settings are invalid: {exc}", icon=":material/error:")
        st.stop()


def signed_in() -> Admin | None:
    """The session's admin, signing in with a configured key the first time if there is one."""
    admin: Admin | None = st.session_state.get(ADMIN)
    if admin is not None or st.session_state.get(SIGNED_OUT):
        return admin
    config = settings()
    configured = configured_key(config)
    if configured is None:
        return None
    key, source = configured
    if not signs_in_by_itself(config):
        st.session_state[SIGNED_OUT] = True
        st.warning(
            f"The key from {source} was not used: this dashboard is reachable from other machines "
            f"(GOSHEN_ENV={config.env.value}, GOSHEN_HOST={config.host}), so every session signs "
            "in with a key of its own.",
            icon=":material/key_off:",
        )
        return None
    try:
        return sign_in(key, source)
    except SignInError as exc:
        st.session_state[SIGNED_OUT] = True  # show the form, with why, rather than retry
        st.warning(f"The key from {source} was not used: {exc}", icon=":material/key_off:")
        return None


def signs_in_by_itself(config: Settings) -> bool:
    """Whether a configured key may sign sessions in: a development platform on loopback only."""
    if config.env != Environment.development:
        return False
    if config.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(config.host).is_loopback
    except ValueError:
        return False


def configured_key(config: Settings) -> tuple[str, str] | None:
    """(key, where it came from) from GOSHEN_DASHBOARD_API_KEY or the demo's key file."""
    if config.dashboard_api_key:
        return config.dashboard_api_key.strip(), "GOSHEN_DASHBOARD_API_KEY"
    path = config.demo_admin_key_file
    try:
        key = path.read_text().strip()
    except OSError:
        return None
    return (key, str(path)) if key else None


def sign_in(key: str, source: str = "the sign-in form") -> Admin:
    """Check `key` is an admin's with the API, then keep it in this session."""
    key = key.strip()
    if not key:
        raise SignInError("paste an admin API key (it starts with gsk_)")
    api_url = settings().api_url
    admin = Admin(api_url, key, source)
    try:
        client(admin).request("GET", "/v1/admin/users", params={"limit": 1})
    except GoshenAPIError as exc:
        if exc.status_code == 401:
            raise SignInError(
                "the API does not know this key, or it was revoked; check it and try again"
            ) from exc
        if exc.status_code == 403:
            raise SignInError(
                "this key belongs to an account that is not an admin; sign in with an admin's key "
                "(an admin can issue one from Users and keys, or run `goshen demo`)"
            ) from exc
        raise SignInError(f"the API refused the key: {exc}") from exc
    except httpx.HTTPError as exc:
        raise SignInError(f"cannot reach the API at {api_url}: {type(exc).__name__}") from exc
    st.session_state[ADMIN] = admin
    st.session_state.pop(SIGNED_OUT, None)
    return admin


def sign_out() -> None:
    st.session_state.pop(ADMIN, None)
    st.session_state[SIGNED_OUT] = True
    st.cache_data.clear()


def current() -> Admin:
    """The signed-in admin; a page only runs once there is one."""
    admin = signed_in()
    if admin is None:
        st.switch_page("views/sign_in.py")
        st.stop()
    return admin


@st.cache_resource(max_entries=16, show_spinner=False)
def _client(api_url: str, key: str) -> GoshenClient:
    # One retry: a page waits on its reads, and an admin sees a problem sooner than a long wait.
    return GoshenClient(api_url, key, timeout=CLIENT_TIMEOUT_SECONDS, max_retries=1)


def client(admin: Admin | None = None) -> GoshenClient:
    """The SDK client for the signed-in admin (one per key, shared by its pages' runs)."""
    admin = admin or current()
    return _client(admin.api_url, admin.key)

"""Users and keys: every user, and for the one picked its credit, ledger and API keys. Admins
create users, grant or adjust credit (once per submission, by Idempotency-Key), issue keys (the
secret shown once), cap and revoke them, disable and enable users and mark them unmetered."""

import itertools
import uuid
from typing import Any

import streamlit as st

from dashboard import session, ui, users_data
from goshen.client import GoshenClient

PAGE_SIZE = 50
# What the last change did, shown on the next run only (then forgotten, an issued key's secret
# with it): (section, message, secret or None).
NOTICE = "users.notice"
SHOWN = "users.shown"
PICKED = "users.picked"


@st.cache_data(ttl=ui.SHORT_TTL_SECONDS, show_spinner=False)
def listed_users(api_url: str, key: str, count: int) -> list[dict[str, Any]]:
    """The newest `count` users, and one more when more exist."""
    client = session.client(session.Admin(api_url, key, "the session"))
    return list(itertools.islice(client.admin_list_users(limit=min(count + 1, 100)), count + 1))


def announce(section: str, message: str, secret: str | None = None) -> None:
    """Rerun with fresh data, showing `message` (and `secret`) in `section` that run only."""
    st.session_state[NOTICE] = (section, message, secret)
    listed_users.clear()
    st.rerun()


def show_notice(notice: tuple[str, str, str | None] | None, section: str) -> None:
    if notice is None or notice[0] != section:
        return
    st.success(notice[1], icon=":material/check_circle:")
    if notice[2] is not None:
        st.code(notice[2], language=None)


def users_table(admin: session.Admin) -> list[dict[str, Any]]:
    """The users listed so far (newest first), with a button that lists the next page."""
    shown = st.session_state.setdefault(SHOWN, PAGE_SIZE)
    users = ui.load("Listing the users", listed_users, admin.api_url, admin.key, shown)
    more = len(users) > shown
    users = users[:shown]
    st.dataframe(users_data.users_frame(users), hide_index=True)
    st.caption(f"{len(users)} users, newest first" + ("; more exist." if more else "."))
    if more and st.button("Load more", icon=":material/expand_more:"):
        st.session_state[SHOWN] = shown + PAGE_SIZE
        st.rerun()
    return users


def create_user_form(client: GoshenClient) -> None:
    with st.form("users.create"):
        st.subheader("Create user", anchor=False)
        email = st.text_input("Email", placeholder="ada@example.com")
        name = st.text_input("Name")
        role = st.selectbox("Role", ["developer", "admin"])
        if st.form_submit_button("Create user", icon=":material/person_add:"):
            created = ui.attempt("Creating the user", client.admin_create_user, email, name, role)
            if created is not None:
                st.session_state[PICKED] = created["id"]
                announce(
                    "users",
                    f"Created {created['email']} ({created['role']}); it is picked below: "
                    "issue its first key there.",
                )


def pick_user(users: list[dict[str, Any]]) -> str:
    labels = {user["id"]: users_data.user_label(user) for user in users}
    picked: str = st.selectbox("User", list(labels), format_func=labels.__getitem__, key=PICKED)
    return picked


def account_actions(client: GoshenClient, user: dict[str, Any]) -> None:
    """Disable or enable the user, and mark it unmetered or metered again."""
    if user["disabled_at"] is None:
        if ui.confirm(
            "Disable user",
            key=f"users.disable.{user['id']}",
            help="Its keys are refused from the next request on, until it is enabled again",
        ):
            change_user(client, user, f"Disabled {user['email']}: its keys are refused.", True)
    elif st.button("Enable user", icon=":material/person_check:"):
        change_user(client, user, f"Enabled {user['email']}: its keys work again.", False)
    unmetered = user["unmetered"]
    if st.button(
        "Meter again" if unmetered else "Make unmetered",
        icon=":material/speed:",
        help="Unmetered users are charged as usual but never refused for want of credit",
    ):
        done = "now refused when out of credit" if unmetered else "never refused for credit"
        if ui.attempt(
            "Changing metering", client.admin_update_user, user["id"], unmetered=not unmetered
        ):
            announce("user", f"{user['email']} is {done}.")


def change_user(client: GoshenClient, user: dict[str, Any], done: str, disabled: bool) -> None:
    what = "Disabling the user" if disabled else "Enabling the user"
    if ui.attempt(what, client.admin_update_user, user["id"], disabled=disabled):
        announce("user", done)


def balance_metrics(client: GoshenClient, user_id: str) -> None:
    balance = ui.attempt("Reading the balance", client.admin_balance, user_id)
    if balance is None:
        return
    for column, (label, field) in zip(
        st.columns(3),
        [("Balance", "balance_micros"), ("Held", "held_micros"), ("Available", "available_micros")],
        strict=True,
    ):
        column.metric(label, ui.credits(balance[field]))


def credit_token(user_id: str, body: tuple[str, int, str]) -> str:
    """The Idempotency-Key to send `body` with: the form's key for as long as it sends the same
    request, sent or not, succeeded or not. So a double click, or a click again after the first
    answered, replays the entry the first made instead of adding credit twice; a changed
    request, or "New entry", gets a new key."""
    token, sent = st.session_state[credit_state(user_id)]
    if sent is not None and sent != body:
        token = uuid.uuid4().hex
    st.session_state[credit_state(user_id)] = (token, body)
    return str(token)


def new_credit_token(user_id: str) -> None:
    st.session_state[credit_state(user_id)] = (uuid.uuid4().hex, None)
    st.session_state.pop(credit_made(user_id), None)


def credit_state(user_id: str) -> str:
    """Where the user's credit form keeps (its Idempotency-Key, the request last sent with it)."""
    return f"users.credit_key.{user_id}"


def credit_made(user_id: str) -> str:
    """Where the id of the entry the form's current key made is kept."""
    return f"users.credit_entry.{user_id}"


def credit_form(client: GoshenClient, user_id: str) -> None:
    if credit_state(user_id) not in st.session_state:
        new_credit_token(user_id)
    with st.form(f"users.credit.{user_id}"):
        st.markdown("**Grant or adjust credit**")
        kind = st.radio(
            "Kind",
            list(users_data.KINDS),
            horizontal=True,
            help="A grant adds credit; an adjustment corrects the balance either way, with a "
            "reason",
        )
        # No help tooltips on these two: Playwright finds them by label, and a tooltip's button
        # is labeled "Help for <label>" too.
        amount = st.number_input("Amount (credits)", value=0.0, step=1.0)
        reason = st.text_input("Reason")
        st.caption(
            "An adjustment may be negative, and needs a reason; both are kept in the ledger. "
            "Sending the same entry again records it once: press New entry to add it again."
        )
        submitted = st.form_submit_button("Add to ledger", icon=":material/add_card:")
    if st.button("New entry", icon=":material/note_add:", key=f"users.credit_new.{user_id}"):
        new_credit_token(user_id)
        st.rerun()
    if not submitted:
        return
    body = (users_data.KINDS[kind], ui.to_micros(amount), reason.strip())
    entry = ui.attempt(
        "Adding to the ledger",
        client.admin_add_credit,
        user_id,
        body[1],
        kind=body[0],
        reason=body[2],
        idempotency_key=credit_token(user_id, body),
    )
    if entry is None:
        return
    if st.session_state.get(credit_made(user_id)) == entry["id"]:
        announce(
            "credit",
            f"Already recorded, once: {users_data.entry_text(entry)} Press New entry to add "
            "the same again.",
        )
        return
    st.session_state[credit_made(user_id)] = entry["id"]
    st.session_state.pop(f"users.ledger.{user_id}", None)
    announce("credit", users_data.entry_text(entry))


def ledger(client: GoshenClient, user_id: str) -> None:
    """One page of the ledger, newest first, with buttons to page through it."""
    cursors: list[str | None] = st.session_state.setdefault(f"users.ledger.{user_id}", [None])
    page = ui.attempt(
        "Reading the ledger", client.admin_ledger, user_id, limit=PAGE_SIZE, cursor=cursors[-1]
    )
    if page is None:
        return
    st.dataframe(users_data.ledger_frame(page["data"]), hide_index=True)
    newer, older = st.columns(2)
    if newer.button("Newer entries", icon=":material/navigate_before:", disabled=len(cursors) == 1):
        cursors.pop()
        st.rerun()
    if older.button(
        "Older entries", icon=":material/navigate_next:", disabled=not page["has_more"]
    ):
        cursors.append(page["next_cursor"])
        st.rerun()


def keys_table(client: GoshenClient, user_id: str) -> list[dict[str, Any]]:
    keys = ui.attempt("Listing the keys", client.admin_list_keys, user_id)
    if keys is None:
        return []
    if keys:
        st.dataframe(users_data.keys_frame(keys), hide_index=True)
    else:
        st.caption("No keys yet: this user cannot call the API until it has one.")
    return keys


def issue_key_form(client: GoshenClient, user_id: str) -> None:
    with st.form(f"users.issue.{user_id}", clear_on_submit=True):
        st.markdown("**Issue a key**")
        name = st.text_input("Key name", placeholder="production")
        cap = st.number_input("Monthly spend cap (credits, 0 = none)", min_value=0.0, step=1.0)
        if st.form_submit_button("Issue key", icon=":material/key:"):
            issued = ui.attempt(
                "Issuing the key",
                client.admin_create_key,
                user_id,
                name,
                monthly_spend_cap_micros=users_data.spend_cap_micros(cap),
            )
            if issued is not None:
                announce(
                    "keys",
                    f"Issued {users_data.key_label(issued)}. Copy its secret now: it will not be "
                    "shown again.",
                    secret=issued["key"],
                )


def key_actions(client: GoshenClient, user_id: str, keys: list[dict[str, Any]]) -> None:
    """Revoke a working key, or set its monthly spend cap."""
    active = {key["id"]: key for key in users_data.active_keys(keys)}
    if not active:
        return
    key_id: str = st.selectbox(
        "Key",
        list(active),
        format_func=lambda chosen: users_data.key_label(active[chosen]),
        key=f"users.key.{user_id}",
    )
    key = active[key_id]
    revoke = ui.confirm(
        "Revoke key",
        key=f"users.revoke.{key_id}",
        help="The API refuses it from the next request on; a revoked key cannot be restored",
    )
    if revoke and ui.attempt("Revoking the key", client.admin_revoke_key, key_id) is not None:
        announce("keys", f"Key {users_data.key_label(key)} revoked: the API refuses it now.")
    with st.form(f"users.cap.{key_id}"):
        cap = st.number_input(
            "Spend cap for this key (credits a month, 0 = none)",
            min_value=0.0,
            value=(key["monthly_spend_cap_micros"] or 0) / ui.MICROS,
            step=1.0,
        )
        if st.form_submit_button("Set spend cap", icon=":material/savings:"):
            micros = users_data.spend_cap_micros(cap)
            if ui.attempt(
                "Setting the spend cap",
                client.admin_update_key,
                key_id,
                monthly_spend_cap_micros=micros,
            ):
                announce(
                    "keys",
                    f"Key {users_data.key_label(key)}: monthly spend cap "
                    f"{users_data.cap_text(micros)}.",
                )


admin = session.current()
client = session.client(admin)
notice = st.session_state.pop(NOTICE, None)
st.title("Users and keys")
if notice is not None and notice[2] is not None:
    # A new key's secret shows first, this run only: the page below may stop before its section.
    show_notice(notice, notice[0])
    notice = None
show_notice(notice, "users")
listed, create = st.columns([3, 1])
with listed:
    users = users_table(admin)
with create:
    create_user_form(client)
if not users:
    st.stop()

st.divider()
user_id = pick_user(users)
user = ui.load("Reading the user", client.admin_get_user, user_id)
st.header(user["email"], anchor=False)
st.markdown(users_data.user_state(user))
show_notice(notice, "user")
account_actions(client, user)

st.subheader("Credit", anchor=False)
show_notice(notice, "credit")
balance_metrics(client, user_id)
credit_form(client, user_id)
st.markdown("**Ledger**, newest first")
ledger(client, user_id)

st.subheader("API keys", anchor=False)
show_notice(notice, "keys")
keys = keys_table(client, user_id)
issue_key_form(client, user_id)
key_actions(client, user_id, keys)

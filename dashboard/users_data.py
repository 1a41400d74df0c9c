"""Users, their keys and their credit ledgers as the API returns them, shaped for the Users and
keys page: tables, option labels, and the credits the admin types turned into micro-credits."""

from __future__ import annotations

from typing import Any

from dashboard.ui import credits, timestamp, to_micros

USER_COLUMNS = ["Email", "Name", "Role", "Disabled", "Unmetered", "Created", "User"]
KEY_COLUMNS = ["Name", "Key", "Scopes", "Monthly spend cap", "Created", "Last used", "Revoked"]
LEDGER_COLUMNS = ["Time", "Kind", "Amount", "Held", "Reason", "By", "Expires"]
KINDS = {"Grant": "grant", "Adjustment": "adjustment"}


def users_frame(users: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A row a user, in the API's order (newest first)."""
    rows = [
        {
            "Email": user["email"],
            "Name": user["name"],
            "Role": user["role"],
            "Disabled": user["disabled_at"] is not None,
            "Unmetered": user["unmetered"],
            "Created": timestamp(user["created_at"]),
            "User": user["id"],
        }
        for user in users
    ]
    return _columns(rows, USER_COLUMNS)


def user_label(user: dict[str, Any]) -> str:
    return f"{user['email']} — {user['id']}"


def user_state(user: dict[str, Any]) -> str:
    """What an admin needs to know before changing the user: role, disabled, unmetered."""
    parts = [f"**{user['role']}**", f"created {timestamp(user['created_at'])}"]
    if user["disabled_at"] is not None:
        parts.append(f":red[disabled since {timestamp(user['disabled_at'])}: its keys are refused]")
    if user["unmetered"]:
        parts.append("unmetered: charged, but never refused for want of credit")
    return " · ".join(parts)


def shown_key(key: dict[str, Any]) -> str:
    """A key as it can be recognised without its secret: `gsk_AbCdEf1234…wxyz`."""
    return f"{key['prefix']}…{key['last4']}"


def key_label(key: dict[str, Any]) -> str:
    return f"{key['name']} — {shown_key(key)}"


def keys_frame(keys: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A row a key, newest first; revoked ones say when."""
    rows = [
        {
            "Name": key["name"],
            "Key": shown_key(key),
            "Scopes": ", ".join(key["scopes"]),
            "Monthly spend cap": cap_text(key["monthly_spend_cap_micros"]),
            "Created": timestamp(key["created_at"]),
            "Last used": timestamp(key["last_used_at"]),
            "Revoked": timestamp(key["revoked_at"]) if key["revoked_at"] else "",
        }
        for key in keys
    ]
    return _columns(rows, KEY_COLUMNS)


def active_keys(keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The keys that still work, and so can be revoked or capped."""
    return [key for key in keys if key["revoked_at"] is None]


def cap_text(cap_micros: int | None) -> str:
    return "none" if cap_micros is None else f"{credits(cap_micros)} credits"


def spend_cap_micros(cap_credits: float) -> int | None:
    """The cap typed in credits as the API takes it: 0 means no cap (None)."""
    return to_micros(cap_credits) or None


def ledger_frame(entries: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A row a ledger entry, newest first; `By` is the admin who added it, or the job it is for."""
    rows = [
        {
            "Time": timestamp(entry["created_at"]),
            "Kind": entry["kind"],
            "Amount": credits(entry["amount_micros"]),
            "Held": credits(entry["held_micros"]) if entry["held_micros"] else "",
            "Reason": entry["reason"],
            "By": entry["created_by"] or (f"job {entry['job_id']}" if entry["job_id"] else ""),
            "Expires": timestamp(entry["expires_at"]) if entry["expires_at"] else "",
        }
        for entry in entries
    ]
    return _columns(rows, LEDGER_COLUMNS)


def entry_text(entry: dict[str, Any]) -> str:
    """An added ledger entry in a sentence: `Granted 25 credits: welcome credit.`"""
    amount = credits(entry["amount_micros"])
    said = "Granted" if entry["kind"] == "grant" else "Adjusted the balance by"
    reason = f": {entry['reason']}" if entry["reason"] else ""
    return f"{said} {amount} credits{reason}."


def _columns(rows: list[dict[str, Any]], names: list[str]) -> dict[str, list[Any]]:
    """Rows as the columns st.dataframe takes, named even when there are no rows."""
    return {name: [row[name] for row in rows] for name in names}

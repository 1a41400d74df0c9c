"""What every page shares: calling the API with its problems shown (never a traceback), and
formatting credits, times and durations the same way everywhere."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import streamlit as st

from goshen.client import GoshenAPIError

T = TypeVar("T")
MICROS = 1_000_000
# How long read-mostly lists (models, users) are reused before the API is asked again.
SHORT_TTL_SECONDS = 10
BYTE_UNITS = ("bytes", "KB", "MB", "GB", "TB", "PB")


def problem_text(exc: Exception) -> str:
    """What the API said went wrong, or why it could not be asked."""
    if isinstance(exc, GoshenAPIError):
        problem = exc.problem
        text = f"{problem.get('title') or 'Error'} ({exc.status_code}): {problem.get('detail', '')}"
        fields = [f"{e.get('field')}: {e.get('message')}" for e in problem.get("errors") or []]
        return text + "".join(f"\n- {field}" for field in fields)
    if isinstance(exc, httpx.HTTPError):
        return f"the API did not answer: {type(exc).__name__} {exc}".rstrip()
    return f"{type(exc).__name__}: {exc}"


def show_problem(what: str, exc: Exception) -> None:
    st.error(f"{what} failed — {problem_text(exc)}", icon=":material/error:")


def attempt(what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """`call(*args, **kwargs)`, or None with the API's problem shown under `what`."""
    try:
        return call(*args, **kwargs)
    except (GoshenAPIError, httpx.HTTPError) as exc:
        show_problem(what, exc)
        return None


def load(what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`call(*args, **kwargs)` for what a page cannot go on without: on a problem, show it and
    stop the page there."""
    try:
        return call(*args, **kwargs)
    except (GoshenAPIError, httpx.HTTPError) as exc:
        show_problem(what, exc)
        st.stop()


def credits(micros: int | None) -> str:
    """Micro-credits as credits: `12.5` for 12,500,000; `—` for none."""
    if micros is None:
        return "—"
    return f"{micros / MICROS:,.6f}".rstrip("0").rstrip(".")


def to_micros(amount: float) -> int:
    return round(amount * MICROS)


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def ago(value: str | datetime | None, now: datetime | None = None) -> str:
    """`12 s ago`, `3 min ago`, `2 h ago`, `4 d ago`; `—` for none."""
    moment = parse_time(value) if isinstance(value, str) else value
    if moment is None:
        return "—"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    return f"{duration(max(seconds, 0))} ago"


def duration(seconds: float | None) -> str:
    """Seconds as `850 ms`, `12.3 s`, `4 min 5 s`, `2 h 10 min`; `—` for none."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


def human_bytes(size: int | None) -> str:
    """Bytes in decimal units, as billing counts them (a GB is 10^9 bytes): `1.5 MB`."""
    if size is None:
        return "—"
    amount, unit = float(size), 0
    while amount >= 1000 and unit < len(BYTE_UNITS) - 1:
        amount, unit = amount / 1000, unit + 1
    return f"{size:,} bytes" if unit == 0 else f"{amount:,.1f} {BYTE_UNITS[unit]}"


def timestamp(value: str | None) -> str:
    """An API time as `2026-12-05 19:04:31` (UTC); `—` for none."""
    moment = parse_time(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def confirm(label: str, key: str, *, help: str | None = None) -> bool:
    """A destructive action's button: the first click asks, a second (on `Confirm`) does it."""
    asking = f"{key}.asking"
    if not st.session_state.get(asking):
        if st.button(label, key=key, help=help):
            st.session_state[asking] = True
            st.rerun()
        return False
    st.warning(f"{label}: are you sure?", icon=":material/warning:")
    yes, no = st.columns(2)
    if no.button("Cancel", key=f"{key}.no"):
        st.session_state[asking] = False
        st.rerun()
    if yes.button("Confirm", key=f"{key}.yes", type="primary"):
        st.session_state[asking] = False
        return True
    return False

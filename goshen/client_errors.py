"""The SDK's typed errors: a GoshenAPIError subclass for each kind of problem (RFC 9457) a caller
handles differently, and what waiting for a job raises. Imports only httpx and the standard library.

Every API error stays a GoshenAPIError (`status_code`, `problem`), so `except GoshenAPIError`
catches them all; `Timeout` is a TimeoutError, so `except TimeoutError` catches it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from goshen.client_http import GoshenAPIError, _problem

# The statuses a job ends in without its output.
UNSUCCESSFUL_STATUSES = frozenset({"failed", "canceled"})
ENDED_STATUSES = UNSUCCESSFUL_STATUSES | {"succeeded"}


class Unauthorized(GoshenAPIError):
    """401: no API key, or one that is unknown, revoked or expired."""


class InsufficientCredits(GoshenAPIError):
    """402: the account's available credit, or the key's monthly spend cap, is short of what the
    request may cost; `required` and `available` in micro-credits where the problem says them."""

    @property
    def required(self) -> int | None:
        return _integer(self.problem.get("required"))

    @property
    def available(self) -> int | None:
        return _integer(self.problem.get("available"))


class Forbidden(GoshenAPIError):
    """403: the key lacks the scope or role the call needs."""


class NotFound(GoshenAPIError):
    """404: no such object, or one this key may not see."""


class Conflict(GoshenAPIError):
    """409: the object is not in a state that allows the call (a job that already ended)."""


class InvalidInput(GoshenAPIError):
    """422: the request is wrong; `fields` lists (field, message) for each field named."""

    @property
    def fields(self) -> list[tuple[str, str]]:
        errors = self.problem.get("errors")
        if not isinstance(errors, list):
            return []
        return [
            (str(error.get("field", "")), str(error.get("message", "")))
            for error in errors
            if isinstance(error, dict)
        ]


class _TryAgainLater(GoshenAPIError):
    """An answer that asks to try again later; `retry_after`: seconds to wait, when said."""

    def __init__(
        self, status_code: int, problem: dict[str, Any], retry_after: float | None = None
    ) -> None:
        super().__init__(status_code, problem)
        self.retry_after = retry_after


class RateLimited(_TryAgainLater):
    """429: too many requests or jobs for now; `retry_after`: seconds to wait, when said."""


class ServiceUnavailable(_TryAgainLater):
    """503: the platform (or something it needs) does not answer for now; `retry_after` seconds."""


_BY_STATUS: dict[int, type[GoshenAPIError]] = {
    401: Unauthorized,
    402: InsufficientCredits,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidInput,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_for(
    status_code: int, problem: dict[str, Any], headers: Mapping[str, str] | None = None
) -> GoshenAPIError:
    """The typed error for a problem answer: GoshenAPIError itself for statuses with no type."""
    kind = _BY_STATUS.get(status_code, GoshenAPIError)
    if issubclass(kind, _TryAgainLater):
        return kind(status_code, problem, retry_after_seconds(headers or {}, problem))
    return kind(status_code, problem)


def api_error(response: httpx.Response) -> GoshenAPIError:
    """The typed error for an error response (its body read)."""
    return error_for(response.status_code, _problem(response), response.headers)


def retry_after_seconds(
    headers: Mapping[str, str], problem: Mapping[str, Any] | None = None
) -> float | None:
    """Seconds a `Retry-After` header (delay-seconds or an HTTP date) or the problem's
    `retry_after` asks to wait; None when neither says."""
    value = headers.get("retry-after")
    if value is not None:
        value = value.strip()
        if value.isascii() and value.isdigit():  # not "²": str.isdigit takes any digit
            return float(value)
        try:
            moment = parsedate_to_datetime(value)
            if moment.tzinfo is None:  # "-0000": UTC, not this machine's time
                moment = moment.replace(tzinfo=UTC)
            return max(0.0, moment.timestamp() - time.time())
        except (TypeError, ValueError):
            pass  # not a date either: fall back on the problem
    stated = (problem or {}).get("retry_after")
    if isinstance(stated, int | float) and not isinstance(stated, bool) and stated >= 0:
        return float(stated)
    return None


class JobFailed(Exception):
    """A job waited for ended failed or canceled (asked for with `raise_on_failure=True`);
    `job` is the job as it ended, its `error` among its fields: a dict from GoshenClient, a
    `goshen.client_types.Job` from Goshen and AsyncGoshen."""

    def __init__(self, job: Any) -> None:
        self.job = job
        fields = job if isinstance(job, Mapping) else vars(job)
        reason = fields.get("error") or "no error recorded"
        super().__init__(f"job {fields.get('id')} ended {fields.get('status')}: {reason}")


class Timeout(TimeoutError):
    """Waiting for a job took longer than the time given; the job goes on, and `job_id` lets
    the caller wait for it again (`wait_for_job(job_id)`)."""

    def __init__(self, job_id: str, seconds: float) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} did not end within {seconds:g} s; it goes on")


def job_outcome(job: dict[str, Any], raise_on_failure: bool) -> dict[str, Any]:
    """The job, or JobFailed when asked and it ended without its output."""
    if raise_on_failure and job.get("status") in UNSUCCESSFUL_STATUSES:
        raise JobFailed(job)
    return job


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None

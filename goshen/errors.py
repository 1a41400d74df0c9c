"""Errors the platform raises for things a caller can fix; the API maps each to an HTTP status."""

from __future__ import annotations


class GoshenError(Exception):
    """Base class; `str(error)` is a message that says what to fix.

    `type` is the problem type URI (RFC 9457) of errors whose body carries `members()` beyond
    the standard ones."""

    status_code = 400
    title = "Bad request"
    type = "about:blank"

    def members(self) -> dict[str, int | str]:
        """Members of the problem body beyond type, title, status and detail."""
        return {}


class NotFoundError(GoshenError):
    status_code = 404
    title = "Not found"


class ConflictError(GoshenError):
    status_code = 409
    title = "Conflict"


class PermissionDeniedError(GoshenError):
    status_code = 403
    title = "Forbidden"


class InvalidInputError(GoshenError):
    """A request field is wrong; `field` names it."""

    status_code = 422
    title = "Invalid input"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLargeError(GoshenError):
    """An upload passes a size limit (bytes, entries, pixels, rows); the message names the limit."""

    status_code = 413
    title = "Content too large"


class UnavailableError(GoshenError):
    """Something the request needs cannot be used now (a model that fails to load); retry later.
    `retry_after_seconds` says when."""

    status_code = 503
    title = "Service unavailable"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class RateLimitedError(GoshenError):
    """Too many requests or jobs for now; `retry_after_seconds` says when to try again."""

    status_code = 429
    title = "Too many requests"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class RateLimitExceededError(RateLimitedError):
    """Over a rate limit (goshen.billing.rate_limits): `policy` names it, with its quota of
    requests per window."""

    title = "Rate limit exceeded"
    type = "/problems/rate-limit-exceeded"

    def __init__(
        self, message: str, *, retry_after_seconds: int, policy: str, quota: int, window: int
    ) -> None:
        super().__init__(message, retry_after_seconds=retry_after_seconds)
        self.policy = policy
        self.quota = quota
        self.window_seconds = window

    def members(self) -> dict[str, int | str]:
        return {"policy": self.policy, "quota": self.quota, "window_seconds": self.window_seconds}


class InsufficientCreditError(GoshenError):
    """The account's available credit (balance less open holds) is short of what a request may
    cost; amounts in micro-credits."""

    status_code = 402
    title = "Insufficient credit"
    type = "/problems/insufficient-credit"

    def __init__(self, message: str, *, balance: int, available: int, required: int) -> None:
        super().__init__(message)
        self.balance = balance
        self.available = available
        self.required = required

    def members(self) -> dict[str, int | str]:
        return {"balance": self.balance, "available": self.available, "required": self.required}


class SpendCapExceededError(GoshenError):
    """A request would take its API key past the key's monthly spend cap; the account's other
    keys are not affected. Amounts in micro-credits."""

    status_code = 402
    title = "Spend cap exceeded"
    type = "/problems/spend-cap-exceeded"

    def __init__(self, message: str, *, cap: int, spent: int, held: int, required: int) -> None:
        super().__init__(message)
        self.cap = cap
        self.spent = spent
        self.held = held
        self.required = required

    def members(self) -> dict[str, int | str]:
        return {
            "cap": self.cap,
            "spent": self.spent,
            "held": self.held,
            "required": self.required,
        }
